"""regimes.geometry against slow, obvious references written here: autograd one sample, one
unit at a time, and the network run again at the points the theory speaks about."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from regimes.geometry import (
    NotPiecewiseLinearError,
    local_affine_map,
    parameter_radius,
    region_boundary,
    region_distance,
)
from regimes.zoo import create_model

# ---------------------------------------------------------------- models


class SmallCNN(nn.Module):
    """conv -> ReLU -> max-pool -> linear -> functional ReLU -> linear, on 1x6x6 images."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(18, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        self.seen = []
        z = self.conv(x)
        self.seen.append(("relu", z))
        h = self.relu(z)
        self.seen.append(("pool", h, dict(kernel_size=2, stride=2, padding=0)))
        h = self.pool(h).flatten(1)
        z = self.fc(h)
        self.seen.append(("relu", z))
        return self.out(F.relu(z))


class ResidualCNN(nn.Module):
    """BatchNorm, in-place ReLUs (module and functional), a residual addition, functional
    relus, an overlapping padded max-pool, adaptive average pooling, flatten and dropout."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * 2 * 2, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        self.seen = []
        z = self.stem(x)
        self.seen.append(("relu", z.clone()))
        identity = torch.relu(z)
        z = self.bn1(self.conv1(identity))
        self.seen.append(("relu", z.clone()))
        h = self.act(z)  # in place
        out = self.bn2(self.conv2(h))
        out += identity
        self.seen.append(("relu", out.clone()))
        out = F.relu(out, inplace=True)
        self.seen.append(("pool", out, dict(kernel_size=3, stride=2, padding=1)))
        out = F.max_pool2d(out, 3, stride=2, padding=1)  # [B, 3, 3, 3]
        out = F.adaptive_avg_pool2d(out, 2)  # [B, 3, 2, 2], overlapping windows
        z = self.fc(self.drop(out.flatten(1)))
        self.seen.append(("relu", z.clone()))
        return self.head(z.relu())


class AdaptiveCNN(nn.Module):
    """conv -> ReLU -> adaptive max-pool with overlapping windows (5 -> 2: rows 0-2 and 2-4)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(8, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        self.seen = []
        z = self.conv(x)
        self.seen.append(("relu", z))
        h = torch.relu(z)
        self.seen.append(("pool", h, dict(adaptive=2)))
        z = self.fc(self.pool(h).flatten(1))
        self.seen.append(("relu", z))
        return self.out(z.relu())


class ResidualMLP(nn.Module):
    """Two ReLU layers joined by an in-place residual addition: relu(b(x) + c(relu(a(x)))).
    The first layer's units sit far from zero, so the second layer limits the radius."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.out = nn.Linear(5, 8), nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        with torch.no_grad():
            self.a.bias.fill_(3.0)

    def forward(self, x):
        self.seen = []
        z = self.a(x)
        self.seen.append(("relu", z))
        h = torch.relu(z)
        z = self.b(x)
        z += self.c(h)
        self.seen.append(("relu", z.clone()))
        return self.out(F.relu(z))


TEST_MODELS = (SmallCNN, ResidualCNN, AdaptiveCNN, ResidualMLP)


def _settle_batchnorm(model: nn.Module, shape, generator) -> None:
    """Give BatchNorm layers non-trivial running statistics and affine parameters."""
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, *shape, generator=generator, dtype=torch.float64) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator, dtype=torch.float64) * 0.3)


def make(name: str):
    """(model in float64, input batch) for each case; the models are left in train mode."""
    seeds = {
        "mlp": 1,
        "small_cnn": 2,
        "residual_cnn": 3,
        "lenet5": 4,
        "one_hidden": 5,
        "adaptive_cnn": 6,
        "residual_mlp": 7,
    }
    g = torch.Generator().manual_seed(seeds[name])
    torch.manual_seed(g.initial_seed())
    if name == "mlp":
        model, shape = create_model("mlp", input_size=30, num_classes=2, hidden=[64, 32], dropout=0.2), (30,)
    elif name == "small_cnn":
        model, shape = SmallCNN(), (1, 6, 6)
    elif name == "residual_cnn":
        model, shape = ResidualCNN(), (1, 6, 6)
    elif name == "residual_mlp":
        model, shape = ResidualMLP(), (5,)
    elif name == "adaptive_cnn":
        model, shape = AdaptiveCNN(), (1, 5, 5)
    elif name == "lenet5":
        model, shape = create_model("lenet5", in_channels=1, num_classes=10, input_size=28), (1, 28, 28)
    else:
        model, shape = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)), (6,)
    model = model.double()
    _settle_batchnorm(model, shape, g)
    model.train()
    batch = 2 if name in ("lenet5", "residual_cnn") else 3  # the costlier references
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    return model, x


# ---------------------------------------------------------------- slow references


def observe(model: nn.Module, x: torch.Tensor) -> list[tuple]:
    """Every ReLU input and max-pool input of one forward, in call order: the test models
    list theirs in `seen`; for the zoo's, hooks on nn.ReLU and nn.MaxPool2d modules."""
    if isinstance(model, TEST_MODELS):
        model(x)
        return model.seen
    seen, handles = [], []
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            handles.append(m.register_forward_pre_hook(lambda m, a: seen.append(("relu", a[0].clone()))))
        if isinstance(m, nn.MaxPool2d):
            params = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding)
            handles.append(m.register_forward_pre_hook(lambda m, a, p=params: seen.append(("pool", a[0], p))))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def pattern(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """ReLU on/off bits and max-pool winners, per sample."""
    model.eval()
    with torch.no_grad():
        bits = []
        for entry in observe(model, x):
            if entry[0] == "relu":
                bits.append((entry[1] > 0).flatten(1))
            elif "adaptive" in entry[2]:
                _, winners = F.adaptive_max_pool2d(entry[1], entry[2]["adaptive"], return_indices=True)
                bits.append(winners.flatten(1))
            else:
                _, winners = F.max_pool2d(entry[1], **entry[2], return_indices=True)
                bits.append(winners.flatten(1))
    return bits


def same_pattern(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """[B] bool: every bit equal."""
    return torch.stack([(p == q).all(dim=1) for p, q in zip(a, b)]).all(dim=0)


def pool_windows(height, width, kernel_size=None, stride=None, padding=0, adaptive=None):
    """Input positions of each output window, by hand."""
    if adaptive is not None:  # rows floor(i H / n) .. ceil((i + 1) H / n) - 1, likewise columns
        for oh in range(adaptive):
            for ow in range(adaptive):
                rows = range(oh * height // adaptive, -(-(oh + 1) * height // adaptive))
                cols = range(ow * width // adaptive, -(-(ow + 1) * width // adaptive))
                yield oh * adaptive + ow, [(i, j) for i in rows for j in cols]
        return
    out_h = (height + 2 * padding - kernel_size) // stride + 1
    out_w = (width + 2 * padding - kernel_size) // stride + 1
    for oh in range(out_h):
        for ow in range(out_w):
            cells = [
                (ih, iw)
                for ih in range(oh * stride - padding, oh * stride - padding + kernel_size)
                for iw in range(ow * stride - padding, ow * stride - padding + kernel_size)
                if 0 <= ih < height and 0 <= iw < width
            ]
            yield oh * out_w + ow, cells


def brute_force_distance(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """min over every unit of |z_j| / ||grad_x z_j|| and over every max-pool competitor of
    (z_max - z_k) / ||grad_x (z_max - z_k)||, one sample and one unit at a time with autograd."""
    model.eval()
    distances = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].clone().requires_grad_(True)
        best = math.inf

        def consider(value):
            nonlocal best
            (g,) = torch.autograd.grad(value, xb, retain_graph=True)
            if g.norm() > 0:
                best = min(best, abs(value.item()) / g.norm().item())

        for entry in observe(model, xb):
            if entry[0] == "relu":
                for z in entry[1].flatten():
                    consider(z)
            else:
                _, v, p = entry
                p = {key: value if isinstance(value, int) else value[0] for key, value in p.items()}
                for c in range(v.shape[1]):
                    for _, cells in pool_windows(v.shape[2], v.shape[3], **p):
                        values = [v[0, c, i, j] for i, j in cells]
                        winner = max(range(len(values)), key=lambda t: values[t].item())
                        for t, value in enumerate(values):
                            if t != winner:
                                consider(values[winner] - value)
        distances.append(best)
    return torch.tensor(distances, dtype=x.dtype)


def jacobian_per_sample(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    rows = []
    for b in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0)).flatten(), x[b])
        rows.append(J.reshape(J.shape[0], -1))
    return torch.stack(rows)


def random_unit(shape, generator, dtype=torch.float64) -> torch.Tensor:
    d = torch.randn(shape, generator=generator, dtype=dtype)
    return d / d.flatten(1).norm(dim=1).view(-1, *[1] * (len(shape) - 1))


# ---------------------------------------------------------------- local affine map

CASES = ["mlp", "small_cnn", "residual_cnn", "adaptive_cnn", "residual_mlp", "lenet5", "one_hidden"]


@pytest.mark.parametrize("name", CASES)
def test_K_is_the_autograd_jacobian_and_c_closes_the_map(name):
    model, x = make(name)
    K, c = local_affine_map(model, x)
    assert K.shape == (x.shape[0], model.eval()(x).flatten(1).shape[1], x[0].numel())
    torch.testing.assert_close(K, jacobian_per_sample(model, x), rtol=1e-9, atol=1e-10)
    fx = model(x).flatten(1).detach()
    torch.testing.assert_close(torch.einsum("boi,bi->bo", K, x.flatten(1)) + c, fx, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_the_map_holds_on_the_whole_ball(name):
    model, x = make(name)
    K, c = local_affine_map(model, x)
    radius = region_distance(model, x)
    assert torch.isfinite(radius).all() and (radius > 0).all()
    g = torch.Generator().manual_seed(7)
    model.eval()
    for _ in range(5):
        scale = 0.99 * radius * torch.rand(x.shape[0], generator=g, dtype=x.dtype)
        inside = x + scale.view(-1, *[1] * (x.dim() - 1)) * random_unit(x.shape, g)
        expected = model(inside).flatten(1).detach()
        torch.testing.assert_close(torch.einsum("boi,bi->bo", K, inside.flatten(1)) + c, expected, rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------- region distance


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "residual_cnn", "adaptive_cnn", "one_hidden"])
def test_region_distance_is_the_brute_force_minimum(name):
    model, x = make(name)
    torch.testing.assert_close(region_distance(model, x), brute_force_distance(model, x), rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", CASES)
def test_pattern_holds_inside_and_changes_just_past_the_boundary(name):
    model, x = make(name)
    boundary = region_boundary(model, x)
    before = pattern(model, x)
    view = (-1,) + (1,) * (x.dim() - 1)
    norms = boundary.direction.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    past = x + (1.001 * boundary.distance).view(view) * boundary.direction
    assert not same_pattern(before, pattern(model, past)).any()
    g = torch.Generator().manual_seed(11)
    for _ in range(20):
        inside = x + (0.99 * boundary.distance).view(view) * random_unit(x.shape, g)
        assert same_pattern(before, pattern(model, inside)).all()
    just_inside = x + (0.999 * boundary.distance).view(view) * boundary.direction
    assert same_pattern(before, pattern(model, just_inside)).all()


SITE_ORDER = {
    "mlp": ["blocks.0.relu", "blocks.1.relu"],
    "small_cnn": ["relu", "pool", "relu()"],
    "residual_cnn": ["relu()#0", "act", "relu()#1", "max_pool2d()", "relu()#2"],
    "adaptive_cnn": ["relu()#0", "pool", "relu()#1"],
}


@pytest.mark.parametrize("name", list(SITE_ORDER))
def test_region_boundary_names_the_nearest_unit(name):
    model, x = make(name)
    x = torch.cat([x, torch.randn(20, *x.shape[1:], generator=torch.Generator().manual_seed(0), dtype=x.dtype)])
    boundary = region_boundary(model, x)
    if name == "small_cnn":
        assert "pool" in boundary.site and "relu" in boundary.site  # both kinds are exercised
    model.eval()
    for b in range(x.shape[0]):  # recompute the named unit's own distance with autograd
        xb = x[b : b + 1].clone().requires_grad_(True)
        entry = observe(model, xb)[SITE_ORDER[name].index(boundary.site[b])]
        if entry[0] == "relu":
            assert boundary.competitor[b] == -1
            value = entry[1].flatten()[boundary.unit[b]]
        else:
            if "adaptive" in entry[2]:
                pooled = F.adaptive_max_pool2d(entry[1], entry[2]["adaptive"])
            else:
                pooled = F.max_pool2d(entry[1], **entry[2])
            winner = pooled.flatten()[boundary.unit[b]]
            value = winner - entry[1].flatten()[boundary.competitor[b]]
        (g,) = torch.autograd.grad(value, xb)
        assert abs(value.item()) / g.norm().item() == pytest.approx(boundary.distance[b].item(), rel=1e-9)


# ---------------------------------------------------------------- parameter radius


def relu_pattern_at(model: nn.Module, parameters: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """ReLU bits with the model's parameters replaced (functional_call)."""
    model.eval()
    with torch.no_grad():
        if isinstance(model, TEST_MODELS):
            functional_call(model, parameters, (x,))
            entries = model.seen
        else:
            entries = []
            handles = [
                m.register_forward_pre_hook(lambda m, a: entries.append(("relu", a[0].clone())))
                for m in model.modules()
                if isinstance(m, nn.ReLU)
            ]
            try:
                functional_call(model, parameters, (x,))
            finally:
                for h in handles:
                    h.remove()
    return [(e[1] > 0).flatten(1) for e in entries if e[0] == "relu"]


def trainable(model):
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def margin_directions(model: nn.Module, x: torch.Tensor, units: int = 4):
    """Per sample, the directions -sign(z_j) grad_theta z_j / ||.|| of the `units` smallest |z_j| of each site."""
    model.eval()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in trainable(model).items()}
    out = []
    for b in range(x.shape[0]):
        if isinstance(model, TEST_MODELS):
            functional_call(model, params, (x[b : b + 1],))
            zs = [e[1] for e in model.seen if e[0] == "relu"]
        else:
            zs = []
            handles = [
                m.register_forward_pre_hook(lambda m, a: zs.append(a[0]))
                for m in model.modules()
                if isinstance(m, nn.ReLU)
            ]
            try:
                functional_call(model, params, (x[b : b + 1],))
            finally:
                for h in handles:
                    h.remove()
        flat = torch.cat([z.flatten() for z in zs])
        offsets = [0]
        for z in zs:
            offsets.append(offsets[-1] + z.numel())
        nearest = [o + z.flatten().abs().argsort()[:units] for o, z in zip(offsets, zs)]  # per site
        directions = []
        for j in torch.cat(nearest):
            grads = torch.autograd.grad(flat[j], list(params.values()), retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params.values())]
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            sign = -1.0 if flat[j] > 0 else 1.0
            directions.append({n: sign * g / norm for n, g in zip(params, grads)})
        out.append(directions)
    return out


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "residual_cnn", "adaptive_cnn", "residual_mlp", "one_hidden"])
def test_certified_radius_is_sound(name):
    model, x = make(name)
    certified, empirical = parameter_radius(model, x)
    assert (certified > 0).all() and torch.isfinite(certified).all()
    assert (certified <= empirical).all()
    theta = trainable(model)
    g = torch.Generator().manual_seed(3)
    adversarial = margin_directions(model, x)
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        base = relu_pattern_at(model, theta, xb)
        directions = adversarial[b]
        for _ in range(10):
            d = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta.items()}
            norm = torch.sqrt(sum(v.pow(2).sum() for v in d.values()))
            directions.append({n: v / norm for n, v in d.items()})
        for d in directions:
            moved = {n: p + 0.99 * certified[b] * d[n] for n, p in theta.items()}
            assert all((p == q).all() for p, q in zip(base, relu_pattern_at(model, moved, xb)))


