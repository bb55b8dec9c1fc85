"""`Tracker`: rides along a training loop and records how much the weights and the
activation pattern change at every optimizer step (SPEC section 1).

    tracker = regimes.Tracker(model, probe)   # iteration 0: weights and pattern snapshot
    for x, y in loader:
        ...; optimizer.step(); tracker.step()  # dw_i, da_i and da_i per site
    tracker.delta_w, tracker.delta_a, tracker.delta_a_layers, tracker.sites

What is measured is a list of named quantities (regimes.quantities); the per-step path
only queues their device work: results stay on the model's device and are read back
every `sync_every` steps or when a record is read (`tracker.records(since=...)`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from regimes.errors import UsageError
from regimes.history import History
from regimes.probe import NoActivationSitesError, Probe, ProbeError
from regimes.quantities import PatternChange, Quantity, Step, WeightChange, WeightSnapshot
from regimes.sites import ACTIVATIONS, SiteFilter, unwrap_model

__all__ = ["Tracker", "ProbeError", "NoActivationSitesError", "QuantityCollisionError", "TrackerStateMismatchError"]


class QuantityCollisionError(UsageError):
    """Two quantities of one tracker write the same column (or share a name)."""


class TrackerStateMismatchError(UsageError):
    """A saved tracker state belongs to another probe or another model."""


class Tracker:
    """Measures weight change `dw` and activation-pattern change `da` per optimizer step.

    Args:
        model: any `nn.Module` (also wrapped by `torch.compile` or DDP: the underlying
            module is probed). With parameters sharded by FSDP2 (`fully_shard`), build a
            tracker on every process: each keeps its shards, the probe's forward gathers, and
            the weight change is summed over the shards in one all-reduce per read-back, so
            every process must read back (`step`, `records`, `delta_w`, ...) at the same points.
        probe: the fixed probe inputs: a Tensor (`model(probe)`), a tuple
            (`model(*probe)`) or a dict (`model(**probe)`). Moved to the model's device;
            floating tensors cast to the model's dtype.
        sites: which activation sites to track: None (all), a name or glob pattern, a
            list of them, or a predicate on the name. See `Tracker.sites`.
        every: measure every `every` optimizer steps (changes are then over `every` steps).
        activation: what counts as an activation: "relu" (default), "gelu" or "silu".
            A unit is on when the activation's input (the pre-activation) is > 0.
        attention_mask: [B, T] mask (nonzero = token) of the probe's positions; padded
            positions are not units. Defaults to the probe dict's `attention_mask`. A probe
            dict's `decoder_attention_mask` masks the sites whose [B, T] is the decoder's.
        sync_every: read results back to the host every this many measurements.
        autocast: run the probe under `torch.autocast` with this dtype (e.g.
            torch.bfloat16, as the training's forward runs); None: as stored.
        quantities: more `regimes.quantities.Quantity` objects to measure at every step,
            beside the weight change and the pattern change.
    """

    def __init__(
        self,
        model: nn.Module,
        probe,
        *,
        sites: SiteFilter = None,
        every: int = 1,
        activation: str = "relu",
        attention_mask: torch.Tensor | None = None,
        sync_every: int = 256,
        autocast: torch.dtype | None = None,
        quantities: list[Quantity] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name, value in (("every", every), ("sync_every", sync_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a whole number >= 1, got {value!r}")
        rule = ACTIVATIONS.get(activation)  # an unknown name: one message with the known ones
        self.model = model
        self.module = unwrap_model(model)
        self.every = every
        self.sync_every = sync_every
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        if not named:
            raise UsageError(
                "the model has no trainable parameter (requires_grad=True): there is no weight change to measure"
            )
        self.probe = Probe(self.module, probe, rule, sites=sites, attention_mask=attention_mask, autocast=autocast)
        self.weights = WeightSnapshot(named)
        self.iteration = 0
        self.last_pattern = self.probe.pattern(self.iteration)  # iteration 0
        self.quantities: list[Quantity] = [WeightChange(), PatternChange(), *quantities]
        self._measure_order = [1, 0, *range(2, len(self.quantities))]
        for quantity in self.quantities:
            quantity.bind(self)
        self.history = History(_unique_columns(self.quantities))
        self.quantity_names = _unique_names(self.quantities)
        self._queued: list[list[torch.Tensor]] = [[] for _ in self.quantities]
        self._queued_iterations: list[int] = []
        self._closed = False
        self._warned_nonfinite = False

    # ------------------------------------------------------------------ what it watches

    @property
    def device(self) -> torch.device:
        return self.probe.device

    @property
    def layout(self):
        """Where each site's bits lie (`bits.PatternLayout`: sites, shapes, units, stored bytes)."""
        return self.probe.layout

    @property
    def sites(self) -> list[str]:
        """The tracked activation sites, in forward order."""
        return [s.name for s in self.probe.layout.sites]

    @property
    def parameter_names(self) -> list[str]:
        return self.weights.names

    @property
    def probe_size(self) -> int:
        return self.probe.size

    # ------------------------------------------------------------------ steps

    def step(self) -> None:
        """Record the change since the last measurement. Call right after `optimizer.step()`.

        All or nothing: if the probe's forward raises (or is interrupted), nothing of this
        step is recorded and the next step measures the change since the last good one.
        """
        if self._closed:
            raise RuntimeError("Tracker.step() called after close(): build a new Tracker to keep measuring")
        if (self.iteration + 1) % self.every:
            self.iteration += 1
            return
        pattern = self.probe.pattern(self.iteration + 1)  # the part that can fail
        step = Step(self.iteration + 1, self.last_pattern, pattern, self.weights, self.layout)
        measured: list = [None] * len(self.quantities)
        try:
            # The pattern change first: its flip count then runs right after the probe packed
            # the pattern, while both are in cache (after the weight diff's pass over every
            # parameter they are not; on the MLP that was a third of the tracker's extra cost).
            for k in self._measure_order:
                measured[k] = self.quantities[k].measure(step)
        except BaseException:
            step.rollback()
            raise
        step.commit()
        for queue, values in zip(self._queued, measured):
            queue.extend(values)
        self.last_pattern = pattern
        self.iteration += 1
        self._queued_iterations.append(self.iteration)
        if len(self._queued_iterations) >= self.sync_every:
            self._read_back()

    def _read_back(self) -> None:
        n = len(self._queued_iterations)
        if not n:
            return
        columns: dict[str, np.ndarray] = {}
        for quantity, queued in zip(self.quantities, self._queued):
            columns.update(quantity.read(queued, n))
        iterations = np.array(self._queued_iterations, dtype=np.int64)
        self._queued = [[] for _ in self.quantities]
        self._queued_iterations = []
        self.history.append(iterations, columns)
        if not self._warned_nonfinite and not np.isfinite(columns["dw"]).all():
            self._warned_nonfinite = True
            first = iterations[~np.isfinite(columns["dw"])][0]
            warnings.warn(
                f"non-finite parameters at iteration {first}: delta_w is NaN/inf from there on. Training "
                "has diverged; a lower learning rate or gradient clipping usually helps.",
                stacklevel=3,
            )

    @property
    def pending(self) -> int:
        """Measurements queued on the device, not yet read back."""
        return len(self._queued_iterations)

    # ------------------------------------------------------------------ results

    def records(self, since: int = 0, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The records after iteration `since` (all by default), by name: `iteration` and
        every quantity's columns (dw, dw_layerwise, dw:<param>, da, da:<site>, ...)."""
        self._read_back()
        return self.history.read(since, names)

    def _column(self, name: str) -> np.ndarray:
        self._read_back()
        return self.history.column(name).copy()

    @property
    def delta_w(self) -> np.ndarray:
        """Mean absolute weight change per measured step, over all trainable parameters: (T,)."""
        return self._column("dw")

    @property
    def delta_w_layerwise(self) -> np.ndarray:
        """The paper's "in practice" weight change: the mean over tensors of each tensor's mean |dw|: (T,)."""
        return self._column("dw_layerwise")

    @property
    def delta_a(self) -> np.ndarray:
        """Fraction of probe units whose on/off state flipped, averaged over sites: (T,)."""
        return self._column("da")

    @property
    def delta_a_units(self) -> np.ndarray:
        """Fraction of all probe units that flipped, pooled over sites (each unit counted once): (T,)."""
        return self._column("da_units")

    @property
    def delta_a_layers(self) -> np.ndarray:
        """The flipped fraction per site, columns in the order of `sites`: (T, L)."""
        self._read_back()
        return np.column_stack([self.history.column(f"da:{s}") for s in self.sites]).reshape(len(self.history), -1)

    @property
    def delta_w_tensors(self) -> np.ndarray:
        """Mean absolute weight change per parameter tensor, columns as `parameter_names`: (T, P)."""
        self._read_back()
        return np.column_stack([self.history.column(f"dw:{n}") for n in self.parameter_names]).reshape(
            len(self.history), -1
        )

    @property
    def iterations(self) -> np.ndarray:
        """The optimizer step each record belongs to: (T,)."""
        self._read_back()
        return self.history.iterations.copy()

    def pattern(self, site: str) -> torch.Tensor:
        """The on/off pattern of `site` at the last measurement, as a bool tensor of the site's shape."""
        return self.layout.site_pattern(self.last_pattern, site)

    # ------------------------------------------------------------------ lifecycle

    def state_dict(self) -> dict:
        """What is needed to go on measuring after a restart: the last weights and pattern
        and each quantity's own state (by the quantity's name), with what identifies the
        probe and the sites, so that a state is never loaded into a tracker on another
        probe. Not the records (they are the caller's to keep: the runner's are on disk),
        so a checkpoint does not grow with the run."""
        self._read_back()
        return {
            "iteration": self.iteration,
            "sites": list(self.sites),
            "site_shapes": [list(s.shape) for s in self.layout.sites],
            "probe": self.probe.fingerprint(),
            **self.weights.state_dict(),
            "previous_pattern": self.last_pattern.cpu(),
            "quantity_states": {name: q.state_dict() for name, q in zip(self.quantity_names, self.quantities)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` of a tracker on the same model, probe and sites.
        Records go on from the saved iteration; those before it are not restored.

        Raises `TrackerStateMismatchError` (a ValueError) saying what differs when the state
        was saved with another probe (size, shapes or content) or another model (parameter
        names or shapes, sites or their shapes). States saved before quantities had names
        (keyed by class name) load too."""
        if state["sites"] != self.sites:
            raise TrackerStateMismatchError(
                f"the saved tracker state is for other sites ({state['sites']}) than this tracker's ({self.sites}): "
                "build the tracker on the same model, probe and site filter as the run that saved it"
            )
        saved_bytes = state["previous_pattern"].numel()
        if saved_bytes != self.layout.stored_bytes:
            raise TrackerStateMismatchError(
                f"the saved tracker state holds a pattern of {saved_bytes} bytes and this tracker's takes "
                f"{self.layout.stored_bytes} (probe of {self.probe_size} samples, sites "
                f"{[s.shape for s in self.layout.sites]}): build the tracker with the same probe and model widths"
            )
        try:
            self.weights.check_state(state)
        except ValueError as error:
            raise TrackerStateMismatchError(str(error)) from None
        saved_probe = state.get("probe")  # absent in states saved before probes were fingerprinted
        if saved_probe is not None and (differs := _probe_difference(saved_probe, self.probe.fingerprint())):
            raise TrackerStateMismatchError(
                f"the saved tracker state was measured with another probe ({differs}): its pattern is not "
                "this probe's, and the next da would count the difference as flips. Build the tracker with "
                "the probe of the run that saved it (the same samples, in the same order)"
            )
        mine = [list(s.shape) for s in self.layout.sites]
        if "site_shapes" in state and [list(s) for s in state["site_shapes"]] != mine:
            site, a, b = next(
                (n, list(a), b) for n, a, b in zip(self.sites, state["site_shapes"], mine) if list(a) != b
            )
            raise TrackerStateMismatchError(
                f"the saved tracker state is for another model: site {site!r} has output shape {a} saved and "
                f"{b} here: build the tracker on the same model as the run that saved it"
            )
        self.weights.load_state_dict(state, self.device)
        self.iteration = int(state["iteration"])
        self.last_pattern = state["previous_pattern"].to(self.device)
        if "quantity_states" in state:
            saved = state["quantity_states"]
            for name, quantity in zip(self.quantity_names, self.quantities):
                quantity.load_state_dict(saved.get(name, {}))
        else:  # older states: keyed by class name (one quantity per class then)
            saved = state.get("quantities", {})
            for quantity in self.quantities:
                quantity.load_state_dict(saved.get(type(quantity).__name__, {}))
        self._queued = [[] for _ in self.quantities]
        self._queued_iterations = []
        self.history = History(self.history.columns)

    def close(self) -> None:
        """Read back what is pending and release the snapshots. Hooks only live inside a probe."""
        if self._closed:
            return
        self._read_back()
        self._closed = True
        self.weights.previous = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Tracker({type(self.module).__name__}, probe of {self.probe_size}, {len(self.sites)} sites, "
            f"{int(self.weights.sizes.sum())} parameters, iteration {self.iteration})"
        )


def _unique_columns(quantities: list[Quantity]) -> list[str]:
    """Every quantity's columns, in order; a column that two quantities write is refused."""
    owner: dict[str, tuple[int, Quantity]] = {}
    for k, quantity in enumerate(quantities):
        for column in quantity.columns():
            if column in owner:
                j, first = owner[column]
                raise QuantityCollisionError(
                    f"quantity {k} ({type(quantity).__name__}) writes the column {column!r}, which quantity {j} "
                    f"({type(first).__name__}{', built in' if j < 2 else ''}) writes already: records are kept by "
                    "name, so each column has one writer. Drop the duplicate quantity (the weight change and the "
                    "pattern change are always measured) or give it other column names"
                )
            owner[column] = (k, quantity)
    return list(owner)


def _unique_names(quantities: list[Quantity]) -> list[str]:
    """Each quantity's name (the key of its state); two quantities of one name are refused."""
    names: dict[str, int] = {}
    for k, quantity in enumerate(quantities):
        name = quantity.name
        if name in names:
            raise QuantityCollisionError(
                f"quantity {k} ({type(quantity).__name__}) is named {name!r}, as quantity {names[name]} "
                f"({type(quantities[names[name]]).__name__}) is: the tracker keeps each quantity's state by name"
            )
        names[name] = k
    return list(names)


def _probe_difference(saved: dict, mine: dict) -> str | None:
    """What differs between two probe fingerprints, in words; None when they agree."""
    if saved.get("size") != mine["size"]:
        return f"{saved.get('size')} samples saved, {mine['size']} here"
    if saved.get("inputs") != mine["inputs"]:
        pairs = zip(saved.get("inputs", []), mine["inputs"])
        a, b = next(((a, b) for a, b in pairs if a != b), (saved.get("inputs"), mine["inputs"]))
        return f"inputs {a} saved, {b} here"
    if saved.get("digest") != mine["digest"]:
        return "the same shapes, other values: another subset or another order of samples"
    return None
