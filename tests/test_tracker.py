"""The Tracker against slow, obvious references written here.

Each test model records its own pre-activations (`z`, before the ReLU) when asked,
so the reference patterns never go through the tracker's site discovery: two plain
forward passes, masks compared elementwise. The weight change is a per-parameter
Python loop in float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regimes
from regimes import bits

# ---------------------------------------------------------------------- models that report their z


class Recorder(nn.Module):
    """Base: when `self.record` is a list, forward appends each ReLU's input to it."""

    record: list | None = None

    def keep(self, z: torch.Tensor) -> torch.Tensor:
        if self.record is not None:
            self.record.append(z.detach().clone())
        return z


class MLP(Recorder):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(12, 32), nn.BatchNorm1d(32)
        self.fc2, self.bn2 = nn.Linear(32, 16), nn.BatchNorm1d(16)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.drop(self.act1(self.keep(self.bn1(self.fc1(x)))))
        x = self.drop(self.act2(self.keep(self.bn2(self.fc2(x)))))
        return self.head(x)


class SharedReLUCNN(Recorder):
    """One in-place nn.ReLU used twice per block, as torchvision's BasicBlock does."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        out = self.relu(self.keep(self.bn1(self.conv1(x))))
        out = self.relu(self.keep(self.bn2(self.conv2(out)) + out))
        return self.head(out.mean((2, 3)))


class FunctionalNet(Recorder):
    """Every functional spelling of ReLU, in-place ones included."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(10, 10) for _ in range(6))
        self.head = nn.Linear(10, 2)

    def forward(self, x):
        a, b, c, d, e, f = self.layers
        x = F.relu(self.keep(a(x)))
        x = torch.relu(self.keep(b(x)))
        x = self.keep(c(x)).relu()
        x = F.relu(self.keep(d(x)), inplace=True)
        x = torch.relu_(self.keep(e(x)))
        x = self.keep(f(x)).relu_()
        return self.head(x)


class TokenModel(Recorder):
    """Hugging Face style: keyword inputs with an attention mask."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.up, self.down = nn.Linear(16, 24), nn.Linear(24, 16)
        self.act = nn.ReLU()
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)  # [B, T, C]
        h = h + self.down(self.act(self.keep(self.up(h))))
        m = attention_mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


def transformer_encoder():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def reference_patterns_recorder(model: Recorder, probe) -> list[torch.Tensor]:
    states = [(m, m.training) for m in model.modules()]
    model.eval()
    model.record = []
    try:
        with torch.no_grad():
            model(**probe) if isinstance(probe, dict) else model(probe)
        return [z > 0 for z in model.record]
    finally:
        model.record = None
        for m, t in states:
            m.training = t


def reference_patterns_transformer(model: nn.TransformerEncoder, probe) -> list[torch.Tensor]:
    """The FFN pre-activations are linear1's outputs; with gradients on, no fused fast path runs."""
    zs, handles = (
        [],
        [
            layer.linear1.register_forward_hook(lambda m, a, out: zs.append(out.detach().clone()))
            for layer in model.layers
        ],
    )
    states = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            model(probe)
        return [z > 0 for z in zs]
    finally:
        for h in handles:
            h.remove()
        for m, t in states:
            m.training = t


def reference_patterns(model, probe):
    if isinstance(model, nn.TransformerEncoder):
        return reference_patterns_transformer(model, probe)
    return reference_patterns_recorder(model, probe)


