"""What a tracker measures: named quantities, each a small class (Cockpit's `quantities/`).

A quantity has a per-step part that only queues device work (no host sync) and a
read-back part that turns N queued measurements into named columns:

    class MyQuantity(Quantity):
        def columns(self): ...            # names of the records it writes
        def measure(self, step): ...      # -> list of device tensors, queued as they are
        def read(self, queued, n): ...    # -> {column: float64 array of length n}

`Tracker(model, probe, quantities=[UpdateNorm()])` adds one; nothing else changes.
What every quantity of a step sees is a `Step`: the packed pattern before and after,
and the parameters' change since the last measurement (computed once, shared).
"""

from __future__ import annotations

import numpy as np
import torch

from regimes import bits
from regimes.errors import UsageError

__all__ = [
    "Quantity",
    "Step",
    "WeightChange",
    "PatternChange",
    "UpdateNorm",
    "FlipsSinceStart",
    "WeightSnapshot",
    "ShardedSums",
]


class WeightSnapshot:
    """A float32 copy of the trainable parameters at the last measurement (float32 even
    for bf16/fp16 models, so differences are not rounded away).

    Sharded parameters (FSDP2's DTensors) are copied shard by shard: each process keeps
    its own piece, `sizes` are the whole tensors', and `reduce` sums per-tensor values
    over the shards (one all-reduce, called at read-back, never per step).
    """

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]]):
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.sizes = np.array([p.numel() for p in self.params], dtype=np.float64)  # a DTensor's numel is the whole's
        self.sharding = ShardedSums.of(self.params)
        self.previous = [_local(p).detach().to(torch.float32, copy=True) for p in self.params]

    def current(self) -> list[torch.Tensor]:
        local = [_local(p).detach() for p in self.params]
        return [t if t.dtype == torch.float32 else t.float() for t in local]

    def reduce(self, per_tensor: torch.Tensor) -> torch.Tensor:
        """Per-tensor sums `[..., P]` of this process's shards -> the whole tensors' sums."""
        return per_tensor if self.sharding is None else self.sharding.reduce(per_tensor)

    def state_dict(self) -> dict:
        return {"parameter_names": list(self.names), "previous_weights": [w.cpu() for w in self.previous]}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.check_state(state)
        self.previous = [w.to(device, torch.float32) for w in state["previous_weights"]]

    def check_state(self, state: dict) -> None:
        """Raise ValueError, saying what differs, when `state` is for other parameters."""
        saved = [tuple(w.shape) for w in state["previous_weights"]]
        mine = [tuple(w.shape) for w in self.previous]
        if state["parameter_names"] != self.names or saved != mine:
            differ = next(
                (f"{n}: {a} saved, {b} here" for n, a, b in zip(self.names, saved, mine) if a != b),
                f"{len(saved)} parameter tensors saved, {len(mine)} here",
            )
            sharded = " (under sharding, each process loads the state its own process saved)" if self.sharding else ""
            raise UsageError(
                f"the saved tracker state is for other parameters than this model's ({differ}): build the "
                f"tracker on the same model as the run that saved it{sharded}"
            )


def _local(p: torch.Tensor) -> torch.Tensor:
    """This process's piece of a parameter: the local shard of a DTensor, else the tensor."""
    to_local = getattr(p, "to_local", None)  # torch.distributed.tensor.DTensor
    return to_local() if to_local is not None else p


