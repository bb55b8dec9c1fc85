"""Frozen-regime training (SPEC section 6): once the activation pattern has settled, keep
it. From the freeze on, every tracked activation site applies the gate that a frozen
copy of the network, taken at the freeze, computes for the same input:

    h = z * 1{z_frozen > 0}

and only the values (the trainable network's weights) keep training: the gated form
of deep gated networks and of the authors' decoupled training (GLAI).

    gates = FrozenGates(model, sites=tracker.sites)   # the copy: eval mode, no gradients
    gates.install()                                    # every forward of `model` is gated now
    with gates.suspended():
        model(x)                                       # the value network's own ReLU forward
    gates.remove()

    freeze_regime(tracker)  # the same on a Tracker's model; its pattern is the frozen one after

How the gate reaches a site. A forward pre-hook on the model runs the frozen copy
(`sites.capture`: eval mode, no gradients) on the same inputs and keeps each tracked
site's gate, keyed like the tracker's sites (base name, call index). During the model's
own forward each tracked call returns `z * gate` (in place when the call was); the others
run unchanged. When every tracked site is an activation module (every zoo model), those
modules' forwards are overridden, which costs nothing elsewhere. Otherwise a
TorchFunctionMode sees every activation call (`nn.ReLU.forward` calls `F.relu`, so
module and functional sites alike, in-place forms included) and names it from a module
stack exactly as `sites.capture` does. Do not deep-copy a gated model (its hooks and
forwards would come along): `remove()` first.

Recomputed, not cached. The frozen copy runs once per forward (no gradients, eval
mode: about a third of a training step's arithmetic) rather than its gates being
cached per training sample as packed bits, although with fixed data (no augmentation)
and an eval-mode copy the gates are a fixed function of the sample. A cache needs the
sample's identity inside the model's forward, which sees tensors, not dataset indices:
it would tie the gate to one training loop (and not the Lightning or Trainer adapters);
the validation split and the probe would need caches of their own; and its size is
units x samples (LeNet5 on Fashion-MNIST: 6,508 bits a sample, 49 MB; ResNet34 on
CIFAR-100: about 0.9 M bits a sample, 5.6 GB). Recomputing works on any input, any
model, any loop. What it costs is measured in benchmarks/freeze.py (docs/freeze.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from regimes.errors import UsageError
from regimes.quantities import Quantity, Step
from regimes.sites import ACTIVATIONS, capture, unwrap_model
from regimes.sites import _ModuleStack as ModuleStack

__all__ = ["FrozenGates", "freeze_regime", "ValuePattern"]

# Calls that overwrite their input; F.relu and F.silu say so with `inplace=True`.
_IN_PLACE = frozenset({F.relu_, torch.relu_, torch.Tensor.relu_})


class FrozenGates:
    """The gates of a frozen copy of `model`, applied at its tracked activation sites.

    Args:
        model: the model to gate (through `torch.compile` / DDP wrappers: the module inside).
        sites: the site names to gate, as `Tracker.sites` names them (None: every site).
        activation: which activation's sites ("relu", the default; "gelu" and "silu" sites
            become gated linear units too).

    The copy is taken at construction (`frozen`: eval mode, `requires_grad=False`); it
    never changes. `install()` gates every forward of the model until `remove()`;
    `suspended()` lets forwards through ungated. Also a context manager (install/remove).
    """

    def __init__(self, model: nn.Module, *, sites: Iterable[str] | None = None, activation: str = "relu") -> None:
        self.module = unwrap_model(model)
        self.activation = ACTIVATIONS.get(activation)
        self.sites = None if sites is None else frozenset(sites)
        self.frozen = copy.deepcopy(self.module).eval().requires_grad_(False)
        self._frozen_names = {m: name for name, m in self.frozen.named_modules()}
        self._live_names = {m: name for name, m in self.module.named_modules()}
        self._frozen_site_modules: list[nn.Module] | None = None  # known after the first forward
        self._handles: list = []
        self._overridden: list[nn.Module] = []  # activation modules whose forward is gated
        self._stack: ModuleStack | None = None  # names functional sites (when not every site is a module)
        self._mode: _GatingMode | None = None
        self._suspended = 0
        self._current: _ForwardGates | None = None  # the gates of the forward running now

    # ------------------------------------------------------------------ the gates

    def tracked(self, base: str, index: int) -> bool:
        """Whether the `index`-th call of site `base` in a forward is one of `sites`."""
        if self.sites is None:
            return True
        return f"{base}#{index}" in self.sites or (index == 0 and base in self.sites)

    @torch.no_grad()
    def gates(self, *args, **kwargs) -> dict[tuple[str, int], torch.Tensor]:
        """The frozen copy's gates `1{z_frozen > 0}` (bool, the site's shape) for these inputs."""
        found: dict[tuple[str, int], torch.Tensor] = {}
        modules = []

        def on_site(call, value):
            if self.tracked(call.base, call.index):
                found[(call.base, call.index)] = self.activation.is_on(value, torch.empty_like(value, dtype=torch.bool))
                modules.append(call.module)

        with capture(self.activation, self._frozen_names, on_site, self._frozen_site_modules):
            self.frozen(*args, **kwargs)
        if self._frozen_site_modules is None and modules and all(m is not None for m in modules):
            self._frozen_site_modules = list(dict.fromkeys(modules))  # module hooks alone from now on
        return found

    # ------------------------------------------------------------------ lifecycle

    def install(self) -> FrozenGates:
        """Gate every forward of the model from now on (until `remove()`).

        A site the model cannot have (no such activation module, nor a module that could call
        the function) is a ValueError naming it, and so is a model with no activation module
        when every site is asked for (a model whose activations are all functional: name its
        sites, as `Tracker.sites` does). A gated forward in which none of the sites ran is a
        ValueError too: gates that gate nothing are never silent."""
        if self._handles or self._overridden:
            return self
        self._check_sites()
        try:
            self._handles.append(self.module.register_forward_pre_hook(self._begin, with_kwargs=True))
            self._handles.append(self.module.register_forward_hook(self._end, always_call=True))
            modules = self._module_sites()
            if modules is not None:  # every site an activation module: override their forwards
                for base, module in modules:
                    module.forward = self._gated_module_forward(module, base)
                    self._overridden.append(module)
            else:  # functional sites too: a TorchFunctionMode per forward, names from a module stack
                self._stack = ModuleStack()
                for module in self._live_names:
                    self._handles.append(module.register_forward_pre_hook(self._stack.push))
                    self._handles.append(module.register_forward_hook(self._stack.pop, always_call=True))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Stop gating: the model is the plain network again."""
        for handle in self._handles:
            handle.remove()
        for module in self._overridden:
            del module.forward  # the class's own forward again
        self._handles, self._overridden, self._stack = [], [], None

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def suspended(self):
        """Within this context the model runs ungated: the value network's own forward."""
        return _Suspended(self)

    def __enter__(self) -> FrozenGates:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------------ the gated forward

    def _check_sites(self) -> None:
        name = self.activation.name
        if self.sites is None:
            if not any(isinstance(m, self.activation.modules) for m in self._live_names):
                raise UsageError(
                    f"FrozenGates: the {type(self.module).__name__} holds no {name} module, so there is nothing to "
                    "gate; if it calls the function, pass its sites (sites=tracker.sites)"
                )
            return
        if not self.sites:
            raise UsageError("FrozenGates: sites is empty, so there is nothing to gate")
        by_name = dict(self.module.named_modules())
        missing = []
        for site in sorted(self.sites):
            base, _, index = site.rpartition("#")
            base = base if base and index.isdigit() else site
            if base.endswith("()"):  # a function called in a module's forward: "block.relu()"
                owner = base[:-2].rpartition(".")[0]
                ok = owner in by_name
            else:
                ok = isinstance(by_name.get(base), self.activation.modules)
            if not ok:
                missing.append(site)
        if missing:
            raise UsageError(
                f"FrozenGates: the {type(self.module).__name__} has no {name} site {', '.join(map(repr, missing[:5]))}"
                f"{f' (and {len(missing) - 5} more)' if len(missing) > 5 else ''}; its sites are named as "
                "Tracker.sites names them"
            )

    def _module_sites(self) -> list[tuple[str, nn.Module]] | None:
        """(base name, module) of every site when each is an activation module's call, else None."""
        if self.sites is None:
            return None
        by_name = dict(self.module.named_modules())
        found = {}
        for site in self.sites:
            base, _, index = site.rpartition("#")
            base = base if base and index.isdigit() else site
            module = by_name.get(base) if base else None
            if not isinstance(module, self.activation.modules):
                return None
            found[base] = module
        return list(found.items())

    def _gated_module_forward(self, module: nn.Module, base: str):
        original = module.forward  # the class's forward, bound
        in_place = getattr(module, "inplace", False)

        def forward(input, *args, **kwargs):
            gate = self._current.take(base) if self._current is not None else None
            if gate is None:
                return original(input, *args, **kwargs)
            return input.mul_(gate) if in_place else input * gate

        return forward

    def _begin(self, module, args, kwargs):
        if self._suspended or self._current is not None:
            return None
        gates = self.gates(*args, **kwargs)
        if not gates:
            raise UsageError(
                f"FrozenGates: no {self.activation.name} site of the {type(self.module).__name__} ran in this forward"
                f"{'' if self.sites is None else ' among ' + ', '.join(sorted(self.sites)[:5])}: nothing would be gated"
            )
        self._current = _ForwardGates(gates)
        if self._stack is not None:
            self._mode = _GatingMode(self, self._current)
            self._mode.__enter__()
        return None

    def _end(self, module, args, output):
        if self._current is None:
            return None
        self._current = None
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        return None


