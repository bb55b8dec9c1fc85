"""Seeing a model's forward op by op: which parts are piecewise linear, where its ReLUs
and max-pools are, and what depends on the input.

Three TorchFunctionModes share one vocabulary of operations (`op_kind`):

- `Tracer` runs once per call on the real batch, inside `regimes.sites.capture` so that
  sites get the tracker's names. It follows which tensors depend on the input, refuses
  anything that is not piecewise linear (or whose kinks are not ReLUs or max-pools),
  records every ReLU's pre-activation and every max-pool's input, and hands each
  operation to an optional builder (the norm propagation of `parameter_radius`).
- `Recorder` only collects ReLU inputs and max-pool inputs, in call order; it runs
  inside `torch.func` transforms (jacobians) and under autograd.
- `radius._Perturbed` rewrites the parameterised operations (the network at perturbed weights).

The model is always evaluated in eval mode; every flag and hook is restored in a
`finally`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from regimes.errors import UsageError
from regimes.sites import ACTIVATIONS, SiteCall, capture, site_name, unwrap_model

RELU_FUNCTIONS = ACTIVATIONS["relu"].functions

__all__ = ["NotPiecewiseLinearError"]


class NotPiecewiseLinearError(UsageError):
    """A part of the model is not piecewise linear (or has kinks other than ReLUs and max-pools)."""


_SUBMODULE_HINT = (
    "The geometry functions accept any piecewise-linear submodule with its own input instead: "
    "for a Transformer, one feed-forward block (Linear -> ReLU -> Linear) and the hidden states "
    "that enter it."
)

# ---------------------------------------------------------------- the vocabulary of operations

_NOT_PIECEWISE_LINEAR = frozenset(
    """gelu silu tanh sigmoid softmax log_softmax softmin softplus elu selu celu mish hardswish
    hardsigmoid logsigmoid tanhshrink softsign glu exp exp2 expm1 log log1p log2 log10 pow
    float_power sqrt rsqrt square reciprocal rdiv sin cos tan asin acos atan atan2 sinh cosh asinh
    acosh atanh erf erfc erfinv logit xlogy lgamma digamma sinc layer_norm group_norm
    instance_norm rms_norm local_response_norm normalize norm vector_norm matrix_norm
    cosine_similarity pairwise_distance var std var_mean std_mean logsumexp lp_pool1d lp_pool2d
    lp_pool3d scaled_dot_product_attention multi_head_attention_forward
    _native_multi_head_attention _transformer_encoder_layer_fwd embedding embedding_bag""".split()
)
# Piecewise linear, but with kinks that are neither ReLU sites nor max-pools: the region's
# boundary would miss them.
_OTHER_KINKS = frozenset(
    """leaky_relu relu6 hardtanh prelu rrelu threshold abs absolute clamp clip clamp_min clamp_max
    maximum minimum max min amax amin aminmax fmax fmin sort topk kthvalue median nanmedian mode
    sign sgn signbit round floor ceil trunc frac fix hardshrink softshrink remainder fmod
    floor_divide heaviside gt lt ge le eq ne greater less greater_equal less_equal equal
    not_equal argmax argmin argsort fractional_max_pool2d fractional_max_pool3d""".split()
)
MAX_POOLS = frozenset(
    f"{prefix}max_pool{n}d{suffix}"
    for prefix in ("", "adaptive_")
    for n in (1, 2, 3)
    for suffix in ("", "_with_indices")
)
AVG_POOLS = frozenset(f"{prefix}avg_pool{n}d" for prefix in ("", "adaptive_") for n in (1, 2, 3))
DROPOUTS = frozenset("dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout".split())
PARAMETERISED = frozenset("linear conv1d conv2d conv3d batch_norm".split())
ADDITIONS = frozenset("add sub rsub neg positive".split())
PRODUCTS_BY_CONSTANT = frozenset("mul multiply div true_divide divide".split())
REDUCTIONS = frozenset("sum mean".split())
# Data movement: every output element is one input element (or a constant).
MOVES = frozenset(
    """view view_as reshape reshape_as flatten unflatten ravel permute transpose swapaxes swapdims
    t T mT contiguous clone getitem select narrow squeeze unsqueeze cat concat concatenate stack
    hstack vstack to float double type type_as expand expand_as broadcast_to repeat tile
    repeat_interleave flip fliplr flipud roll split split_with_sizes tensor_split chunk unbind
    movedim moveaxis pad index_select gather take_along_dim where masked_fill unfold
    channel_shuffle pixel_shuffle pixel_unshuffle""".split()
)
# Moves that never use one input element twice (the others are checked by autograd).
MOVES_WITHOUT_REPEATS = MOVES - frozenset(
    "getitem expand expand_as broadcast_to repeat tile repeat_interleave pad index_select gather "
    "take_along_dim unfold".split()
)
# Linear in the input, but without a norm-propagation rule (the jacobians handle them).
_OTHER_LINEAR = frozenset(
    """conv_transpose1d conv_transpose2d conv_transpose3d interpolate upsample upsample_nearest
    upsample_bilinear cumsum diff trace fold setitem copy""".split()
)
# Products: linear in each operand, so piecewise linear when at most one depends on the input.
_PRODUCTS = frozenset(
    "matmul mm bmm mv dot inner outer einsum tensordot kron bilinear addmm addmv addbmm baddbmm".split()
)
# Outputs that depend on the input's shape or dtype only.
_CONSTANT = frozenset(
    """new_zeros new_ones new_full new_empty new_tensor zeros_like ones_like empty_like
    full_like""".split()
)

_DUNDER = {
    "add": "add",
    "radd": "add",
    "iadd": "add",
    "sub": "sub",
    "isub": "sub",
    "rsub": "rsub",
    "mul": "mul",
    "rmul": "mul",
    "imul": "mul",
    "truediv": "div",
    "itruediv": "div",
    "div": "div",
    "rtruediv": "rdiv",
    "rdiv": "rdiv",
    "matmul": "matmul",
    "rmatmul": "matmul",
    "neg": "neg",
    "pos": "positive",
    "getitem": "getitem",
    "setitem": "setitem",
    "pow": "pow",
    "rpow": "pow",
    "ipow": "pow",
    "abs": "abs",
    "floordiv": "floor_divide",
    "rfloordiv": "floor_divide",
    "mod": "remainder",
    "gt": "gt",
    "lt": "lt",
    "ge": "ge",
    "le": "le",
    "eq": "eq",
    "ne": "ne",
}

_names: dict = {}


def op_name(func) -> tuple[str, str, bool]:
    """(full name, short name, in place) of a function seen by a TorchFunctionMode.

    `torch.Tensor.__iadd__` -> ("torch.Tensor.__iadd__", "add", True);
    `torch.nn.functional.relu_` -> (..., "relu", True); `Tensor.T.__get__` -> (..., "T", False).
    """
    try:
        return _names[func]
    except (KeyError, TypeError):
        pass
    full = resolve_name(func) or getattr(func, "__qualname__", None) or repr(func)
    parts = full.split(".")
    short = parts[-2] if parts[-1] == "__get__" and len(parts) > 1 else parts[-1]
    inplace = False
    if short.startswith("__") and short.endswith("__"):
        inplace = short.startswith("__i") and short[3:-2] in _DUNDER
        short = _DUNDER.get(short[2:-2], short)
    elif short.endswith("_") and not short.startswith("_"):
        short, inplace = short[:-1], True
    result = (full, short, inplace)
    try:
        _names[func] = result
    except TypeError:
        pass
    return result


# Modules refused on sight, before their forward runs.
_NOT_PIECEWISE_LINEAR_MODULES = tuple(
    getattr(nn, name)
    for name in """GELU SiLU Tanh Sigmoid Softmax LogSoftmax Softmin Softmax2d Softplus ELU SELU CELU
    Mish Hardswish Hardsigmoid LogSigmoid Tanhshrink Softsign GLU LayerNorm GroupNorm RMSNorm
    InstanceNorm1d InstanceNorm2d InstanceNorm3d LocalResponseNorm MultiheadAttention RNNBase
    LPPool1d LPPool2d LPPool3d Embedding EmbeddingBag""".split()
    if hasattr(nn, name)
)
_OTHER_KINK_MODULES = tuple(
    getattr(nn, name)
    for name in "LeakyReLU PReLU RReLU Hardtanh Threshold Hardshrink Softshrink FractionalMaxPool2d "
    "FractionalMaxPool3d".split()
    if hasattr(nn, name)
)


_NOT_PL = "which is not piecewise linear"
_KINKS = (
    "which is piecewise linear but has kinks that are neither ReLU units nor max-pool switches, "
    "so the boundary of the linear region cannot be read from its ReLUs"
)


def _refuse(clause: str) -> NotPiecewiseLinearError:
    return NotPiecewiseLinearError(f"regimes.geometry needs a piecewise-linear model, but {clause}. {_SUBMODULE_HINT}")


# ---------------------------------------------------------------- small helpers


def flat_tensors(obj) -> list[torch.Tensor]:
    """Tensors in a (nested) structure of args/kwargs or outputs."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in flat_tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in flat_tensors(item)]
    return []