def reference_weight_change(before: dict, after: dict) -> tuple[float, dict]:
    total, count, per_tensor = 0.0, 0, {}
    for name in after:
        diff = (after[name].double() - before[name].double()).abs()
        per_tensor[name] = diff.sum().item() / diff.numel()
        total += diff.sum().item()
        count += diff.numel()
    return total / count, per_tensor


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def make_case(name):
    torch.manual_seed(0)
    if name == "mlp":
        model, probe = MLP(), torch.randn(7, 12)
        data = lambda: (torch.randn(32, 12), torch.randint(0, 3, (32,)))
        loss_fn = lambda out, y: F.cross_entropy(out, y)
    elif name == "cnn_shared_inplace":
        model, probe = SharedReLUCNN(), torch.randn(5, 3, 8, 8)
        data = lambda: (torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,)))
        loss_fn = lambda out, y: F.cross_entropy(out, y)
    elif name == "functional":
        model, probe = FunctionalNet(), torch.randn(9, 10)
        data = lambda: (torch.randn(16, 10), torch.randint(0, 2, (16,)))
        loss_fn = lambda out, y: F.cross_entropy(out, y)
    elif name == "transformer":
        model, probe = transformer_encoder(), torch.randn(3, 6, 16)
        data = lambda: (torch.randn(8, 6, 16), None)
        loss_fn = lambda out, y: out.pow(2).mean()
    elif name == "dict_attention_mask":
        model = TokenModel()
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
        probe = {"input_ids": torch.randint(0, 50, (3, 5)), "attention_mask": mask}
        data = lambda: (
            {"input_ids": torch.randint(0, 50, (8, 5)), "attention_mask": torch.ones(8, 5, dtype=torch.long)},
            torch.randint(0, 2, (8,)),
        )
        loss_fn = lambda out, y: F.cross_entropy(out, y)
    else:
        raise KeyError(name)
    return model, probe, data, loss_fn


CASES = ["mlp", "cnn_shared_inplace", "functional", "transformer", "dict_attention_mask"]


def run_forward(model, x):
    return model(**x) if isinstance(x, dict) else model(x)


def train(model, data, loss_fn, opt, steps, *trackers):
    """`steps` plain optimizer steps, each followed by every tracker's step()."""
    for _ in range(steps):
        x, y = data()
        opt.zero_grad()
        loss_fn(run_forward(model, x), y).backward()
        opt.step()
        for tracker in trackers:
            tracker.step()


def unit_weights(name, probe, patterns):
    """Which positions count as units: all, except padding for the dict model."""
    if name == "dict_attention_mask":
        valid = probe["attention_mask"].bool().unsqueeze(-1)
        return [valid.expand_as(p) for p in patterns]
    return [torch.ones_like(p) for p in patterns]


