"""What every host adapter does with a tracker during one fit, whatever the host.

An adapter (Lightning, the Hugging Face Trainer, accelerate) translates its host's events
into these calls, and nothing else:

    session = TrackingSession(out, host="lightning")
    session.load_state_dict(saved)          # a resumed fit: before or after start
    session.start(model, draw, **tracker_options)   # the model on its device; draw() -> probe
    session.open()                          # the run directory (refuses another run there)
    ...                                     # after each optimizer step that really stepped:
    session.step(); values = session.values()   # the latest dw and da, to log
    for event, iteration in session.end_epoch(epoch): ...   # the epoch's records; the detector's events
    if session.freeze_due(epoch, last=...): session.freeze()  # freeze="auto" | N
    session.epoch_row(epoch, {"val_score": ...})
    session.state_dict()                    # into the host's checkpoint
    session.finish()                        # steps, summary with rho, figure

**Who does what under several processes** (`Roles`). Under data parallelism (DDP) the first
process tracks, logs and writes; the others build nothing and do no tracking work, so no
collective can ever be called from one process alone. When parameters are sharded (FSDP2)
every process tracks: the probe's forward gathers shards on all of them, and the weight
change sums each process's shard sums in one all-reduce per read-back. Every call here that
can read back (`values`, `flush`, `finish`) is made by every tracking process at the same
point of the fit; only the first process logs and touches the disk.

**Online detection and the frozen regime** (SPEC section 6), as the runner's `RegimeDetection`
and `FreezeRegime` do them. At each epoch's end (`end_epoch`) every measured step not yet
heard goes, in order, to a `regimes.detect.RegimeChangeDetector` (the config's weight change,
`dw_layerwise` unless `weight_change="global"`, and `da`), whose window is the first epoch's
measurements; it never looks ahead. It is fed from the steps table, so a resumed fit replays
what it had heard (no events) and goes on with the same answers as an uninterrupted one.
`freeze()` calls `regimes.freeze.freeze_regime` on the tracker: the model trains with the
frozen copy's gates from then on, `da` is 0, and a `ValuePattern` quantity fills `da_value` and
`drift_value`. The checkpoint state keeps the frozen copy, and a resume installs the same gates.
Detection and the freeze happen where this process writes; a freeze needs a single process.

`StepGate` says whether an optimizer really stepped: with gradient accumulation the host
calls back on batches that did not step, and a mixed-precision step with non-finite
gradients is skipped by the gradient scaler without calling the optimizer's `step`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from regimes.detect import RegimeEvent
from regimes.errors import UnsupportedError, UsageError
from regimes.run import Run, check_freeze, default_out, innermost_optimizer, warn_late_freeze
from regimes.sites import unwrap_model
from regimes.tracker import Tracker

__all__ = [
    "TrackingSession",
    "Roles",
    "StepGate",
    "draw_probe",
    "model_inputs",
    "default_probe_size",
    "process_rank",
    "is_sharded",
    "check_freeze",
    "warn_late_freeze",
    "settled_metric",
    "default_out",
    "LOG_PREFIX",
    "LABEL_KEYS",
]

LOG_PREFIX = "regimes/"  # regimes/delta_w, regimes/delta_a, regimes/delta_a/<site>
LABEL_KEYS = ("labels", "label", "label_ids")  # what a batch holds for the loss, not for the model's forward


# ---------------------------------------------------------------------- processes


def process_rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter is sharded over processes (FSDP2's DTensors with a Shard placement).

    FSDP1 (`FullyShardedDataParallel`) is refused: its flat parameters hide the tensors the
    weight change is taken over, and a probe on one process alone would hang its all-gathers."""
    from torch.distributed import fsdp

    wrapper = getattr(fsdp, "FullyShardedDataParallel", None)
    if wrapper is not None and any(isinstance(m, wrapper) for m in model.modules()):
        raise UnsupportedError(
            "the model is wrapped in FSDP1 (FullyShardedDataParallel): regimes tracks FSDP2 models "
            "(torch.distributed.fsdp.fully_shard; Lightning's ModelParallelStrategy, accelerate's fsdp_version=2)"
        )
    return any(any(p.is_shard() for p in getattr(param, "placements", ())) for param in model.parameters())