class ShardedSums:
    """Sums per-tensor values over the processes that hold the shards of sharded parameters.

    Parameters that every process holds whole (replicated, or plain tensors beside
    sharded ones) count once: only the group's first process contributes them.
    """

    def __init__(self, group, sharded: list[bool]):
        import torch.distributed as dist

        self.group = group
        first = dist.get_rank(group) == 0
        self.weight = torch.tensor([1.0 if s or first else 0.0 for s in sharded], dtype=torch.float64)

    @classmethod
    def of(cls, params: list[torch.Tensor]) -> ShardedSums | None:
        """The shard group of `params` (DTensors sharded along one mesh dimension), or None when none is sharded."""
        groups, sharded = [], []
        for p in params:
            placements = getattr(p, "placements", None)
            dims = [d for d, placement in enumerate(placements or ()) if placement.is_shard()]
            sharded.append(bool(dims))
            if len(dims) > 1:
                raise NotImplementedError(
                    f"a parameter sharded along {len(dims)} mesh dimensions ({placements}): the weight change "
                    "sums shards over one dimension (FSDP2's fully_shard, or HSDP's shard dimension)"
                )
            if dims:
                groups.append(p.device_mesh.get_group(dims[0]))
        if not groups:
            return None
        if any(g is not groups[0] for g in groups):
            raise NotImplementedError(
                "parameters sharded over different process groups: the weight change sums over one"
            )
        return cls(groups[0], sharded)

    def reduce(self, per_tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        weighted = per_tensor.to(torch.float64) * self.weight.to(per_tensor.device)
        dist.all_reduce(weighted, group=self.group)
        return weighted


class Step:
    """One measurement as the quantities see it. `weight_delta` (previous - current, per
    trainable tensor, float32) is computed on first use and shared by every quantity."""

    def __init__(self, iteration: int, previous_pattern, pattern, weights: WeightSnapshot, layout):
        self.iteration, self.previous_pattern, self.pattern = iteration, previous_pattern, pattern
        self.weights, self.layout = weights, layout
        self._current: list[torch.Tensor] | None = None

    @property
    def weight_delta(self) -> list[torch.Tensor]:
        if self._current is None:
            self._current = self.weights.current()
            torch._foreach_sub_(self.weights.previous, self._current)  # previous := previous - current
        return self.weights.previous

    def commit(self) -> None:
        """The snapshot moves on to the current weights (after every quantity has measured)."""
        if self._current is not None:
            torch._foreach_copy_(self.weights.previous, self._current)

    def rollback(self) -> None:
        """A failed measurement leaves the snapshot as it was (up to float rounding of the add-back)."""
        if self._current is not None:
            torch._foreach_add_(self.weights.previous, self._current)


class Quantity:
    """Base class: a named measurement. `bind(tracker)` is called once, at construction.

    Its `name` keys its state in the tracker's `state_dict()`: by default its first
    column, which no other quantity of the tracker may write (the tracker refuses a
    quantity whose columns collide with another's), so names are unique.
    """

    def bind(self, tracker) -> None:
        self.tracker = tracker

    @property
    def name(self) -> str:
        if (given := self.__dict__.get("_name")) is not None:
            return given
        columns = self.columns()
        return columns[0] if columns else type(self).__name__

    @name.setter
    def name(self, value: str) -> None:  # a subclass may name itself (self.name = ... in __init__)
        self._name = value

    def columns(self) -> list[str]:
        raise NotImplementedError

    def measure(self, step: Step) -> list[torch.Tensor]:
        """Queue this step's raw values on the device; never read them back here."""
        raise NotImplementedError

    def read(self, queued: list[torch.Tensor], n: int) -> dict[str, np.ndarray]:
        """Columns (float64, length n) from the raw values of n measurements, in step order."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What this quantity needs to go on measuring after a restart (never its history)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class WeightChange(Quantity):
    """dw (SPEC eq. 2): mean |w_i - w_{i-1}| over every trainable parameter; dw_layerwise:
    the unweighted mean over tensors of each tensor's mean (the paper's "in practice");
    dw:<name>: each tensor's mean."""

    def columns(self) -> list[str]:
        return ["dw", "dw_layerwise", *(f"dw:{name}" for name in self.tracker.parameter_names)]

    def measure(self, step: Step) -> list[torch.Tensor]:
        return list(torch._foreach_norm(step.weight_delta, 1))  # sum |dw| per tensor

    def read(self, queued, n):
        weights = self.tracker.weights
        sizes = weights.sizes
        abs_sums = weights.reduce(torch.stack(queued).view(n, -1)).cpu().double().numpy()  # [N, P], whole tensors
        per_tensor = abs_sums / sizes
        out = {"dw": abs_sums.sum(1) / sizes.sum(), "dw_layerwise": per_tensor.mean(1)}
        out.update({f"dw:{name}": per_tensor[:, j] for j, name in enumerate(self.tracker.parameter_names)})
        return out


