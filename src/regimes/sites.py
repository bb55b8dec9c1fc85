"""Finding activation sites in a model, naming them, and capturing them during a probe.

A *site* is one application of an activation during the forward pass: an `nn.ReLU`
module call, or a functional call (`F.relu`, `torch.relu`, `Tensor.relu` and the
in-place forms). Sites are named after where they happen:

- `features.1`            the module `features.1` (an `nn.ReLU`) called once
- `layer1.0.relu#0`, `#1`  one module called twice in a forward, by call order
- `layers.0.relu()`        a functional relu called inside the module `layers.0`
- `relu()`                 a functional relu in the top-level forward

Hooks exist only inside `with capture(...)` and are removed in a `finally`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from regimes import bits
from regimes.errors import UsageError
from regimes.registry import Registry

__all__ = ["Activation", "ACTIVATIONS", "unwrap_model", "select_sites", "capture", "SiteCall"]


def _positive(value: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if (
        bits.numpy_ok(value, out)
        and type(value) is torch.Tensor
        and value.dtype in _NUMPY_FLOATS
        and not value.requires_grad
    ):
        # The same comparison (NaN is off) in NumPy, on the same memory: torch's CPU kernel
        # for float -> bool takes ten times longer, and on a CNN it was most of a probe's cost.
        np.greater(value.numpy(), 0, out=out.numpy())
        return out
    return torch.gt(value, 0, out=out)


_NUMPY_FLOATS = frozenset({torch.float16, torch.float32, torch.float64})


@dataclass(frozen=True)
class Activation:
    """An activation the tracker can watch, and its "on" rule.

    `is_on(value, out)` writes into the bool tensor `out` which units are on (SPEC: on =
    pre-activation > 0). `value` is the activation's input when `reads_input`, else its
    output. ReLU reads its output: relu(z) > 0 exactly when z > 0, also after an in-place
    call overwrote z. GELU and SiLU read their input, seen before the call: z * Phi(z)
    and z * sigmoid(z) round to 0 for tiny positive z (subnormal float32, and much
    sooner in bf16), so their output is not exactly the sign of z.
    """

    name: str
    modules: tuple[type[nn.Module], ...]
    functions: frozenset
    is_on: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _positive
    reads_input: bool = False


ACTIVATIONS: Registry[Activation] = Registry(
    "activation",
    {
        "relu": Activation(
            "relu",
            (nn.ReLU,),
            frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}),
        ),
        "gelu": Activation("gelu", (nn.GELU,), frozenset({F.gelu}), reads_input=True),
        "silu": Activation("silu", (nn.SiLU,), frozenset({F.silu}), reads_input=True),
    },
)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose forward actually runs: through `torch.compile` and (Distributed)DataParallel."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


SiteFilter = str | Iterable[str] | Callable[[str], bool] | None


def select_sites(names: list[str], which: SiteFilter) -> list[str]:
    """The names (in their order) that `which` picks: None (all), a name or glob, a list of them, or a predicate."""
    if which is None:
        return list(names)
    if callable(which):
        chosen = [n for n in names if which(n)]
        described = "the predicate"
    else:
        patterns = [which] if isinstance(which, str) else list(which)
        chosen = [n for n in names if any(n == p or fnmatch.fnmatchcase(n, p) for p in patterns)]
        described = f"{patterns!r}"
    if not chosen:
        raise UsageError(
            f"the site filter {described} matches none of the model's {len(names)} activation sites: "
            f"{names}. Pass names or glob patterns from that list (e.g. sites='*.relu*'), or sites=None for all."
        )
    return chosen


class SiteCall(NamedTuple):  # a tuple: one is made per site per probe
    """One activation call seen during a forward: its base name and call index."""

    base: str
    index: int
    module: nn.Module | None  # the activation module, for module sites


class _ModuleStack:
    """Tracks which module's forward is running, with hooks on every module."""

    def __init__(self) -> None:
        self.stack: list[nn.Module] = []

    def push(self, module, args):
        self.stack.append(module)

    def pop(self, module, args, output):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    @property
    def top(self) -> nn.Module | None:
        return self.stack[-1] if self.stack else None


class _FunctionalActivations(TorchFunctionMode):
    """Sees every activation function call, whatever called it: its output, or with
    `reads_input` its input before the call (which an in-place call would overwrite)."""

    def __init__(
        self, functions: frozenset, on_call: Callable[[object, torch.Tensor], None], reads_input: bool = False
    ):
        super().__init__()
        self.functions = functions
        self.on_call = on_call
        self.reads_input = reads_input

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.reads_input and func in self.functions:
            self.on_call(func, args[0] if args else kwargs["input"])
            return func(*args, **kwargs)
        output = func(*args, **kwargs)
        if func in self.functions:
            self.on_call(func, output)
        return output