@pytest.fixture(params=["numpy", "torch"])
def bit_backend(request, monkeypatch):
    """The CPU runs the bit work in NumPy; the torch kernels (used on GPUs) are tested here too."""
    if request.param == "torch":
        monkeypatch.setattr(bits, "_HAS_BITWISE_COUNT", False)
    return request.param


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_matches_reference(name, optimizer, bit_backend):
    model, probe, data, loss_fn = make_case(name)
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=0.05)
    )
    tracker = regimes.Tracker(model, probe)
    previous_patterns = reference_patterns(model, probe)
    previous_weights = snapshot(model)
    assert len(tracker.sites) == len(previous_patterns)
    expected_dw, expected_da, expected_layers, expected_tensors = [], [], [], []
    for _ in range(6):
        x, y = data()
        opt.zero_grad()
        loss_fn(run_forward(model, x), y).backward()
        opt.step()
        tracker.step()
        patterns = reference_patterns(model, probe)
        weights = snapshot(model)
        dw, per_tensor = reference_weight_change(previous_weights, weights)
        units = unit_weights(name, probe, patterns)
        layers = [((p != q) & u).sum().item() / u.sum().item() for p, q, u in zip(patterns, previous_patterns, units)]
        expected_dw.append(dw)
        expected_layers.append(layers)
        expected_da.append(np.mean(layers))
        expected_tensors.append([per_tensor[n] for n in tracker.parameter_names])
        previous_patterns, previous_weights = patterns, weights

    np.testing.assert_allclose(tracker.delta_w, expected_dw, rtol=1e-5)
    np.testing.assert_allclose(tracker.delta_a_layers, expected_layers, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(tracker.delta_a, expected_da, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(tracker.delta_w_tensors, expected_tensors, rtol=1e-5, atol=1e-12)
    assert sorted(tracker.parameter_names) == sorted(previous_weights)
    assert tracker.delta_a.max() > 0, "the test should move the pattern"
    np.testing.assert_array_equal(tracker.iterations, np.arange(1, 7))
    # The stored pattern is the reference pattern, bit for bit (padding stored as off).
    for site, pattern, unit in zip(tracker.sites, previous_patterns, unit_weights(name, probe, previous_patterns)):
        assert torch.equal(tracker.pattern(site), pattern & unit)
    tracker.close()


def test_site_names():
    assert regimes.Tracker(MLP(), torch.randn(2, 12)).sites == ["act1", "act2"]
    assert regimes.Tracker(SharedReLUCNN(), torch.randn(2, 3, 4, 4)).sites == ["relu#0", "relu#1"]
    functional = regimes.Tracker(FunctionalNet(), torch.randn(2, 10)).sites
    assert functional == ["relu()#0", "relu()#1", "relu()#2", "relu()#3", "relu()#4", "relu()#5"]
    encoder = regimes.Tracker(transformer_encoder(), torch.randn(2, 3, 16)).sites
    assert encoder == ["layers.0.relu()", "layers.1.relu()"]


def test_module_only_models_skip_the_function_mode():
    """Models whose sites are all nn.ReLU modules take the hook-only path; mixed ones take the mode."""
    assert regimes.Tracker(SharedReLUCNN(), torch.randn(2, 3, 4, 4)).probe.site_modules is not None
    assert regimes.Tracker(FunctionalNet(), torch.randn(2, 10)).probe.site_modules is None


def test_both_capture_paths_agree():
    model, probe, data, loss_fn = make_case("cnn_shared_inplace")
    fast = regimes.Tracker(model, probe)
    slow = regimes.Tracker(model, probe)
    slow.probe.site_modules = None  # force the TorchFunctionMode path
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train(model, data, loss_fn, opt, 4, fast, slow)
    np.testing.assert_array_equal(fast.delta_a_layers, slow.delta_a_layers)
    assert fast.delta_a.max() > 0


def test_site_filter():
    model = transformer_encoder()
    probe = torch.randn(2, 3, 16)
    assert regimes.Tracker(model, probe, sites="layers.1.*").sites == ["layers.1.relu()"]
    assert regimes.Tracker(model, probe, sites=["layers.0.relu()"]).sites == ["layers.0.relu()"]
    assert regimes.Tracker(model, probe, sites=lambda n: n.startswith("layers.1")).sites == ["layers.1.relu()"]
    with pytest.raises(ValueError, match=r"matches none.*layers\.0\.relu\(\)"):
        regimes.Tracker(model, probe, sites="attention*")


def test_filtered_sites_match_reference_columns():
    model, probe, data, loss_fn = make_case("functional")
    full = regimes.Tracker(model, probe)
    part = regimes.Tracker(model, probe, sites=["relu()#1", "relu()#4"])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train(model, data, loss_fn, opt, 3, full, part)
    np.testing.assert_array_equal(part.delta_a_layers, full.delta_a_layers[:, [1, 4]])
    np.testing.assert_allclose(part.delta_a, full.delta_a_layers[:, [1, 4]].mean(1))


def test_train_eval_state_is_restored():
    model = MLP()
    model.train()
    model.bn2.eval()  # a mixed state must survive exactly
    tracker = regimes.Tracker(model, torch.randn(4, 12))
    tracker.step()
    assert model.training and model.bn1.training and model.drop.training
    assert not model.bn2.training


def test_probe_does_not_change_training():
    """Same seeds with and without the tracker give the same weights: the probe draws no RNG and touches no BN stats."""

    def train_mlp(with_tracker):
        model, probe, data, loss_fn = make_case("mlp")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        trackers = [regimes.Tracker(model, probe)] if with_tracker else []
        torch.manual_seed(1)
        train(model, data, loss_fn, opt, 5, *trackers)
        return model.state_dict()

    plain, tracked = train_mlp(False), train_mlp(True)
    for key in plain:
        assert torch.equal(plain[key], tracked[key]), key


def all_hooks(model):
    """Every hook on the model's modules, and every forward set on a module instance."""
    hooks = [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    return hooks + [m.__dict__["forward"] for m in model.modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("name", CASES)
def test_hooks_never_leak(name):
    model, probe, data, _ = make_case(name)
    model.eval()
    with torch.no_grad():
        before = run_forward(model, probe)
    with regimes.Tracker(model, probe) as tracker:
        assert all_hooks(model) == []
        tracker.step()
        assert all_hooks(model) == []
    assert all_hooks(model) == []
    with torch.no_grad():
        after = run_forward(model, probe)
    assert torch.equal(before, after)
    assert torch.backends.mha.get_fastpath_enabled()


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.relu, self.out = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)
        self.explode = False

    def forward(self, x):
        h = self.relu(self.fc(x)) + F.relu(x)  # both capture paths are active
        if self.explode:
            raise RuntimeError("boom")
        return self.out(h)


def test_a_forward_set_on_the_instance_is_kept_and_still_runs():
    """A module whose forward was replaced on the instance (accelerate's hooks do this) is
    tracked through that forward, which is there again after every probe."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    relu, calls = model[1], []

    def instance_forward(x):  # what a host library puts there: it must still run
        calls.append(x.shape)
        return torch.relu(x)

    relu.forward = instance_forward
    probe = torch.randn(3, 4)
    with regimes.Tracker(model, probe) as tracker:
        assert relu.__dict__["forward"] is instance_forward
        tracker.step()
        assert relu.__dict__["forward"] is instance_forward
        assert torch.equal(tracker.pattern("1"), model[0](probe) > 0)
    assert calls and relu.__dict__["forward"] is instance_forward


def test_exception_inside_probe_removes_hooks_and_restores_state():
    model = Exploding().train()
    tracker = regimes.Tracker(model, torch.randn(3, 4))
    model.explode = True
    with pytest.raises(regimes.ProbeError, match="boom"):
        tracker.step()
    assert all_hooks(model) == []
    assert model.training and model.fc.training
    assert torch.backends.mha.get_fastpath_enabled()
    from torch.overrides import _get_current_function_mode_stack

    assert _get_current_function_mode_stack() == []
    model.explode = False
    model(torch.randn(3, 4))  # still a working model


def test_every_k_steps():
    model, probe, data, loss_fn = make_case("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = regimes.Tracker(model, probe, every=3)
    start_w, start_p = snapshot(model), reference_patterns(model, probe)
    expected_dw, expected_da = [], []
    for i in range(1, 10):
        x, y = data()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        tracker.step()
        if i % 3 == 0:
            w, p = snapshot(model), reference_patterns(model, probe)
            expected_dw.append(reference_weight_change(start_w, w)[0])
            expected_da.append(np.mean([(a != b).float().mean().item() for a, b in zip(p, start_p)]))
            start_w, start_p = w, p
    np.testing.assert_array_equal(tracker.iterations, [3, 6, 9])
    np.testing.assert_allclose(tracker.delta_w, expected_dw, rtol=1e-5)
    np.testing.assert_allclose(tracker.delta_a, expected_da, rtol=1e-6)


def test_results_cross_sync_batches():
    """Reading back every 2 measurements gives the same arrays as reading back once."""
    model, probe, data, loss_fn = make_case("functional")
    a = regimes.Tracker(model, probe, sync_every=2)
    b = regimes.Tracker(model, probe, sync_every=1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train(model, data, loss_fn, opt, 5, a, b)
    assert b.pending == 5 and a.pending == 1
    np.testing.assert_array_equal(a.delta_w, b.delta_w)
    np.testing.assert_array_equal(a.delta_a_layers, b.delta_a_layers)


def test_step_makes_no_host_sync(monkeypatch):
    """Nothing in the per-step path reads a tensor back to the host (the torch kernels, as on a GPU)."""
    monkeypatch.setattr(bits, "_HAS_BITWISE_COUNT", False)
    model, probe, data, loss_fn = make_case("functional")
    tracker = regimes.Tracker(model, probe, sync_every=1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data()
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device synchronisation in Tracker.step()")

    for name in ["item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero"]:
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    tracker.step()
    monkeypatch.undo()
    assert tracker.delta_w.shape == (1,)


def test_nonfinite_parameters_warn_once_and_record_nan():
    model, probe, data, loss_fn = make_case("mlp")
    tracker = regimes.Tracker(model, probe)
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="non-finite parameters at iteration 1"):
        tracker.step()
        tracker.step()
        _ = tracker.delta_w
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.step()
        dw = tracker.delta_w
    assert np.isnan(dw).all() and dw.shape == (3,)
    assert np.isfinite(tracker.delta_a).all()


def test_resume_from_state_dict_gives_the_same_records():
    model, probe, data, loss_fn = make_case("cnn_shared_inplace")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(3)
    whole = regimes.Tracker(model, probe)
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, data, loss_fn, opt, 6, whole)

    model.load_state_dict(model_state)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(3)
    first = regimes.Tracker(model, probe)
    train(model, data, loss_fn, opt, 3, first)
    saved = first.state_dict()
    first.close()
    second = regimes.Tracker(model, probe)  # a fresh process would build a new tracker
    second.load_state_dict(saved)
    train(model, data, loss_fn, opt, 3, second)
    # The state holds no records: the caller keeps the first part (the runner, on disk).
    np.testing.assert_allclose(np.concatenate([first.delta_w, second.delta_w]), whole.delta_w, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([first.delta_a_layers, second.delta_a_layers]), whole.delta_a_layers)
    np.testing.assert_array_equal(np.concatenate([first.iterations, second.iterations]), np.arange(1, 7))
    np.testing.assert_array_equal(second.iterations, np.arange(4, 7))


def test_low_precision_model_diffs_in_float32():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).to(torch.bfloat16)
    probe = torch.randn(4, 8)  # float32 probe: cast to the model's dtype
    tracker = regimes.Tracker(model, probe)
    before = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    tracker.step()
    expected, _ = reference_weight_change(before, snapshot(model))
    np.testing.assert_allclose(tracker.delta_w, [expected], rtol=1e-5)


def test_compiled_and_data_parallel_wrappers_probe_the_module():
    model = MLP()
    compiled = torch.compile(model)  # lazy: never compiled here, only unwrapped
    assert regimes.Tracker(compiled, torch.randn(3, 12)).module is model
    wrapped = nn.DataParallel(model)
    tracker = regimes.Tracker(wrapped, torch.randn(3, 12))
    assert tracker.module is model and tracker.sites == ["act1", "act2"]


def test_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = MLP()
        ddp = nn.parallel.DistributedDataParallel(model)
        tracker = regimes.Tracker(ddp, torch.randn(3, 12))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        F.cross_entropy(ddp(torch.randn(8, 12)), torch.randint(0, 3, (8,))).backward()
        opt.step()
        tracker.step()
        assert tracker.module is model and tracker.delta_w[0] > 0
    finally:
        dist.destroy_process_group()


def test_gelu_activation_option():
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 8), nn.ReLU())
    tracker = regimes.Tracker(model, torch.randn(5, 6), activation="gelu")
    assert tracker.sites == ["1"]
    z = model[0](tracker.probe.args[0])
    assert torch.equal(tracker.pattern("1"), z > 0)


# ---------------------------------------------------------------------- errors


def test_errors_name_the_cause():
    with pytest.raises(regimes.NoActivationSitesError, match="found no relu.*activation="):
        regimes.Tracker(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), torch.randn(2, 3))
    with pytest.raises(regimes.ProbeError, match="could not run the probe.*model\\(\\*\\*probe\\)"):
        regimes.Tracker(MLP(), torch.randn(2, 5))
    with pytest.raises(ValueError, match="batch dimension of 0"):
        regimes.Tracker(MLP(), torch.randn(0, 12))
    with pytest.raises(TypeError, match="probe must be a Tensor"):
        regimes.Tracker(MLP(), "not a probe")
    with pytest.raises(ValueError, match="unknown activation"):
        regimes.Tracker(MLP(), torch.randn(2, 12), activation="tanh")
    tracker = regimes.Tracker(MLP(), torch.randn(2, 12))
    tracker.close()
    with pytest.raises(RuntimeError, match="after close"):
        tracker.step()
    frozen = MLP().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        regimes.Tracker(frozen, torch.randn(2, 12))


# ---------------------------------------------------------------------- packed bits


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 65, 1000])
def test_pack_matches_numpy_packbits(n, bit_backend):
    torch.manual_seed(n)
    b = torch.rand(n) > 0.5
    packed = bits.pack(b)
    np.testing.assert_array_equal(packed.numpy(), np.packbits(b.numpy(), bitorder="little"))
    assert torch.equal(bits.unpack(packed, n), b)
    assert torch.equal(bits.pack(b.view(1, n)), packed)


def test_cumulative_flips_against_elementwise_count(bit_backend):
    torch.manual_seed(0)
    sizes = [5, 64, 130, 1]
    old = [torch.rand(s) > 0.5 for s in sizes]
    new = [torch.rand(s) > 0.5 for s in sizes]
    pack_all = lambda masks: torch.cat([bits.pack(m) for m in masks])
    ends = torch.tensor(np.cumsum([(s + 7) // 8 for s in sizes]) - 1)
    cumulative = bits.cumulative_flips(pack_all(old), pack_all(new), ends)
    flips = np.diff(cumulative.numpy(), prepend=0)
    assert flips.tolist() == [(a != b).sum().item() for a, b in zip(old, new)]


def test_patterns_are_stored_at_one_bit_per_unit():
    model = SharedReLUCNN()
    tracker = regimes.Tracker(model, torch.randn(5, 3, 8, 8))
    units = sum(int(np.prod(s.shape)) for s in tracker.layout.sites)
    assert tracker.layout.stored_bytes == -(-units // 64) * 8
    assert tracker.last_pattern.numel() * tracker.last_pattern.element_size() == tracker.layout.stored_bytes


def test_fused_transformer_fast_path_is_prevented():
    """With an nn.ReLU module as activation, only module hooks run, and the fused eval kernel would skip it.

    Recent PyTorch also declines the fast path when hooks are attached; the tracker
    switches it off during the probe regardless, for the versions that do not.
    """
    layer = nn.TransformerEncoderLayer(16, 2, 32, activation=nn.ReLU(), batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    probe = torch.randn(3, 5, 16)
    tracker = regimes.Tracker(model, probe)
    assert tracker.sites == ["layers.0.activation", "layers.1.activation"]
    assert tracker.probe.site_modules is not None  # the hook-only path, where the fast path could strike
    tracker.step()
    for site, pattern in zip(tracker.sites, reference_patterns_transformer(model, probe)):
        assert torch.equal(tracker.pattern(site), pattern)


class EncoderDecoder(nn.Module):
    """T5-like keyword inputs: encoder and decoder sequences of the same length, padded differently."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.encoder = nn.Sequential(nn.Linear(8, 12), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(8, 12), nn.ReLU())

    def forward(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask):
        memory = self.encoder(self.embed(input_ids))  # [B, T, 12]
        return self.decoder(self.embed(decoder_input_ids) + memory[..., :8]).sum()


def test_decoder_sites_read_the_decoder_mask_even_at_equal_lengths():
    torch.manual_seed(0)
    model = EncoderDecoder()
    encoder_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    decoder_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]])
    probe = {
        "input_ids": torch.randint(0, 30, (2, 4)),
        "attention_mask": encoder_mask,
        "decoder_input_ids": torch.randint(0, 30, (2, 4)),
        "decoder_attention_mask": decoder_mask,
    }
    tracker = regimes.Tracker(model, probe)
    assert tracker.sites == ["encoder.1", "decoder.1"]
    units = {s.name: s.units for s in tracker.layout.sites}
    assert units == {"encoder.1": 7 * 12, "decoder.1": 3 * 12}
    assert not tracker.pattern("decoder.1")[decoder_mask == 0].any()
    assert not tracker.pattern("encoder.1")[encoder_mask == 0].any()


