"""The parameter-space side: how far the weights can move before an input's pattern changes (Proposition 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode

from regimes.errors import UsageError
from regimes.geometry._trace import (
    MOVES_WITHOUT_REPEATS,
    RELU_FUNCTIONS,
    SIGNATURES,
    Recorder,
    Trace,
    bind,
    evaluating,
    flat_tensors,
    op_name,
    per_sample_norm,
    prepare,
    replace_argument,
    signature,
    trace,
)

__all__ = ["parameter_radius"]

_BYTES = 256 * 2**20  # working memory for per-sample parameter directions
_SAFETY = 1e-4  # the certified radius is rounded down by this fraction (floating-point slack)


# ---------------------------------------------------------------- certified: norm propagation
#
# For every input-dependent tensor h the program keeps, as functions of eps (the norm of the
# parameter perturbation), a bound U on |h~ - h| per element and a bound d on ||h~ - h||_2
# per sample, where ~ marks the perturbed network and every ReLU before h keeps its on/off
# state. Each step below turns the bounds of its inputs into those of its outputs.


@dataclass
class _Step:
    run: object  # (eps [B], *input states) -> output state(s), or (state, ratio) for a ReLU
    inputs: list[int]
    outputs: list[int] = field(default_factory=list)
    site: int | None = None  # index of the ReLU site this step checks


def _view(v: torch.Tensor, like_dim: int) -> torch.Tensor:
    return v.reshape(-1, *[1] * (like_dim - 1))


def _norm(U: torch.Tensor | None, d: torch.Tensor) -> torch.Tensor:
    return d if U is None else torch.minimum(d, per_sample_norm(U))


def _spectral_bound(W: torch.Tensor, cache: dict) -> float:
    """A proven upper bound on the largest singular value of a matrix."""
    key = (id(W), tuple(W.shape))
    if key in cache and cache[key][0] is W:  # the cache holds W, so its id is not reused meanwhile
        return cache[key][1]
    M = W.detach()
    if min(M.shape) <= 1024:  # exact: the Gram matrix's top eigenvalue, in float64
        A = (M if M.shape[0] <= M.shape[1] else M.T).double()
        value = float(torch.linalg.eigvalsh(A @ A.T)[-1].clamp_min(0).sqrt()) * (1 + 1e-6)
    else:  # ||W||_2 <= ||W||_F and <= sqrt(||W||_1 ||W||_inf)
        fro = float(M.norm())
        schur = math.sqrt(float(M.abs().sum(0).max()) * float(M.abs().sum(1).max()))
        value = min(fro, schur) * (1 + 1e-5)
    cache[key] = (W, value)
    return value


class _Program:
    """Builds the bound propagation while the tracer runs (see `Tracer`'s builder)."""

    def __init__(self, batch: int):
        self.batch = batch
        self.spectral: dict = {}

    def __call__(self, kind, short, func, args, kwargs, out, tracer) -> _Step:
        self.tracer = tracer
        self.trainable = tracer.trainable
        rule = getattr(self, f"_{kind}", self._other_linear)
        for t in flat_tensors(out):
            if t.is_floating_point() and (t.dim() == 0 or t.shape[0] != self.batch):
                raise NotImplementedError(
                    f"parameter_radius: {tracer.where()} calls {op_name(func)[0]}, which moves the batch dimension "
                    f"(output shape {tuple(t.shape)}); the bounds are kept per sample, batch first"
                )
        return rule(short, func, args, kwargs, out)

    # -- helpers
    def _is_trainable(self, t) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.trainable

    def _refuse_dependent(self, short, *tensors) -> None:
        if any(self.tracer.depends(t) for t in tensors):
            raise NotImplementedError(
                f"parameter_radius: {self.tracer.where()} uses an input-dependent tensor as the weights of {short}"
            )

    # -- rules
    def _parameterised(self, short, func, args, kwargs, out, weight_owner=None):
        if short == "batch_norm":
            return self._batch_norm(args, kwargs, out)
        b = bind(signature(short), args, kwargs, {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
        h, W, bias = b["input"], b["weight"], b["bias"]
        self._refuse_dependent(short, W, bias)
        wt = float(self._is_trainable(W if weight_owner is None else weight_owner))
        bt = float(self._is_trainable(bias))
        if short == "linear":
            row = W.detach().norm(dim=1)  # [out]
            lip = _spectral_bound(W, self.spectral)
            patch = h.detach().norm(dim=-1).unsqueeze(-1)  # [B, *positions, 1]: ||h|| per position
            total = per_sample_norm(patch)  # [B]
            positions, repeats = patch[0].numel(), 1
        else:  # convNd: each output sees a patch; an input element is in at most `repeats` patches
            n = W.dim() - 2
            row = W.detach().flatten(1).norm(dim=1).view(-1, *[1] * n)  # [C_out, 1, ...]
            groups = int(b["groups"])
            kernel = W.shape[2:]
            stride = _ntuple(b["stride"], n)
            dilation = _ntuple(b["dilation"], n)
            repeats = math.prod(min(k, (k - 1) * d // s + 1) for k, s, d in zip(kernel, stride, dilation))
            per_group = W.detach().reshape(groups, W.shape[0] // groups, -1)
            lip = math.sqrt(repeats) * max(_spectral_bound(per_group[g], self.spectral) for g in range(groups))
            ones = torch.ones(1, h.shape[1], *kernel, dtype=h.dtype, device=h.device)
            conv = getattr(F, f"conv{n}d")
            patch = conv(h.detach().pow(2), ones, None, b["stride"], b["padding"], b["dilation"]).clamp_min(0).sqrt()
            total = per_sample_norm(patch)  # [B]
            positions = patch[0].numel()
        dim = out.dim()

        def run(eps, state):
            U, d = state
            db, eb = _view(d, dim), _view(eps, dim)
            U_out = row * db  # |W_j . dh| <= ||W_j|| ||dh||
            if wt or bt:  # |dW_j . h~ + db_j| <= eps ||(patch(h~), 1)||
                U_out = U_out + eb * torch.sqrt(wt * (patch + db).pow(2) + bt)
            d_out = lip * d + eps * torch.sqrt(wt * (total + math.sqrt(repeats) * d).pow(2) + bt * positions)
            U_out = U_out.expand(out.shape)
            return U_out, _norm(U_out, d_out)

        return _Step(run, [self.tracer.slot(h)])

    def _other_linear(self, short, func, args, kwargs, out):
        # `h @ W` with W not depending on the input is a linear layer with weight W^T.
        if short in ("matmul", "mm") and len(args) == 2 and not kwargs:
            h, W = args
            if self.tracer.depends(h) and not self.tracer.depends(W) and W.dim() == 2 and h.dim() >= 2:
                return self._parameterised("linear", func, (h, W.mT), {}, out, weight_owner=W)
        raise NotImplementedError(
            f"parameter_radius: {self.tracer.where()} calls {op_name(func)[0]}, which is piecewise linear but has "
            "no norm-propagation rule (they exist for linear, conv, batch_norm, ReLU, max and average pooling, "
            "dropout, additions, products with constants or parameters, h @ W, sums and data movement)"
        )

    def _batch_norm(self, args, kwargs, out):
        b = bind(SIGNATURES["batch_norm"], args, kwargs, {"weight": None, "bias": None, "eps": 1e-5})
        h, weight, bias = b["input"], b["weight"], b["bias"]
        self._refuse_dependent("batch_norm", weight, bias)
        shape = (1, -1) + (1,) * (h.dim() - 2)
        sd = (b["running_var"].detach() + b["eps"]).sqrt()
        scale = (weight.detach() if weight is not None else torch.ones_like(sd)) / sd
        normalised = (h.detach() - b["running_mean"].detach().view(shape)) / sd.view(shape)
        per_channel = normalised.transpose(0, 1).reshape(normalised.shape[1], h.shape[0], -1).norm(dim=-1).T  # [B, C]
        count = normalised[0, 0].numel()
        gw, gb = float(self._is_trainable(weight)), float(self._is_trainable(bias))
        scale_abs, scale_max = scale.abs().view(shape), float(scale.abs().max())
        inv_sd, dim = (1 / sd).view(shape), out.dim()

        def run(eps, state):
            U, d = state
            U_in = U if U is not None else torch.zeros((), dtype=h.dtype, device=h.device)
            U_out = scale_abs * U_in
            d_out = scale_max * d
            if gw or gb:  # |dgamma * hhat~ + dbeta| <= eps ||(hhat~, 1)||
                U_out = U_out + _view(eps, dim) * torch.sqrt(gw * (normalised.abs() + U_in * inv_sd).pow(2) + gb)
                channel = torch.sqrt(gw * (per_channel + d[:, None] / sd).pow(2) + gb * count).max(dim=1).values
                d_out = d_out + eps * channel
            U_out = U_out.expand(out.shape)
            return U_out, _norm(U_out, d_out)

        return _Step(run, [self.tracer.slot(h)])

    def _relu(self, short, func, args, kwargs, out):
        z = args[0]
        on, size = z > 0, z.abs()

        def run(eps, state):
            U, d = state
            if U is None:
                return (None, d), torch.zeros_like(size)
            ratio = torch.where(U > 0, U / size, torch.zeros_like(U))  # inf where z = 0 and U > 0
            U_out = U * on
            return (U_out, _norm(U_out, d)), ratio

        # `args` holds a snapshot of the input (an in-place ReLU overwrites it); the tracer
        # noted the slot of the tensor itself before the call.
        return _Step(run, [self.tracer.relu_input_slot], site=len(self.tracer.sites) - 1)

    def _max_pool(self, short, func, args, kwargs, out):
        return self._pool(short, func, args, kwargs, out, self.tracer.pools[-1].windows.multiplicity)

    def _avg_pool(self, short, func, args, kwargs, out):
        from regimes.geometry._trace import pool_windows

        b = bind(signature(short), args, kwargs)
        n = int(short[short.index("pool") + 4])
        windows = pool_windows(short, b, tuple(b["input"].shape[-n:]), tuple(out.shape[-n:]), out.device)
        return self._pool(short, func, args, kwargs, out, windows.multiplicity)

    def _pool(self, short, func, args, kwargs, out, repeats):
        names = signature(short)
        h = bind(names, args, kwargs)["input"]

        def run(eps, state):
            U, d = state
            if U is None:
                return None, math.sqrt(repeats) * d
            call_args, call_kwargs = replace_argument(names, args, kwargs, "input", U)
            U_out = func(*call_args, **call_kwargs)
            U_out = U_out[0] if isinstance(U_out, (tuple, list)) else U_out
            return U_out, _norm(U_out, math.sqrt(repeats) * d)

        return _Step(run, [self.tracer.slot(h)])

    def _dropout(self, short, func, args, kwargs, out):
        h = bind(SIGNATURES["dropout"], args, kwargs)["input"]
        return _Step(lambda eps, state: state, [self.tracer.slot(h)])

    def _addition(self, short, func, args, kwargs, out):
        b = bind(("input", "other", "alpha"), args, kwargs, {"alpha": 1})
        if short in ("neg", "positive"):
            return _Step(lambda eps, state: state, [self.tracer.slot(b["input"])])
        alpha = abs(float(b["alpha"]))
        coefficients = {"add": (1.0, alpha), "sub": (1.0, alpha), "rsub": (alpha, 1.0)}[short]
        dependents, parameters = [], []
        per_sample = out[0].numel()
        for operand, coefficient in zip((b["input"], b.get("other")), coefficients):
            if self.tracer.depends(operand):
                dependents.append((self.tracer.slot(operand), coefficient, math.sqrt(out.numel() / operand.numel())))
            elif self._is_trainable(operand):
                parameters.append((coefficient, math.sqrt(per_sample / operand.numel())))
        dim = out.dim()

        def run(eps, *states):
            U_out = torch.zeros((), dtype=out.dtype, device=out.device)
            d_out = torch.zeros_like(eps)
            for (U, d), (_, coefficient, repeat) in zip(states, dependents):
                if U is not None:
                    U_out = U_out + coefficient * U
                d_out = d_out + coefficient * repeat * d
            for coefficient, repeat in parameters:  # |dp_i| <= eps
                U_out = U_out + coefficient * _view(eps, dim)
                d_out = d_out + coefficient * repeat * eps
            U_out = U_out.expand(out.shape)
            return U_out, _norm(U_out, d_out)

        return _Step(run, [slot for slot, _, _ in dependents])

    def _product_by_constant(self, short, func, args, kwargs, out):
        b = bind(SIGNATURES["binary"], args, kwargs)
        first, second = b["input"], b.get("other")
        h, c = (first, second) if self.tracer.depends(first) else (second, first)
        repeat = math.sqrt(out.numel() / h.numel())
        dim = out.dim()
        divide = short in ("div", "true_divide", "divide")
        if self._is_trainable(c):
            if divide:
                raise NotImplementedError(f"parameter_radius: {self.tracer.where()} divides by a trainable parameter")
            c_abs, c_max = c.detach().abs(), float(c.detach().abs().max())
            h_abs, h_norm = h.detach().abs(), per_sample_norm(h.detach())

            def run(eps, state):  # |p~ h~ - p h| <= |p| |dh| + |dp| (|h| + |dh|)
                U, d = state
                U_in = U if U is not None else torch.zeros((), dtype=h.dtype, device=h.device)
                U_out = (c_abs * U_in + _view(eps, dim) * (h_abs + U_in)).expand(out.shape)
                return U_out, _norm(U_out, c_max * repeat * d + eps * (h_norm + d))

            return _Step(run, [self.tracer.slot(h)])
        if isinstance(c, torch.Tensor):
            c_abs = c.detach().abs().to(h.dtype)
            c_abs = 1 / c_abs if divide else c_abs
            c_max = float(c_abs.max()) if c_abs.numel() else 0.0
        else:
            c_abs = abs(1 / c if divide else c)
            c_max = float(c_abs)

        def run(eps, state):
            U, d = state
            U_out = None if U is None else (c_abs * U).expand(out.shape)
            return U_out, _norm(U_out, c_max * repeat * d)

        return _Step(run, [self.tracer.slot(h)])

    def _reduction(self, short, func, args, kwargs, out):
        b = bind(("input", "dim", "keepdim"), args, kwargs, {"dim": None})
        h, dims = b["input"], b["dim"]
        dims = [dims] if isinstance(dims, int) else list(dims) if dims is not None else None
        if not dims or any(d % h.dim() == 0 for d in dims):
            raise NotImplementedError(f"parameter_radius: {self.tracer.where()} sums over the batch dimension")
        k = h.numel() / out.numel()
        factor = math.sqrt(k) if short == "sum" else 1 / math.sqrt(k)
        rest_args, rest_kwargs = args[1:], kwargs

        def run(eps, state):
            U, d = state
            U_out = None if U is None else func(U, *rest_args, **rest_kwargs)
            return U_out, _norm(U_out, factor * d)

        return _Step(run, [self.tracer.slot(h)])

    def _move(self, short, func, args, kwargs, out):
        tracer = self.tracer
        dependents = [t for t in flat_tensors((args, kwargs)) if tracer.depends(t)]
        slots = [tracer.slot(t) for t in dependents]
        if any(self._is_trainable(t) for t in flat_tensors((args, kwargs))):
            raise NotImplementedError(
                f"parameter_radius: {tracer.where()} moves a trainable parameter into the data ({short})"
            )
        inplace = op_name(func)[2]
        zero_value = short in ("pad", "masked_fill")
        mode = (
            bind(("input", "pad", "mode", "value"), args, kwargs, {"mode": "constant"}).get("mode")
            if short == "pad"
            else None
        )
        outputs = [t for t in flat_tensors(out) if t.is_floating_point()]

        def substitute(obj, by_slot):
            if isinstance(obj, torch.Tensor) and obj.is_floating_point():
                k = tracer.slot(obj) if tracer.depends(obj) else None
                if k is not None and by_slot.get(k) is not None:
                    U = by_slot[k]
                    return U.clone() if inplace else U
                return torch.zeros_like(obj)
            if isinstance(obj, (list, tuple)):
                return type(obj)(substitute(o, by_slot) for o in obj)
            if isinstance(obj, dict):
                return {key: substitute(v, by_slot) for key, v in obj.items()}
            return obj

        def call(by_slot):
            call_args, call_kwargs = substitute(args, by_slot), substitute(kwargs, by_slot)
            if zero_value:
                names = ("input", "pad", "mode", "value") if short == "pad" else ("input", "mask", "value")
                if len(call_args) > names.index("value") or "value" in call_kwargs or short == "masked_fill":
                    call_args, call_kwargs = replace_argument(names, call_args, call_kwargs, "value", 0.0)
            return [t for t in flat_tensors(func(*call_args, **call_kwargs)) if t.is_floating_point()]

        # How many times an output can use one input element (1 for pure rearrangements).
        if short in MOVES_WITHOUT_REPEATS or (short == "pad" and mode == "constant"):
            repeats = [1.0] * len(dependents)
        else:
            repeats = []
            for t in dependents:
                with torch.enable_grad():
                    ones = torch.ones_like(t, requires_grad=True)
                    by_slot = {tracer.slot(t): ones}
                    used = call(by_slot)
                    (counts,) = torch.autograd.grad(sum(u.sum() for u in used), ones, allow_unused=True)
                repeats.append(float(counts.max()) if counts is not None else 0.0)

        def run(eps, *states):
            by_slot = {slot: U for slot, (U, _) in zip(slots, states)}
            d = sum(math.sqrt(r) * s[1] for r, s in zip(repeats, states))
            if all(U is None for U in by_slot.values()):
                return [(None, d) for _ in outputs]
            return [(U, _norm(U, d)) for U in call(by_slot)]

        return _Step(run, slots)


def _ntuple(value, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value) if len(value) == n else (int(value[0]),) * n
    return (int(value),) * n


def _replay(steps: list[_Step], eps: torch.Tensor, locate: bool = False):
    """The largest ratio |z~_j - z_j| bound / |z_j| over every unit, per sample [B]; with `locate`,
    also the site and unit where it is reached."""
    states = {0: (None, torch.zeros_like(eps))}
    worst = torch.zeros_like(eps)
    where_site = torch.full(eps.shape, -1, dtype=torch.long, device=eps.device)
    where_unit = where_site.clone()
    for step in steps:
        result = step.run(eps, *[states[k] for k in step.inputs])
        if step.site is not None:
            result, ratio = result
            ratio = ratio.reshape(eps.shape[0], -1)
            if ratio.shape[1]:
                value, unit = ratio.max(dim=1)
                if locate:
                    better = value > worst
                    where_site = torch.where(better, step.site, where_site)
                    where_unit = torch.where(better, unit, where_unit)
                worst = torch.maximum(worst, value)
        results = result if isinstance(result, list) else [result]
        for slot, state in zip(step.outputs, results):
            states[slot] = state
    return (worst, where_site, where_unit) if locate else worst


def _certify(steps: list[_Step], batch: int, dtype, device):
    """Per sample, the largest eps at which every unit's bound stays below its |z| (geometric bisection)."""
    eps = torch.ones(batch, dtype=dtype, device=device)
    lo = torch.zeros_like(eps)
    hi = torch.full_like(eps, math.inf)
    for _ in range(200):
        holds = _replay(steps, eps) < 1
        lo = torch.where(holds, torch.maximum(lo, eps), lo)
        hi = torch.where(holds, hi, torch.minimum(hi, eps))
        bracketed = (lo > 0) & torch.isfinite(hi)
        done = (bracketed & (hi <= lo * (1 + 1e-6))) | (eps > 1e30) | (eps < 1e-30)
        if bool(done.all()):
            break
        grow = torch.where(torch.isinf(hi), eps * 8, eps / 8)
        eps = torch.where(bracketed, (lo * hi).sqrt(), grow)
    certified = torch.where(torch.isinf(hi) & (lo > 1e30), math.inf, lo * (1 - _SAFETY))
    certified = torch.where(hi < 1e-30, 0.0, certified)
    _, site, unit = _replay(steps, torch.where(torch.isfinite(hi), hi, lo), locate=True)
    return certified, site, unit


# ---------------------------------------------------------------- empirical: search for a flip


_PERTURBED = frozenset("linear conv1d conv2d conv3d batch_norm add sub rsub mul multiply matmul mm".split())


class _Perturbed(TorchFunctionMode):
    """The forward at parameters `theta + t * D`, with t per sample: every parameterised
    operation (affine in its parameters) adds `t * (its derivative along D)`. Records every
    ReLU input, in call order."""

    def __init__(self, t: torch.Tensor, directions: dict[int, torch.Tensor]):
        super().__init__()
        self.t, self.directions = t, directions
        self.relu_inputs: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELU_FUNCTIONS:
            self.relu_inputs.append(args[0].clone())
            return func(*args, **kwargs)
        full, short, inplace = op_name(func)
        if short not in _PERTURBED:
            return func(*args, **kwargs)
        if not any(id(t) in self.directions for t in flat_tensors((args, kwargs))):
            return func(*args, **kwargs)
        change = self._derivative(func, short, args, kwargs)
        out = func(*args, **kwargs)
        t = self.t.reshape(-1, *[1] * (out.dim() - 1))
        if inplace:
            return out.add_(t * change)
        return out + t * change

    def _derivative(self, func, short, args, kwargs):
        if short in ("add", "sub", "rsub"):
            b = bind(("input", "other", "alpha"), args, kwargs, {"alpha": 1})
            signs = {"add": (1, b["alpha"]), "sub": (1, -b["alpha"]), "rsub": (-b["alpha"], 1)}[short]
            change = 0
            for operand, sign in zip((b["input"], b["other"]), signs):
                if isinstance(operand, torch.Tensor) and id(operand) in self.directions:
                    change = change + sign * self.directions[id(operand)]
            return change
        # linear, conv, batch_norm, mul: linear in their parameters, so the derivative is the
        # same call with each trainable parameter replaced by its direction and every other
        # parameter (a frozen weight or bias) by zero.
        products = ("mul", "multiply", "matmul", "mm")
        names = SIGNATURES["binary"] if short in products else signature(short)
        keys = ("input", "other") if short in products else ("weight", "bias")
        b = bind(names, args, kwargs)
        for key in keys:
            value = b.get(key)
            if not isinstance(value, torch.Tensor):
                continue
            if id(value) in self.directions:
                args, kwargs = replace_argument(names, args, kwargs, key, self.directions[id(value)])
            elif short not in products:  # a frozen or non-parameter weight or bias: no change
                args, kwargs = replace_argument(names, args, kwargs, key, torch.zeros_like(value))
        return func(*args, **kwargs)


def _flips(module, x, t, directions, pattern) -> torch.Tensor:
    mode = _Perturbed(t, directions)
    with mode:
        module(x)
    flipped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for z, on in zip(mode.relu_inputs, pattern):
        flipped |= ((z > 0) != on).reshape(x.shape[0], -1).any(dim=1)
    return flipped


def _first_flip(evaluate, start: torch.Tensor, expansions: int = 60, bisections: int = 16) -> torch.Tensor:
    """Per sample, a step t at which the pattern has flipped, near the first one found from `start`:
    doubling until a flip, then bisection. `inf` where none is found."""
    lo, hi = torch.zeros_like(start), start.clone()
    found = torch.zeros(start.shape, dtype=torch.bool, device=start.device)
    for _ in range(expansions):
        flipped = evaluate(hi)
        found |= flipped
        if bool(found.all()):
            break
        lo = torch.where(found, lo, hi)
        hi = torch.where(found, hi, hi * 2)
    for _ in range(bisections):
        mid = (lo + hi) / 2
        flipped = evaluate(mid)
        hi = torch.where(found & flipped, mid, hi)
        lo = torch.where(found & ~flipped, mid, lo)
    return torch.where(found, hi, math.inf)


def parameter_radius(
    model: nn.Module, x: torch.Tensor, *, directions: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """How far the parameters can move (L2 over every trainable parameter) before an input's
    activation pattern changes (Proposition 1): `(certified [B], empirical [B])`.

    `certified` is a proven lower bound: no perturbation of smaller norm flips any ReLU unit
    of that input. `empirical` is an upper bound found by search: the smallest step, along
    `directions` random unit directions and along the gradient of the unit that limits the
    certificate (pushing it towards zero), at which some unit flips (doubling, then
    bisection to 2^-16). Always `certified <= empirical`; max-pool switches are not counted
    as flips (the tracker's pattern is the ReLUs').

    How `certified` is proven (norm propagation). Perturb every trainable parameter, with
    ||dtheta|| < eps overall, so each layer's own perturbation is below eps too. While every
    earlier ReLU keeps its state, an affine layer z = W h + b (a linear or a convolution,
    where h is the patch a unit sees) changes by

        dz_j = W_j . dh + dW_j . h~ + db_j,   |dz_j| <= ||W_j|| ||dh|| + eps ||(h + dh, 1)||,

    and as a whole ||dz|| <= ||W||_2 ||dh|| + eps ||(h~, 1)|| (for a convolution ||W||_2 is
    the reshaped kernel's norm times sqrt of how many patches share an input element, and
    ||(h~, 1)|| sums over patches). Eval-mode BatchNorm y = gamma (h - mu)/sigma + beta adds
    |gamma/sigma| |dh| + eps ||(hhat~, 1)||; a ReLU that keeps its state passes dz on its
    on-units and 0 on its off-units; max-pooling is 1-Lipschitz per element (sqrt(m) as a
    whole when windows overlap m times), average pooling and data movement likewise, a
    residual addition adds the two bounds. Per element and per sample the bounds are kept as
    functions of eps; a unit cannot flip while its bound stays below |z_j|, so by induction
    over the forward, the largest eps at which every bound stays below its |z_j| (found by
    bisection, then rounded down by 1e-4 for floating point) keeps the whole pattern. For one
    hidden layer this is exact: min_j |z_j| / ||(x, 1)||, which perturbing row j of the first
    layer along -sign(z_j) (x, 1) attains. A unit sitting exactly on z_j = 0 gives 0.

    The model runs in eval mode; its train/eval state and parameters are left as they were.
    """
    if directions < 0:
        raise UsageError(f"directions must be >= 0, got {directions}")
    module, x = prepare(model, x)
    batch = x.shape[0]
    tr = trace(module, x, builder=_Program(batch))
    certified, site, unit = _certify(tr.steps, batch, x.dtype, x.device)
    empirical = _empirical(module, x, tr, certified, site, unit, directions, seed)
    return certified, empirical


def _empirical(module, x, tr: Trace, certified, site, unit, n_random: int, seed: int) -> torch.Tensor:
    batch = x.shape[0]
    named = {name: p for name, p in module.named_parameters() if p.requires_grad}
    unique = {}
    for name, p in named.items():
        unique.setdefault(id(p), (name, p))
    params = {name: p for name, p in unique.values()}
    if not params or not tr.sites:
        return torch.full((batch,), math.inf, dtype=x.dtype, device=x.device)
    pattern = [s.z > 0 for s in tr.sites]
    start = torch.where(torch.isfinite(certified) & (certified > 0), certified, torch.full_like(certified, 1e-8))
    best = torch.full((batch,), math.inf, dtype=x.dtype, device=x.device)
    searchable = torch.isfinite(certified)
    if not bool(searchable.any()):
        return best
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with evaluating(module), torch.no_grad():
        for _ in range(n_random):
            direction = {
                name: torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
                for name, p in params.items()
            }
            norm = math.sqrt(sum(float(d.pow(2).sum()) for d in direction.values()))
            by_id = {id(params[name]): d / norm for name, d in direction.items()}
            found = _first_flip(lambda t, by_id=by_id: _flips(module, x, t, by_id, pattern), start)
            best = torch.minimum(best, found)
        best = torch.minimum(best, _gradient_search(module, x, tr, params, site, unit, start, pattern))
    return best


def _gradient_search(module, x, tr, params, site, unit, start, pattern) -> torch.Tensor:
    """Along, per sample, the direction that drives the certificate's limiting unit to zero fastest."""
    batch = x.shape[0]
    sizes = torch.tensor([s.z[0].numel() for s in tr.sites], device=x.device)
    offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    valid = site >= 0
    index = torch.where(valid, offsets[site.clamp(min=0)] + unit.clamp(min=0), 0)
    detached = {name: p.detach() for name, p in params.items()}
    n_params = sum(p.numel() for p in params.values())
    chunk = max(1, _BYTES // (n_params * x.element_size() * 4))

    def unit_value(theta, xb, k):
        recorder = Recorder()
        with recorder:
            functional_call(module, theta, (xb.unsqueeze(0),), strict=False)
        return torch.cat([z.reshape(-1) for z in recorder.relu_inputs]).gather(0, k.reshape(1)).squeeze(0)

    def flips(xb, tb, db, pattern_b):
        mode = _Perturbed(tb, {id(params[name]): d for name, d in db.items()})
        with mode:
            module(xb.unsqueeze(0))
        flipped = torch.zeros((), dtype=torch.bool, device=xb.device)
        for z, on in zip(mode.relu_inputs, pattern_b):
            flipped = flipped | ((z[0] > 0) != on).any()
        return flipped

    result = torch.full((batch,), math.inf, dtype=x.dtype, device=x.device)
    for begin in range(0, batch, chunk):  # chunks bound the memory of per-sample directions
        end = min(batch, begin + chunk)
        xs, ks = x[begin:end], index[begin:end]
        with torch.enable_grad():
            gradients = vmap(grad(unit_value), in_dims=(None, 0, 0))(detached, xs, ks)
        values = torch.cat([s.z[begin:end].reshape(end - begin, -1) for s in tr.sites], dim=1)
        value = values.gather(1, ks[:, None]).squeeze(1)
        norm = torch.sqrt(sum(g.reshape(end - begin, -1).pow(2).sum(1) for g in gradients.values()))
        usable = valid[begin:end] & (norm > 0)
        sign = torch.where(value > 0, -1.0, 1.0).to(x.dtype) / norm.clamp_min(torch.finfo(x.dtype).tiny)
        direction = {name: g * sign.view(-1, *[1] * (g.dim() - 1)) for name, g in gradients.items()}
        pattern_chunk = [p[begin:end] for p in pattern]
        found = _first_flip(lambda t, xs=xs, d=direction, p=pattern_chunk: vmap(flips)(xs, t, d, p), start[begin:end])
        result[begin:end] = torch.where(usable, found, math.inf)
    return result