@dataclass(frozen=True)
class Roles:
    """What this process does: `tracks` (builds a tracker and probes), `writes` (logs, writes the run directory)."""

    tracks: bool
    writes: bool

    @classmethod
    def of(cls, model: nn.Module, rank: int | None = None) -> Roles:
        first = (process_rank() if rank is None else rank) == 0
        return cls(tracks=first or is_sharded(model), writes=first)


# ---------------------------------------------------------------------- optimizer steps


class StepGate:
    """Whether any of `optimizers` stepped since the last `take()`.

    A post-step hook on each torch optimizer: it runs only when the optimizer's `step`
    ran, which gradient accumulation and a gradient scaler's skipped step both avoid.
    """

    def __init__(self, optimizers) -> None:
        self.stepped = False
        self.handles = [
            innermost_optimizer(o).register_step_post_hook(self._on_step) for o in optimizers if o is not None
        ]

    def _on_step(self, optimizer, args, kwargs) -> None:
        self.stepped = True

    def take(self) -> bool:
        stepped, self.stepped = self.stepped, False
        return stepped

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


# ---------------------------------------------------------------------- the probe


def default_probe_size(samples_per_step: int | None) -> int:
    """SPEC: |S| = round(0.2 * batch size), at least 1; the batch being one optimizer step's samples."""
    if not samples_per_step:
        raise UsageError(
            "cannot tell the training batch size to size the probe (SPEC: 0.2 x batch size): pass probe_size="
        )
    return max(1, round(0.2 * samples_per_step))


def draw_probe(dataset, size: int, seed: int = 0, collate: Callable | None = None):
    """`size` samples of `dataset` drawn with `seed` (the runner's rule: the first `size` of a
    seeded permutation), collated into one batch (torch's default collate unless `collate`)."""
    n = len(dataset)
    if n == 0:
        raise UsageError("the data set to draw the probe from is empty")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"probe_size must be a whole number >= 1, got {size!r}")
    indices = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(size, n)].tolist()
    samples = [dataset[i] for i in indices]
    return (collate or torch.utils.data.default_collate)(samples)