def bind(names: tuple[str, ...], args: tuple, kwargs: dict, defaults: dict | None = None) -> dict:
    """Arguments by name, for the handful of signatures the rules read."""
    bound = dict(defaults or {})
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def replace_argument(names: tuple[str, ...], args: tuple, kwargs: dict, key: str, value) -> tuple[tuple, dict]:
    """The call's args and kwargs with the argument `key` (positional or keyword) set to `value`."""
    index = names.index(key)
    if index < len(args):
        args = args[:index] + (value,) + args[index + 1 :]
    else:
        kwargs = {**kwargs, key: value}
    return args, kwargs


SIGNATURES = {
    "linear": ("input", "weight", "bias"),
    "conv": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    "max_pool": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "adaptive": ("input", "output_size", "return_indices"),
    "dropout": ("input", "p", "training", "inplace"),
    "binary": ("input", "other"),
}


def signature(short: str) -> tuple[str, ...]:
    if short.startswith("conv"):
        return SIGNATURES["conv"]
    if short.startswith("adaptive_"):
        return SIGNATURES["adaptive"]
    if "max_pool" in short:
        return SIGNATURES["max_pool"]
    if "avg_pool" in short:
        return SIGNATURES["avg_pool"]
    if short in DROPOUTS:
        return SIGNATURES["dropout"]
    return SIGNATURES.get(short, SIGNATURES["binary"])


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def model_device_dtype(module: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return x.device, x.dtype if x.is_floating_point() else torch.get_default_dtype()


def prepare(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """The module that runs and the batch on its device and dtype."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a batch tensor [B, ...], got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise UsageError(f"x must be a non-empty batch [B, ...], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be floating point (the functions differentiate the network in its input), got {x.dtype}. "
            "For a model that embeds token ids, pass the block after the embedding with the embedded input."
        )
    # A NaN or inf input has no region: its distance would come out +inf (or NaN), silently.
    bad = (~torch.isfinite(x.detach().reshape(x.shape[0], -1))).any(dim=1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UsageError(
            f"x holds NaN or infinite values in sample {shown} of {x.shape[0]}: such an input has no "
            "linear region, affine map or stability radius; drop it or fix it"
        )
    module = unwrap_model(model)
    device, dtype = model_device_dtype(module, x)
    return module, x.detach().to(device=device, dtype=dtype)


class evaluating:
    """Every module in eval mode (flags set directly, as `capture` does), restored on exit."""

    def __init__(self, module: nn.Module):
        self.flags = [(m.__dict__, m.training) for m in module.modules()]

    def __enter__(self):
        for attributes, _ in self.flags:
            attributes["training"] = False
        return self

    def __exit__(self, *exc):
        for attributes, training in self.flags:
            attributes["training"] = training


class module_stack:
    """Which module's forward is running (hooks on every module, removed on exit).

    With `refuse=True`, entering a module of a type that is not piecewise linear raises.
    """

    def __init__(self, names: dict[nn.Module, str], refuse: bool = False):
        self.names, self.refuse, self.stack, self.handles = names, refuse, [], []

    def describe(self, module: nn.Module | None = None) -> str:
        module = module if module is not None else (self.stack[-1] if self.stack else None)
        if module is None:
            return "the model's own forward"
        path = self.names.get(module, "")
        return f"`{path}` ({type(module).__name__})" if path else f"the top-level {type(module).__name__}"

    @property
    def top(self) -> nn.Module | None:
        return self.stack[-1] if self.stack else None

    def _push(self, module, args):
        if self.refuse:
            if isinstance(module, _NOT_PIECEWISE_LINEAR_MODULES):
                raise _refuse(f"the forward runs {self.describe(module)}, {_NOT_PL}")
            if isinstance(module, _OTHER_KINK_MODULES):
                raise _refuse(f"the forward runs {self.describe(module)}, {_KINKS}")
        self.stack.append(module)

    def _pop(self, module, args, output):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def __enter__(self):
        try:
            for module in self.names:
                self.handles.append(module.register_forward_pre_hook(self._push))
                self.handles.append(module.register_forward_hook(self._pop, always_call=True))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


# ---------------------------------------------------------------- pooling windows


@dataclass
class Windows:
    """The windows of a pooling over the last `n` dims: `index[o, t]` is the flat spatial
    position of the t-th element of output o's window, `valid` marks real (unpadded) ones,
    and `multiplicity` is the most windows any input element is in."""

    index: torch.Tensor  # [O, T] long
    valid: torch.Tensor  # [O, T] bool
    multiplicity: int


def _tuple(value, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            return ()
        return tuple(int(v) for v in value) if len(value) == n else (int(value[0]),) * n
    return (int(value),) * n


def pool_windows(short: str, bound: dict, in_spatial: tuple[int, ...], out_spatial: tuple[int, ...], device) -> Windows:
    n = len(in_spatial)
    index_per_dim, valid_per_dim = [], []
    if short.startswith("adaptive_"):
        for size_in, size_out in zip(in_spatial, out_spatial):
            o = torch.arange(size_out, device=device)
            starts = (o * size_in) // size_out
            ends = -((-(o + 1) * size_in) // size_out)  # ceil
            width = int((ends - starts).max())
            idx = starts[:, None] + torch.arange(width, device=device)
            index_per_dim.append(idx)
            valid_per_dim.append(idx < ends[:, None])
    else:
        kernel = _tuple(bound["kernel_size"], n)
        stride = _tuple(bound.get("stride") or kernel, n) or kernel
        padding = _tuple(bound.get("padding", 0), n)
        dilation = _tuple(bound.get("dilation", 1), n)
        for size_in, size_out, k, s, p, d in zip(in_spatial, out_spatial, kernel, stride, padding, dilation):
            o = torch.arange(size_out, device=device)
            idx = o[:, None] * s - p + torch.arange(k, device=device) * d
            index_per_dim.append(idx)
            valid_per_dim.append((idx >= 0) & (idx < size_in))
    # Combine the dims: flat index = sum_d idx_d * stride_d, as [O1..On, T1..Tn].
    strides = [math.prod(in_spatial[d + 1 :]) for d in range(n)]
    flat = torch.zeros((), dtype=torch.long, device=device)
    valid = torch.ones((), dtype=torch.bool, device=device)
    for d in range(n):
        shape = [1] * (2 * n)
        shape[d], shape[n + d] = index_per_dim[d].shape
        idx = index_per_dim[d].clamp(0, in_spatial[d] - 1).view(shape)
        flat = flat + idx * strides[d]
        valid = valid & valid_per_dim[d].view(shape)
    out_count = math.prod(out_spatial)
    valid = valid.expand(flat.shape).reshape(out_count, -1)
    flat = flat.reshape(out_count, -1)
    counts = torch.zeros(math.prod(in_spatial), dtype=torch.long, device=device)
    counts.index_add_(0, flat[valid], torch.ones_like(flat[valid]))
    return Windows(flat, valid, int(counts.max()) if counts.numel() else 1)


# ---------------------------------------------------------------- records


@dataclass
class SiteRecord:
    """One ReLU call: its tracker name and its pre-activation for the batch."""

    call: SiteCall
    z: torch.Tensor  # [B, ...]
    name: str = ""


@dataclass
class PoolRecord:
    """One max-pool call: its name, its input for the batch and its windows."""

    base: str
    index: int
    input: torch.Tensor  # [B, *lead, *spatial]
    spatial: int  # how many trailing dims are pooled
    windows: Windows
    name: str = ""


@dataclass
class Trace:
    output: torch.Tensor  # [B, ...]
    sites: list[SiteRecord]
    pools: list[PoolRecord]
    dependent_numel: int  # elements per sample of every input-dependent tensor (a memory estimate)
    steps: list = field(default_factory=list)  # the builder's program, when one was given


def _has_float_tensor(obj) -> bool:
    return any(t.is_floating_point() for t in flat_tensors(obj))


class Tracer(TorchFunctionMode):
    """Follows what depends on the input, refuses what is not piecewise linear, records sites and pools.

    `builder`, when given, is called as `builder(kind, short, func, args, kwargs, out, tracer)`
    for every operation on input-dependent tensors (args as they were before an in-place
    call) and returns a step, or raises; `tracer.slot(t)` is the slot of a dependent tensor.
    """

    def __init__(self, x: torch.Tensor, stack: module_stack, site_calls: list[SiteCall], trainable: dict, builder=None):
        super().__init__()
        self.stack, self.site_calls, self.trainable, self.builder = stack, site_calls, trainable, builder
        self.slots: dict[int, int] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.sites: list[SiteRecord] = []
        self.pools: list[PoolRecord] = []
        self.steps: list = []
        self.dependent_numel = 0
        self.snapshots: dict[int, tuple[torch.Tensor, int]] = {}
        self.batch = x.shape[0]
        self._assign(x)

    # -- dependence
    def _assign(self, t: torch.Tensor) -> int:
        self.slots[id(t)] = len(self.alive)
        self.alive.append(t)
        self.dependent_numel += t.numel() // max(1, self.batch)
        return self.slots[id(t)]

    def slot(self, t: torch.Tensor) -> int | None:
        k = self.slots.get(id(t))
        if k is not None and self.alive[k] is t:
            return k
        copy = self.snapshots.get(id(t))  # a copy taken before an in-place call stands for its original
        return copy[1] if copy is not None and copy[0] is t else None

    def depends(self, t) -> bool:
        return isinstance(t, torch.Tensor) and self.slot(t) is not None

    def where(self) -> str:
        return self.stack.describe()

    # -- the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELU_FUNCTIONS:
            return self._relu(func, args, kwargs)
        full, short, inplace = op_name(func)
        tensors = flat_tensors((args, kwargs))
        dependents = [t for t in tensors if self.depends(t)]
        if short in MAX_POOLS:
            return self._max_pool(func, short, args, kwargs, bool(dependents))
        if not dependents:
            out = func(*args, **kwargs)
            if self.builder is not None and _has_float_tensor(out):
                used = [self.trainable[id(t)] for t in tensors if id(t) in self.trainable]
                if used:
                    raise NotImplementedError(
                        f"parameter_radius: {self.where()} computes with the parameter `{used[0]}` through {full} "
                        "before it meets the input (a parametrization, weight norm or tied transform?). The norm "
                        "propagation needs every trainable parameter used directly by linear, conv, batch_norm, "
                        "add or mul."
                    )
            return out
        kind = self._classify(full, short, args, kwargs, dependents)
        pre_args, pre_kwargs = args, kwargs
        if inplace and self.builder is not None:  # the rules read the input as it was
            self.snapshots.clear()
            pre_args, pre_kwargs = _snapshot(args, self), _snapshot(kwargs, self)
        out = func(*args, **kwargs)
        if kind == "unknown":
            if not flat_tensors(out):
                return out  # shapes, sizes, dtypes
            raise _refuse(
                f"{self.where()} applies {full} to a tensor that depends on the input, an operation "
                "regimes.geometry does not know to be piecewise linear"
            )
        if kind == "constant":
            return out
        self._after(kind, short, func, pre_args, pre_kwargs, out)
        if short == "setitem":  # in place, returns None: the target now depends on the input
            self._assign(args[0])
        return out

    def _classify(self, full: str, short: str, args, kwargs, dependents) -> str:
        where = self.where()
        if short in _NOT_PIECEWISE_LINEAR:
            raise _refuse(f"{where} calls {full}, {_NOT_PL}")
        if short in _OTHER_KINKS:
            raise _refuse(f"{where} calls {full}, {_KINKS}")
        if short in _PRODUCTS or (short in PRODUCTS_BY_CONSTANT and len(dependents) > 1):
            operands = [t for t in flat_tensors(args[1:] if short in ("addmm", "addmv", "addbmm", "baddbmm") else args)]
            if sum(self.depends(t) for t in operands) > 1:
                raise _refuse(
                    f"{where} multiplies two tensors that both depend on the input ({full}, as attention "
                    f"does), {_NOT_PL}"
                )
        if short in PARAMETERISED:
            bound = bind(signature(short), args, kwargs)
            if self.depends(bound.get("input")) and self.depends(bound.get("weight")):
                raise _refuse(
                    f"{where} calls {full} with weights that depend on the input, a product of two "
                    f"input-dependent tensors, {_NOT_PL}"
                )
        if short in ("div", "true_divide", "divide"):
            bound = bind(SIGNATURES["binary"], args, kwargs)
            if self.depends(bound.get("other")):
                raise _refuse(f"{where} divides by a tensor that depends on the input ({full}), {_NOT_PL}")
            if bound.get("rounding_mode") is not None:
                raise _refuse(f"{where} calls {full} with rounding, {_KINKS}")
        if short == "batch_norm":
            bound = bind(SIGNATURES["batch_norm"], args, kwargs, {"training": False})
            if bound["training"] or bound.get("running_mean") is None:
                raise _refuse(
                    f"{where} normalises with the batch's own statistics (batch_norm without running "
                    f"statistics), {_NOT_PL}"
                )
        if short in DROPOUTS:
            bound = bind(SIGNATURES["dropout"], args, kwargs, {"p": 0.5, "training": True})
            if bound["training"] and bound["p"] > 0:
                raise NotPiecewiseLinearError(
                    f"{where} calls {full} with training=True even in eval mode: the network is random. "
                    "Pass training=self.training to the functional dropout."
                )
        if short in ("avg_pool1d", "avg_pool2d", "avg_pool3d"):
            if bind(SIGNATURES["avg_pool"], args, kwargs).get("divisor_override") is not None:
                return "other_linear"
        if short in _CONSTANT:
            return "constant"
        for kind, names in (
            ("parameterised", PARAMETERISED),
            ("addition", ADDITIONS),
            ("product_by_constant", PRODUCTS_BY_CONSTANT),
            ("reduction", REDUCTIONS),
            ("move", MOVES),
            ("avg_pool", AVG_POOLS),
            ("dropout", DROPOUTS),
            ("other_linear", _OTHER_LINEAR | _PRODUCTS),
        ):
            if short in names:
                return kind
        return "unknown"

    def _after(self, kind, short, func, args, kwargs, out) -> None:
        step = None
        if self.builder is not None:
            step = self.builder(kind, short, func, args, kwargs, out, self)
        outputs = [t for t in flat_tensors(out) if t.is_floating_point()]
        slots = [self._assign(t) for t in outputs]
        if step is not None:
            step.outputs = slots
            self.steps.append(step)

    def _relu(self, func, args, kwargs):
        z = args[0]
        dependent = self.depends(z)
        self.relu_input_slot = self.slot(z) if dependent else None
        before = len(self.site_calls)
        pre = z.detach().clone()
        out = func(*args, **kwargs)
        if len(self.site_calls) != before + 1:  # pragma: no cover - a bug, not a user error
            raise RuntimeError("regimes.geometry: capture did not report a ReLU call the tracer saw")
        self.sites.append(SiteRecord(self.site_calls[-1], pre))
        if dependent:
            self._after("relu", "relu", func, (pre,), {}, out)
        elif self.builder is not None:
            raise NotImplementedError(
                f"parameter_radius: {self.where()} applies a ReLU to a tensor that does not depend on the input"
            )
        return out

    def _max_pool(self, func, short, args, kwargs, dependent):
        bound = bind(signature(short), args, kwargs)
        x = bound["input"]
        out = func(*args, **kwargs)
        values = out[0] if isinstance(out, (tuple, list)) else out
        n = int(short[-1]) if short[-1].isdigit() else int(short.split("_with")[0][-2])
        spatial_in, spatial_out = tuple(x.shape[-n:]), tuple(values.shape[-n:])
        windows = pool_windows(short.replace("_with_indices", ""), bound, spatial_in, spatial_out, x.device)
        top = self.stack.top
        pool_types = (
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.MaxPool3d,
            nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d,
        )
        if isinstance(top, pool_types):
            base = self.stack.names.get(top, "") or short
        else:
            path = self.stack.names.get(top, "") if top is not None else ""
            base = (
                f"{path}.{short.replace('_with_indices', '')}()" if path else f"{short.replace('_with_indices', '')}()"
            )
        index = sum(p.base == base for p in self.pools)
        self.pools.append(PoolRecord(base, index, x.detach(), n, windows))
        if dependent:
            self._after("max_pool", short, func, args, kwargs, out)
        return out


def _snapshot(obj, tracer: Tracer):
    """The structure with every input-dependent tensor copied; each copy keeps its original's slot."""
    if isinstance(obj, torch.Tensor):
        if not tracer.depends(obj):
            return obj
        copy = obj.detach().clone()
        tracer.snapshots[id(copy)] = (copy, tracer.slot(obj))
        return copy
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(o, tracer) for o in obj)
    if isinstance(obj, dict):
        return {k: _snapshot(v, tracer) for k, v in obj.items()}
    return obj


def _name_records(records: list, base_of, index_of) -> None:
    calls = Counter(base_of(r) for r in records)
    for r in records:
        r.name = site_name(base_of(r), index_of(r), calls[base_of(r)])


def trainable_parameters(module: nn.Module) -> dict[int, str]:
    """id -> name of every trainable parameter (a shared tensor once)."""
    named = {}
    for name, p in module.named_parameters():
        if p.requires_grad and id(p) not in named:
            named[id(p)] = name
    return named


def trace(module: nn.Module, x: torch.Tensor, builder=None) -> Trace:
    """One forward of the batch in eval mode without gradients, seen op by op."""
    names = {m: name for name, m in module.named_modules()}
    site_calls: list[SiteCall] = []
    stack = module_stack(names, refuse=True)
    tracer = Tracer(x, stack, site_calls, trainable_parameters(module), builder)
    with capture(ACTIVATIONS["relu"], names, lambda call, output: site_calls.append(call)):
        with stack, tracer:
            output = module(x)
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"regimes.geometry needs a model that returns one tensor [B, ...], got {type(output).__name__}; "
            "wrap the model to return the output you want to study."
        )
    if output.dim() == 0 or output.shape[0] != x.shape[0]:
        raise UsageError(
            f"the model's output must have the batch first: input {tuple(x.shape)}, output {tuple(output.shape)}"
        )
    _name_records(tracer.sites, lambda r: r.call.base, lambda r: r.call.index)
    _name_records(tracer.pools, lambda r: r.base, lambda r: r.index)
    return Trace(output.detach(), tracer.sites, tracer.pools, tracer.dependent_numel, tracer.steps)


class Recorder(TorchFunctionMode):
    """Collects, in call order, every ReLU's input (before an in-place call overwrites it) and
    every max-pool's input. Runs inside torch.func transforms and under autograd."""

    def __init__(self):
        super().__init__()
        self.relu_inputs: list[torch.Tensor] = []
        self.pool_inputs: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELU_FUNCTIONS:
            self.relu_inputs.append(args[0].clone())
        else:
            short = op_name(func)[1]
            if short in MAX_POOLS:
                self.pool_inputs.append(bind(signature(short), args, kwargs)["input"].clone())
        return func(*args, **kwargs)

    def check(self, trace: Trace) -> None:
        if len(self.relu_inputs) != len(trace.sites) or len(self.pool_inputs) != len(trace.pools):
            raise RuntimeError(
                f"the model's forward took another path on a second run ({len(self.relu_inputs)} ReLU and "
                f"{len(self.pool_inputs)} max-pool calls, against {len(trace.sites)} and {len(trace.pools)}): "
                "regimes.geometry needs a forward whose control flow does not depend on the batch"
            )