class _Suspended:
    def __init__(self, gates: FrozenGates):
        self.gates = gates

    def __enter__(self):
        self.gates._suspended += 1

    def __exit__(self, *exc):
        self.gates._suspended -= 1


class _ForwardGates:
    """The gates of one forward, handed out per call in call order (`take`)."""

    def __init__(self, gates: dict[tuple[str, int], torch.Tensor]):
        self.gates = gates
        self.calls: dict[str, int] = {}

    def take(self, base: str) -> torch.Tensor | None:
        index = self.calls.get(base, 0)
        self.calls[base] = index + 1
        return self.gates.get((base, index))  # None: not tracked


class _GatingMode(TorchFunctionMode):
    """During one forward of the live model: each tracked activation call returns `z * gate`."""

    def __init__(self, owner: FrozenGates, gates: _ForwardGates):
        super().__init__()
        self.owner, self.gates = owner, gates

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        if func not in owner.activation.functions:
            return func(*args, **kwargs)
        inner = owner._stack.top
        path = owner._live_names.get(inner, type(inner).__name__) if inner is not None else ""
        name = owner.activation.name
        if isinstance(inner, owner.activation.modules):
            base = path or name
        else:
            base = f"{path}.{name}()" if path else f"{name}()"
        gate = self.gates.take(base)
        if gate is None:  # not tracked
            return func(*args, **kwargs)
        z = args[0] if args else kwargs["input"]
        if func in _IN_PLACE or kwargs.get("inplace", False) or (len(args) > 1 and args[1] is True):
            return z.mul_(gate)
        return z * gate