class UpdateNorm(Quantity):
    """update_norm: the L2 norm ||w_i - w_{i-1}||_2 over every trainable parameter (the
    step size that the parameter-space stability radius is compared with)."""

    def columns(self) -> list[str]:
        return ["update_norm"]

    def measure(self, step: Step) -> list[torch.Tensor]:
        return [torch.stack(torch._foreach_norm(step.weight_delta, 2))]  # [P], each tensor's (shard's) norm

    def read(self, queued, n):
        squares = torch.stack(queued).view(n, -1).double().square()
        return {"update_norm": self.tracker.weights.reduce(squares).sum(1).sqrt().cpu().numpy()}


class PatternChange(Quantity):
    """da (SPEC eq. 3): the fraction of the probe's units that flipped since the last
    measurement, per site (da:<site>), averaged over sites (da) and pooled over units
    (da_units: every flip over every unit, each unit counted once)."""

    # On the CPU, flips are counted at read-back while the patterns queued until then (one
    # per measurement, `sync_every` of them) fit in this many bytes (see bind).
    DEFERRED_BYTES = 32 << 20

    def bind(self, tracker) -> None:
        super().bind(tracker)
        # On the CPU a step keeps its two packed patterns (references, no copy) and the flips
        # of every step between two read-backs are counted then, in one pass: counted step by
        # step, the NumPy calls cost more than the counting (45 us of the MLP's 3 ms step).
        # Larger patterns (and GPUs, where counting queues kernels) count as they come.
        self.deferred = (
            tracker.last_pattern.is_cpu
            and bits.numpy_ok(tracker.last_pattern)
            and tracker.layout.stored_bytes * (tracker.sync_every + 1) <= self.DEFERRED_BYTES
        )

    def columns(self) -> list[str]:
        return ["da", "da_units", *(f"da:{name}" for name in self.tracker.sites)]

    def measure(self, step: Step) -> list[torch.Tensor]:
        if self.deferred:
            return [step.previous_pattern, step.pattern]
        # Cumulative counts up to each site's end; per-site differences at read-back.
        return [step.layout.cumulative_flips(step.previous_pattern, step.pattern)]

    def read(self, queued, n):
        if self.deferred:
            pairs = torch.stack(queued).numpy().reshape(n, 2, -1)
            queued = torch.from_numpy(self.tracker.layout.cumulative_flips_rows(pairs[:, 0], pairs[:, 1]))
        return _flipped_fractions("da", queued, self.tracker, pooled=True)


class FlipsSinceStart(Quantity):
    """da0 (and da0:<site>): the fraction of units whose state differs from the pattern
    at the quantity's start (iteration 0, or when it was added to a resumed tracker)."""

    def bind(self, tracker) -> None:
        super().bind(tracker)
        self.start_pattern = tracker.last_pattern.clone()

    def columns(self) -> list[str]:
        return ["da0", *(f"da0:{name}" for name in self.tracker.sites)]

    def measure(self, step: Step) -> list[torch.Tensor]:
        return [step.layout.cumulative_flips(self.start_pattern, step.pattern)]

    def read(self, queued, n):
        return _flipped_fractions("da0", queued, self.tracker)

    def state_dict(self) -> dict:
        return {"start_pattern": self.start_pattern.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.start_pattern = state["start_pattern"].to(self.tracker.device)


def _flipped_fractions(prefix: str, queued: list[torch.Tensor], tracker, pooled: bool = False) -> dict[str, np.ndarray]:
    """`prefix` (mean over sites) and `prefix:<site>` columns from queued cumulative flip counts;
    `pooled`: `prefix_units` too, all flips over all units (from the counts, not the fractions)."""
    layout = tracker.layout
    cumulative = (queued if isinstance(queued, torch.Tensor) else torch.stack(queued)).cpu().double().numpy()  # [N, L]
    per_site = layout.flips_per_site(cumulative) / layout.units
    out = {prefix: per_site.mean(1)}
    if pooled:
        out[f"{prefix}_units"] = cumulative[:, -1] / layout.units.sum()
    out.update({f"{prefix}:{name}": per_site[:, j] for j, name in enumerate(tracker.sites)})
    return out