def _set_fastpath(enabled: bool) -> bool:
    """Switch PyTorch's fused Transformer fast path; returns the previous setting."""
    # In eval mode without gradients, nn.TransformerEncoderLayer may run one fused
    # kernel that never calls its activation: that site would be silently lost.
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        return enabled
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(enabled)
    return was


class capture:
    """Within this context, every activation call in the modules of `module_names` (the whole
    model, as `named_modules()` lists it) is passed to `on_site(call, value)`: its output, or
    its input for an activation whose rule `reads_input`.

    With `site_modules`, only those activation modules are watched, their forward wrapped
    for the probe (cheap: no per-op dispatch, no hooks). Without, a TorchFunctionMode sees
    every functional call as well, and a module stack names it after the module it happens in. Inside, every module is in
    eval mode and gradients are off; `__exit__` undoes all of it, also after an
    exception. A plain class rather than a generator: this runs on every probe.
    """

    def __init__(
        self,
        activation: Activation,
        module_names: dict[nn.Module, str],  # every module of the model, with its dotted path
        on_site: Callable[[SiteCall, torch.Tensor], None],
        site_modules: list[nn.Module] | None = None,
    ) -> None:
        self.activation, self.module_names = activation, module_names
        self.on_site, self.site_modules = on_site, site_modules

    def _report(self, base: str, module: nn.Module | None, output: torch.Tensor) -> None:
        index = self.calls.get(base, 0)
        self.calls[base] = index + 1
        self.on_site(SiteCall(base, index, module), output)

    def _on_function(self, func, output) -> None:
        inner = self.stack.top
        path = self.module_names.get(inner, type(inner).__name__) if inner is not None else ""
        name = self.activation.name
        if isinstance(inner, self.activation.modules):
            self._report(path or name, inner, output)
        else:
            self._report(f"{path}.{name}()" if path else f"{name}()", None, output)

    def __enter__(self) -> capture:
        self.calls: dict[str, int] = {}
        self.handles = []
        self.mode = None
        # The flags are set directly, as nn.Module.train() sets them, but without its
        # recursion and __setattr__, which cost more than the rest of the bookkeeping.
        self.training = [(m.__dict__, m.training) for m in self.module_names]
        for attributes, _ in self.training:
            attributes["training"] = False
        self.grad_was = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        self.fastpath_was = _set_fastpath(False)
        self.wrapped = []
        try:
            if self.site_modules is not None:
                # Each site module's forward is wrapped for the probe (an instance attribute,
                # as accelerate's hooks do), not hooked: registering and removing hooks and
                # the hooked call path cost a fifth of the tracker's extra time on the MLP.
                for module in self.site_modules:
                    self._wrap(module, self.module_names[module] or self.activation.name)
            else:
                self.stack = _ModuleStack()
                for module in self.module_names:
                    self.handles.append(module.register_forward_pre_hook(self.stack.push))
                    self.handles.append(module.register_forward_hook(self.stack.pop, always_call=True))
                self.mode = _FunctionalActivations(
                    self.activation.functions, self._on_function, self.activation.reads_input
                )
                self.mode.__enter__()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wrap(self, module: nn.Module, name: str) -> None:
        own = module.__dict__.get("forward")  # a forward set on the instance (accelerate's): kept
        inner = module.forward
        report = self._report
        if self.activation.reads_input:

            def forward(*args, **kwargs):
                report(name, module, args[0])
                return inner(*args, **kwargs)

        else:

            def forward(*args, **kwargs):
                out = inner(*args, **kwargs)
                report(name, module, out)
                return out

        module.__dict__["forward"] = forward
        self.wrapped.append((module, own))

    def __exit__(self, *exc) -> None:
        try:
            if self.mode is not None:
                self.mode.__exit__(None, None, None)
        finally:
            for module, own in self.wrapped:
                if own is None:
                    del module.__dict__["forward"]
                else:
                    module.__dict__["forward"] = own
            for handle in self.handles:
                handle.remove()
            _set_fastpath(self.fastpath_was)
            torch.set_grad_enabled(self.grad_was)
            for attributes, training in self.training:
                attributes["training"] = training


def site_name(base: str, index: int, calls_per_forward: int) -> str:
    """Final name: the base name, with `#index` when the site's code runs more than once per forward."""
    return f"{base}#{index}" if calls_per_forward > 1 else base