def freeze_regime(tracker, frozen_state: dict | None = None) -> FrozenGates:
    """Freeze the regime of the model a `Tracker` watches, now.

    Gates every tracked site of the model with the pattern of a frozen copy taken now,
    and points the tracker's probe at that copy. The gated model's pattern on the probe
    is the copy's, which never changes: it is read once, now, and is the tracker's
    pattern from then on, so `da` is 0 from the next step on. A `ValuePattern` quantity
    of the tracker goes on measuring the trainable network's own pattern. Returns the
    installed `FrozenGates`. `frozen_state`: the state_dict of a copy taken earlier (a
    resumed run), loaded into the copy in place of the model's weights now.
    """
    live = tracker.probe
    gates = FrozenGates(tracker.module, sites=tracker.sites, activation=live.activation.name)
    if frozen_state is not None:
        gates.frozen.load_state_dict(frozen_state)
    gates.install()
    tracker.probe = _ConstantProbe(_probe_on(live, gates.frozen))
    for quantity in tracker.quantities:
        if isinstance(quantity, ValuePattern):
            quantity.freeze(gates, live)
    return gates


def _probe_on(probe, module: nn.Module):
    """The same probe (inputs, sites, layout, masks) run on `module`, a copy of its model."""
    moved = copy.copy(probe)
    moved.module = module
    moved.module_names = {m: name for name, m in module.named_modules()}
    if probe.site_modules is not None:
        by_name = dict(module.named_modules())
        moved.site_modules = [by_name[probe.module_names[m]] for m in probe.site_modules]
    return moved


class _ConstantProbe:
    """A probe on the frozen copy: its pattern is read once (the copy never changes)."""

    def __init__(self, probe):
        self.probe = probe
        self.frozen_pattern = probe.pattern()

    def pattern(self, iteration: int = 0) -> torch.Tensor:
        return self.frozen_pattern

    def __getattr__(self, name):  # layout, size, device, activation, ... of the probe
        return getattr(self.probe, name)


class ValuePattern(Quantity):
    """The trainable network's own pattern under a frozen regime (`freeze_regime`).

    da_value: the fraction of probe units whose sign flipped since the last measurement,
        in the value network run as a plain network (gates off): how it would switch if
        unfrozen. Before the freeze it is `da`.
    drift_value: the fraction of probe units whose own sign differs from the frozen gate:
        how far the trainable network has drifted from the frozen regime (NaN before the
        freeze). Both are unweighted means over the sites, like `da`.
    """

    def bind(self, tracker) -> None:
        super().bind(tracker)
        self.gates: FrozenGates | None = None
        self.live_probe = None
        self.last = tracker.last_pattern

    def freeze(self, gates: FrozenGates, live_probe) -> None:
        self.gates, self.live_probe = gates, live_probe

    def columns(self) -> list[str]:
        return ["da_value", "drift_value"]

    def measure(self, step: Step) -> list[torch.Tensor]:
        layout = step.layout
        if self.gates is None:
            own = step.pattern
            drift = torch.full_like(layout.cumulative_flips(step.pattern, step.pattern), -1)
        else:
            with self.gates.suspended():
                own = self.live_probe.pattern(step.iteration)
            drift = layout.cumulative_flips(step.pattern, own)
        flips = layout.cumulative_flips(self.last, own)
        self.last = own
        return [torch.stack([flips, drift])]

    def read(self, queued, n):
        layout = self.tracker.layout
        counts = torch.stack(queued).cpu().double().numpy()  # [N, 2, L] cumulative counts
        flips = layout.flips_per_site(counts[:, 0]) / layout.units
        drift = layout.flips_per_site(counts[:, 1]) / layout.units
        drift[counts[:, 1, 0] < 0] = math.nan  # before the freeze
        return {"da_value": flips.mean(1), "drift_value": drift.mean(1)}

    def state_dict(self) -> dict:
        return {"last": self.last.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if "last" in state:
            self.last = state["last"].to(self.tracker.device)