class MatmulNet(nn.Module):
    """One hidden layer written with a bare parameter matrix: relu(x @ W + b) @ V."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(6, 12) / 3)
        self.b = nn.Parameter(torch.randn(12) / 3)
        self.V = nn.Parameter(torch.randn(12, 3) / 3)

    def hidden(self, x):
        return x @ self.W + self.b

    def forward(self, x):
        return F.relu(self.hidden(x)) @ self.V


@pytest.mark.parametrize("written_as", ["nn.Linear", "matmul"])
def test_certified_radius_is_near_exact_for_one_hidden_layer(written_as):
    model, x = make("one_hidden")
    if written_as == "matmul":
        torch.manual_seed(0)
        model = MatmulNet().double()
    certified, empirical = parameter_radius(model, x)
    # Exact: only the first layer moves z; unit j reads row j, z_j(theta + d) = z_j + dw_j . x + db_j,
    # so the smallest perturbation that zeroes it has norm |z_j| / ||(x, 1)|| (Cauchy-Schwarz,
    # attained along -sign(z_j) (x, 1)); the radius is the minimum over j.
    with torch.no_grad():
        z = model[0](x) if written_as == "nn.Linear" else model.hidden(x)
        exact = (z.abs() / torch.sqrt(x.pow(2).sum(1, keepdim=True) + 1)).min(dim=1).values
    assert (certified <= exact).all()
    assert (certified >= exact / 2).all()
    if written_as == "nn.Linear":  # weight and bias in one call: the bound is the exact radius
        torch.testing.assert_close(certified, exact, rtol=2e-4, atol=0)
    torch.testing.assert_close(empirical, exact, rtol=1e-3, atol=0)


def test_frozen_parameters_do_not_count():
    model, x = make("one_hidden")
    model[0].weight.requires_grad_(False)  # only the first bias can move the pattern: z_j + db_j
    certified, empirical = parameter_radius(model, x)
    with torch.no_grad():
        exact = model[0](x).abs().min(dim=1).values
    torch.testing.assert_close(certified, exact, rtol=2e-4, atol=0)
    torch.testing.assert_close(empirical, exact, rtol=1e-3, atol=0)
    model[0].bias.requires_grad_(False)  # now nothing before the ReLU moves
    certified, empirical = parameter_radius(model, x)
    assert torch.isinf(certified).all() and torch.isinf(empirical).all()


def test_parameter_radius_on_lenet5_float32():
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=1, num_classes=10, input_size=28)
    x = torch.randn(2, 1, 28, 28)
    certified, empirical = parameter_radius(model, x, directions=1)
    assert (certified > 0).all() and (certified <= empirical).all()
    theta = trainable(model)
    g = torch.Generator().manual_seed(5)
    for b in range(2):
        base = relu_pattern_at(model, theta, x[b : b + 1])
        for _ in range(5):
            d = {n: torch.randn(p.shape, generator=g) for n, p in theta.items()}
            norm = torch.sqrt(sum(v.pow(2).sum() for v in d.values()))
            moved = {n: p + 0.99 * certified[b] * d[n] / norm for n, p in theta.items()}
            assert all((p == q).all() for p, q in zip(base, relu_pattern_at(model, moved, x[b : b + 1])))


# ---------------------------------------------------------------- what is refused, and what is left behind


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)

    def forward(self, x):
        q = self.q(x)
        return torch.softmax(q @ x.transpose(1, 2), dim=-1) @ x


class Smooth(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.fc(x))


@pytest.mark.parametrize(
    "model, names",
    [
        (nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2)), ["`1` (GELU)"]),
        (nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.LayerNorm(8)), ["`2` (LayerNorm)"]),
        (nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), ["`self_attn`", "MultiheadAttention"]),
        (Attention(), ["Attention", "matmul"]),
        (Smooth(), ["Smooth", "tanh"]),
        (nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU()), ["`1` (LeakyReLU)", "kinks"]),
    ],
)
@pytest.mark.parametrize("function", [local_affine_map, region_distance, parameter_radius])
def test_parts_that_are_not_piecewise_linear_are_named(model, names, function):
    x = torch.randn(2, 3, 8)
    with pytest.raises(NotPiecewiseLinearError) as error:
        function(model, x)
    message = str(error.value)
    assert all(name in message for name in names), message
    assert "submodule" in message
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_transformer_ffn_block_is_accepted_on_its_own():
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8)).double()
    hidden = torch.randn(2, 5, 8, dtype=torch.float64)  # [B, T, d]
    K, c = local_affine_map(ffn, hidden)
    assert K.shape == (2, 40, 40)
    torch.testing.assert_close(K, jacobian_per_sample(ffn, hidden))
    distance = region_distance(ffn, hidden)
    model = ffn.eval()
    with torch.no_grad():
        z = model[0](hidden)  # [B, T, 16]
        normals = model[0].weight.norm(dim=1)  # tokens are independent: grad of z[t, j] is row j at token t
        expected = (z.abs() / normals).flatten(1).min(dim=1).values
    torch.testing.assert_close(distance, expected)
    certified, empirical = parameter_radius(ffn, hidden)
    assert (certified > 0).all() and (certified <= empirical).all()


def test_nothing_is_left_behind():
    model, x = make("residual_cnn")
    model.train()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    grad_was = torch.is_grad_enabled()
    local_affine_map(model, x)
    region_boundary(model, x)
    parameter_radius(model, x, directions=1)
    assert model.training and all(m.training for m in model.modules())
    assert torch.is_grad_enabled() == grad_was
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    for n, v in model.state_dict().items():
        torch.testing.assert_close(v, before[n], rtol=0, atol=0)


def test_a_model_without_relus_has_no_boundary():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    boundary = region_boundary(model, x)
    assert torch.isinf(boundary.distance).all() and boundary.site == [None, None]
    certified, empirical = parameter_radius(model, x)
    assert torch.isinf(certified).all() and torch.isinf(empirical).all()
    K, c = local_affine_map(model, x)
    torch.testing.assert_close(K[0], model[1].weight @ model[0].weight)


def test_parameters_computed_in_the_forward_are_refused_by_parameter_radius_only():
    torch.manual_seed(0)
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(4, 6))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    assert torch.isfinite(region_distance(model, x)).all()
    with pytest.raises(NotImplementedError, match="parametrization"):
        parameter_radius(model, x)


def test_integer_inputs_are_refused():
    with pytest.raises(TypeError, match="floating point"):
        region_distance(nn.Sequential(nn.Linear(3, 2)), torch.ones(2, 3, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_results_match_cpu():
    model, x = make("residual_cnn")
    cpu = region_distance(model, x), parameter_radius(model, x)[0]
    model.cuda()
    gpu = region_distance(model, x), parameter_radius(model, x)[0]
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[0].cpu(), cpu[0])
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-6, atol=0)


# -- issue 18: a probe sample holding NaN has no region, and says so


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_sample_is_a_value_error_naming_it(bad):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 3)
    x[1, 0] = bad
    for instrument in (region_distance, local_affine_map):
        with pytest.raises(ValueError, match="sample 1 of 3"):
            instrument(model, x)
    assert torch.isfinite(region_distance(model, x[[0, 2]])).all()