def test_mistakes_are_refused_with_what_differs():
    with pytest.raises(ValueError, match="every must be a whole number >= 1, got 2.5"):
        regimes.Tracker(MLP(), torch.randn(2, 12), every=2.5)
    with pytest.raises(ValueError, match="sync_every must be a whole number"):
        regimes.Tracker(MLP(), torch.randn(2, 12), sync_every=0)
    with pytest.raises(ValueError, match="1-D tensor of 12 values.*unsqueeze"):
        regimes.Tracker(MLP(), torch.randn(12))
    saved = regimes.Tracker(MLP(), torch.randn(4, 12)).state_dict()
    with pytest.raises(ValueError, match="pattern of .* bytes .*probe of 9 samples"):
        regimes.Tracker(MLP(), torch.randn(9, 12)).load_state_dict(saved)

    class Wider(MLP):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(16, 5)

    with pytest.raises(ValueError, match=r"head.weight: \(3, 16\) saved, \(5, 16\) here"):
        regimes.Tracker(Wider(), torch.randn(4, 12)).load_state_dict(saved)


class Skipping(nn.Module):
    """The second ReLU runs only while `self.second` is set (control flow that changes)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 8)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()
        self.second = True

    def forward(self, x):
        h = self.act1(self.fc1(x))
        return self.act2(self.fc2(h)) if self.second else h


def test_a_site_not_reached_reads_all_off_although_the_buffer_is_reused(bit_backend):
    torch.manual_seed(0)
    model = Skipping()
    with torch.no_grad():
        model.fc2.bias.fill_(10.0)  # act2 all on while it runs
    tracker = regimes.Tracker(model, torch.randn(4, 6))
    assert tracker.pattern("act2").all()
    model.second = False
    with pytest.warns(UserWarning, match=r"did not reach the sites \['act2'\]"):
        tracker.step()
    assert not tracker.pattern("act2").any()
    assert tracker.delta_a_layers[-1].tolist() == [0.0, 1.0]
    model.second = True
    tracker.step()
    assert tracker.pattern("act2").all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_on_rule_is_the_same_in_numpy_and_torch(dtype, bit_backend):
    from regimes.sites import ACTIVATIONS

    z = torch.tensor([-1.0, -0.0, 0.0, 1e-30, float("nan"), float("inf"), -float("inf"), 2.0]).to(dtype)
    z = torch.cat([z, torch.randn(1000).to(dtype)]).view(3, -1)[:, ::2]  # strided, as a view can be
    out = torch.ones(z.shape, dtype=torch.bool)
    ACTIVATIONS["relu"].is_on(z, out)
    assert torch.equal(out, z > 0)


# ---------------------------------------------------------------------- names and saved state (issues 17, 18)


def test_a_quantity_whose_columns_collide_is_refused_naming_it():
    from regimes.quantities import FlipsSinceStart, WeightChange

    with pytest.raises(
        regimes.tracker.QuantityCollisionError, match=r"quantity 3 \(FlipsSinceStart\).*'da0'.*quantity 2"
    ):
        regimes.Tracker(MLP(), torch.randn(4, 12), quantities=[FlipsSinceStart(), FlipsSinceStart()])
    with pytest.raises(ValueError, match=r"quantity 2 \(WeightChange\).*'dw'.*quantity 0 \(WeightChange, built in\)"):
        regimes.Tracker(MLP(), torch.randn(4, 12), quantities=[WeightChange()])


class Counter(regimes.quantities.Quantity):
    """A quantity with state, whose column is a constructor argument (two of one class can coexist)."""

    def __init__(self, column):
        self.column, self.count = column, 0

    def columns(self):
        return [self.column]

    def measure(self, step):
        self.count += 1
        return [torch.tensor(float(self.count))]

    def read(self, queued, n):
        return {self.column: torch.stack(queued).double().numpy()}

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state.get("count", 0)


def test_quantity_state_is_kept_by_name_not_class():
    model, probe = MLP(), torch.randn(4, 12)
    tracker = regimes.Tracker(model, probe, quantities=[Counter("a"), Counter("b")])
    tracker.quantities[2].count, tracker.quantities[3].count = 5, 9
    saved = tracker.state_dict()
    resumed = regimes.Tracker(model, probe, quantities=[Counter("a"), Counter("b")])
    resumed.load_state_dict(saved)
    assert [q.count for q in resumed.quantities[2:]] == [5, 9]
    assert resumed.quantity_names == ["dw", "da", "a", "b"]


def test_a_state_keyed_by_class_name_still_loads():
    from regimes.quantities import FlipsSinceStart

    model, probe, data, loss_fn = make_case("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = regimes.Tracker(model, probe, quantities=[FlipsSinceStart()])
    start = tracker.last_pattern.clone()
    train(model, data, loss_fn, opt, 3, tracker)
    saved = tracker.state_dict()
    older = {k: v for k, v in saved.items() if k not in ("quantity_states", "probe", "site_shapes")}
    older["quantities"] = {type(q).__name__: q.state_dict() for q in tracker.quantities}
    resumed = regimes.Tracker(model, probe, quantities=[FlipsSinceStart()])
    resumed.load_state_dict(older)
    assert torch.equal(resumed.quantities[2].start_pattern, start)
    assert resumed.iteration == 3


def test_state_saved_with_another_probe_is_refused_saying_what_differs():
    model = MLP()
    probe = torch.randn(4, 12)
    saved = regimes.Tracker(model, probe).state_dict()
    other = regimes.Tracker(model, torch.randn(4, 12))  # same size and shape, other samples
    with pytest.raises(regimes.tracker.TrackerStateMismatchError, match="another probe.*other values"):
        other.load_state_dict(saved)
    assert other.iteration == 0  # nothing of the refused state was loaded
    fewer = regimes.Tracker(model, probe[:3])  # the same pattern bytes (word rounding), one sample less
    assert fewer.layout.stored_bytes == regimes.Tracker(model, probe).layout.stored_bytes
    with pytest.raises(ValueError, match="another probe.*4 samples saved, 3 here"):
        fewer.load_state_dict(saved)
    reordered = regimes.Tracker(model, probe.flip(0))
    with pytest.raises(ValueError, match="another probe"):
        reordered.load_state_dict(saved)
    as_dict = regimes.Tracker(
        TokenModel(),
        {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long)},
    )
    state = as_dict.state_dict()
    shorter = regimes.Tracker(
        as_dict.module,
        {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])},
    )
    with pytest.raises(ValueError, match="another probe.*other values"):
        shorter.load_state_dict(state)
    regimes.Tracker(model, probe).load_state_dict(saved)  # the same probe loads


def test_state_saved_with_another_model_is_refused_saying_what_differs():
    probe = torch.randn(4, 12)
    saved = regimes.Tracker(MLP(), probe).state_dict()
    wrong = dict(saved, site_shapes=[[4, 32], [4, 17]])
    with pytest.raises(
        regimes.tracker.TrackerStateMismatchError, match=r"site 'act2' has output shape \[4, 17\] saved"
    ):
        regimes.Tracker(MLP(), probe).load_state_dict(wrong)


def test_two_quantities_of_one_name_are_refused():
    first, second = Counter("a"), Counter("b")
    first.name = second.name = "counter"
    with pytest.raises(regimes.tracker.QuantityCollisionError, match="named 'counter'"):
        regimes.Tracker(MLP(), torch.randn(4, 12), quantities=[first, second])


@pytest.mark.parametrize("name", ["mlp", "cnn_shared_inplace", "dict_attention_mask"])
def test_flips_counted_at_read_back_equal_flips_counted_per_step(name):
    """On the CPU small patterns are queued and their flips counted at read-back; when the
    queued patterns would pass the budget they are counted per step. Same records, exactly."""
    from regimes.quantities import PatternChange

    model, probe, data, loss_fn = make_case(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    deferred = regimes.Tracker(model, probe, sync_every=3)
    per_step = regimes.Tracker(model, probe, sync_every=PatternChange.DEFERRED_BYTES)  # over the budget
    assert deferred.quantities[1].deferred and not per_step.quantities[1].deferred
    for _ in range(8):
        x, y = data()
        opt.zero_grad()
        loss_fn(run_forward(model, x), y).backward()
        opt.step()
        deferred.step()
        per_step.step()
    a, b = deferred.records(), per_step.records()
    for column in [c for c in a if c == "da" or c.startswith("da")]:
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    assert a["da"].max() > 0, "the test should move the pattern"
    deferred.close()
    per_step.close()