def model_inputs(batch):
    """The part of a training batch that the model's forward takes: a tensor as it is, the
    first element of an `(inputs, target)` pair, a dict (or `BatchEncoding`) without its labels."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise UsageError(
        f"cannot tell the model's inputs in a batch of type {type(batch).__name__}: pass probe_inputs=, a function "
        "from a batch to what the model's forward takes"
    )


def is_dataset(value) -> bool:
    """A map-style data set to draw a probe from (not probe data: a tensor, a tuple or a dict)."""
    if isinstance(value, (torch.Tensor, Mapping, tuple, list, str)):
        return False
    return hasattr(value, "__len__") and hasattr(value, "__getitem__")


# ---------------------------------------------------------------------- the frozen regime


def settled_metric(event: RegimeEvent, iteration: int | None) -> dict[str, float]:
    """What an adapter logs for a detector event: `regimes/settled_w` or `regimes/settled_p`,
    the optimizer step the curve settled at (NaN when the claim was withdrawn)."""
    return {f"{LOG_PREFIX}settled_{event.curve}": math.nan if iteration is None else float(iteration)}


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# ---------------------------------------------------------------------- the session


class TrackingSession(Run):
    """The run object (`regimes.Run`) as an adapter drives it: who tracks and writes under
    several processes (`Roles`), the probe drawn only where it is used, and the latest values
    for the host's own loggers.

    Args are `regimes.Run`'s; `host` names the adapter ("lightning", ...), and `config` is more
    plain data for the run's config (the fit's hyperparameters, say; its `weight_change`, if
    any, chooses rho's headline reading).
    """

    def __init__(
        self,
        out,
        *,
        host: str,
        config: Mapping | None = None,
        force: bool = False,
        log_sites: bool = False,
        score: str | None = None,
        higher_is_better: bool = True,
        detect: bool = True,
        tau: float = 0.1,
        freeze="off",
    ) -> None:
        config = dict(config or {})
        super().__init__(
            out,
            config=config,
            host=host,
            force=force,
            log_sites=log_sites,
            score=score,
            higher_is_better=higher_is_better,
            detect=detect,
            tau=tau,
            freeze=freeze,
            weight_change=config.get("weight_change", "layerwise"),
        )
        self.host_config = config
        self.describe.update(score_name=score, seed=config.get("seed"))
        self.roles = Roles(tracks=False, writes=False)
        self.reported = 0  # the last iteration given to the host's loggers (`values`)

    def start(
        self,
        model: nn.Module,
        draw: Callable[[], object],
        *,
        step: int = 0,
        rank: int | None = None,
        optimizer=None,
        **tracker_options,
    ) -> Tracker | None:
        """Build the tracker where this process tracks (`draw()` gives the probe; it is called
        only there). `step`: the host's optimizer step, for a fit resumed without our state."""
        self.roles = Roles.of(model, rank)
        self.writes = self.roles.writes
        if self.freeze_when != "off" and _world_size() > 1:
            raise UnsupportedError(
                f"freeze={self.freeze_when!r} runs in one process: the adapters freeze the regime on the process that "
                "tracks, and every process trains the model. Train with one process, or use freeze='off'"
            )
        self.config = self._config(model, tracker_options)
        if not self.roles.tracks:
            return None
        resumed = self._saved is not None
        tracker = self.watch(model, draw(), optimizer=optimizer, **tracker_options)
        if not resumed and step > 0:
            warnings.warn(
                f"the fit resumes at step {step} from a checkpoint without regimes' state: the curves go on from "
                "the restored weights, and the steps before it are the ones already in the run directory",
                stacklevel=3,
            )
            tracker.iteration = step
            self.written = self.logged = self.heard = self.reported = step
            self._epoch_start = step
        return tracker

    def _config(self, model: nn.Module, options: Mapping) -> dict:
        plain = {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))}
        if isinstance(options.get("sites"), (list, tuple)):
            plain["sites"] = [str(s) for s in options["sites"]]
        if options.get("autocast") is not None:
            plain["autocast"] = str(options["autocast"])
        # Only what differs from the defaults, so that a run directory from before these options
        # existed still takes the same fit's resume.
        defaults = {"detect": True, "tau": 0.1, "freeze": "off"}
        chosen = {"detect": self.detect, "tau": self.tau, "freeze": self.freeze_when}
        detection = {k: v for k, v in chosen.items() if v != defaults[k]}
        model_name = type(unwrap_model(model)).__name__
        return {"integration": self.host, "model": model_name, **plain, **detection, **self.host_config}

    def _load(self, state: Mapping) -> None:
        super()._load(state)
        self.reported = self.tracker.iteration

    def values(self) -> dict[str, float]:
        """The latest measurement not yet given, as `regimes/delta_w`, `regimes/delta_a` (and
        `regimes/delta_a/<site>`); {} when there is none. Reads back: call it at the host's
        logging cadence, on every tracking process."""
        if self.tracker is None:
            return {}
        sites = self.tracker.sites if self.log_sites else []
        new = self.tracker.records(since=self.reported, names=["dw", "da", *(f"da:{s}" for s in sites)])
        if not len(new["iteration"]):
            return {}
        self.reported = int(new["iteration"][-1])
        out = {f"{LOG_PREFIX}delta_w": float(new["dw"][-1]), f"{LOG_PREFIX}delta_a": float(new["da"][-1])}
        out.update({f"{LOG_PREFIX}delta_a/{s}": float(new[f"da:{s}"][-1]) for s in sites})
        return out if self.roles.writes else {}
