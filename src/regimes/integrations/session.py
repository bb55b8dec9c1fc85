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
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from regimes.analysis import summarize_run
from regimes.detect import RegimeChangeDetector, RegimeEvent
from regimes.extras import available
from regimes.freeze import FrozenGates, ValuePattern, freeze_regime
from regimes.records import RunDirectory, RunSummary, Status, software_versions, study_fields
from regimes.sites import unwrap_model
from regimes.tracker import Tracker

__all__ = [
    "TrackingSession", "Roles", "StepGate", "draw_probe", "model_inputs", "default_probe_size", "process_rank",
    "is_sharded", "check_freeze", "warn_late_freeze", "settled_metric", "LOG_PREFIX", "LABEL_KEYS",
]  # fmt: skip

LOG_PREFIX = "regimes/"  # regimes/delta_w, regimes/delta_a, regimes/delta_a/<site>
LABEL_KEYS = ("labels", "label", "label_ids")  # what a batch holds for the loss, not for the model's forward
STEP_COLUMNS = ("dw", "dw_layerwise", "da")  # the curves of the steps table, before da:<site>


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
        raise NotImplementedError(
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


def _innermost(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under host wrappers (Lightning's `_optimizer`, accelerate's `optimizer`)."""
    while True:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
            optimizer = inner
        else:
            return optimizer


class StepGate:
    """Whether any of `optimizers` stepped since the last `take()`.

    A post-step hook on each torch optimizer: it runs only when the optimizer's `step`
    ran, which gradient accumulation and a gradient scaler's skipped step both avoid.
    """

    def __init__(self, optimizers) -> None:
        self.stepped = False
        self.handles = [_innermost(o).register_step_post_hook(self._on_step) for o in optimizers if o is not None]

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
        raise ValueError(
            "cannot tell the training batch size to size the probe (SPEC: 0.2 x batch size): pass probe_size="
        )
    return max(1, round(0.2 * samples_per_step))


def draw_probe(dataset, size: int, seed: int = 0, collate: Callable | None = None):
    """`size` samples of `dataset` drawn with `seed` (the runner's rule: the first `size` of a
    seeded permutation), collated into one batch (torch's default collate unless `collate`)."""
    n = len(dataset)
    if n == 0:
        raise ValueError("the data set to draw the probe from is empty")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"probe_size must be a whole number >= 1, got {size!r}")
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
    raise TypeError(
        f"cannot tell the model's inputs in a batch of type {type(batch).__name__}: pass probe_inputs=, a function "
        "from a batch to what the model's forward takes"
    )


def is_dataset(value) -> bool:
    """A map-style data set to draw a probe from (not probe data: a tensor, a tuple or a dict)."""
    if isinstance(value, (torch.Tensor, Mapping, tuple, list, str)):
        return False
    return hasattr(value, "__len__") and hasattr(value, "__getitem__")


# ---------------------------------------------------------------------- the frozen regime


def check_freeze(freeze, detect: bool = True):
    """`freeze` as the adapters take it: "off", "auto" (needs detection) or an epoch number >= 1."""
    if freeze in ("off", "auto") or (type(freeze) is int and freeze >= 1):
        if freeze == "auto" and not detect:
            raise ValueError('freeze="auto" freezes when the online detector says the pattern settled: detect=True')
        return freeze
    raise ValueError(f'freeze must be "off", "auto" or an epoch number >= 1 (freeze after that epoch), got {freeze!r}')


def warn_late_freeze(freeze, max_epochs) -> None:
    """Say so when `freeze` is an epoch the fit never ends with epochs left to train (as the runner does)."""
    if type(freeze) is int and max_epochs is not None and 0 <= max_epochs <= freeze:
        warnings.warn(
            f"freeze={freeze} freezes after epoch {freeze}, and the fit has {max_epochs} epochs: it will not freeze. "
            "Set freeze below the number of epochs.",
            stacklevel=3,
        )


def settled_metric(event: RegimeEvent, iteration: int | None) -> dict[str, float]:
    """What an adapter logs for a detector event: `regimes/settled_w` or `regimes/settled_p`,
    the optimizer step the curve settled at (NaN when the claim was withdrawn)."""
    return {f"{LOG_PREFIX}settled_{event.curve}": math.nan if iteration is None else float(iteration)}


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# ---------------------------------------------------------------------- the session


class TrackingSession:
    """One fit's tracker, its logging and its run directory, as every adapter uses them.

    Args:
        out: the run directory (`regimes.records.RunDirectory`), as `regimes run --out` writes it.
        host: the adapter's name, kept in the config and the summary ("lightning", ...).
        config: more plain data for the run's config (the fit's hyperparameters, say).
        force: replace a run already in `out` (otherwise a fresh fit there is refused).
        log_sites: also log each site's pattern change (regimes/delta_a/<site>).
        score: the name of the host metric that is the validation score (val_score in the
            epoch table, best_score in the summary); None: no score.
        higher_is_better: whether a higher `score` is better.
        detect: run the online detector (`end_epoch` returns its events).
        tau: the detector's threshold, a fraction of each curve's range.
        freeze: "off", "auto" (at the end of the first epoch after which the detector has
            claimed that the pattern settled) or an epoch number (at the end of that epoch).
    """

    def __init__(self, out, *, host: str, config: Mapping | None = None, force: bool = False,
                 log_sites: bool = False, score: str | None = None, higher_is_better: bool = True,
                 detect: bool = True, tau: float = 0.1, freeze="off") -> None:  # fmt: skip
        self.run_dir = RunDirectory(out)
        self.host, self.config, self.force = host, dict(config or {}), force
        self.log_sites, self.score, self.higher_is_better = log_sites, score, higher_is_better
        self.detect, self.tau, self.freeze_when = bool(detect), float(tau), check_freeze(freeze, detect)
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {tau!r}")
        self.detector: RegimeChangeDetector | None = None  # built at the end of the first epoch
        self.heard = 0  # the last iteration the detector was fed
        self._unheard: list[tuple] = []  # (iterations, weight change, da) written since it was fed
        self.gates: FrozenGates | None = None  # the frozen regime's gates, once frozen
        self.freeze_iteration: int | None = None
        self.roles = Roles(tracks=False, writes=False)
        self.tracker: Tracker | None = None
        self.epochs: list[dict] = []  # one row per epoch: the host's metrics
        self.written = 0  # the last iteration in the steps table
        self.logged = 0  # the last iteration logged
        self.epoch = 1  # the epoch the records being measured belong to
        self._saved: dict | None = None  # a checkpoint's state, until the tracker exists
        self._opened = False
        self._started = time.time()
        self._seconds_before = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, model: nn.Module, draw: Callable[[], object], *, step: int = 0, rank: int | None = None,
              **tracker_options) -> Tracker | None:  # fmt: skip
        """Build the tracker where this process tracks (`draw()` gives the probe; it is called
        only there). `step`: the host's optimizer step, for a fit resumed without our state."""
        self.roles = Roles.of(model, rank)
        self._options = tracker_options
        self._model_name = type(unwrap_model(model)).__name__
        if self.freeze_when != "off" and _world_size() > 1:
            raise NotImplementedError(
                f"freeze={self.freeze_when!r} runs in one process: the adapters freeze the regime on the process that "
                "tracks, and every process trains the model. Train with one process, or use freeze='off'"
            )
        if not self.roles.tracks:
            return None
        options = {k: v for k, v in tracker_options.items() if k != "quantities"}
        quantities = list(tracker_options.get("quantities", ()))
        if self.freeze_when != "off":
            quantities.append(ValuePattern())  # the value network's own pattern: da_value, drift_value
        self.tracker = Tracker(model, draw(), quantities=quantities, **options)
        if self._saved is not None:
            self._load(self._saved)
        elif step > 0:
            warnings.warn(
                f"the fit resumes at step {step} from a checkpoint without regimes' state: the curves go on from "
                "the restored weights, and the steps before it are the ones already in the run directory",
                stacklevel=3,
            )
            self.tracker.iteration = step
            self.written = self.logged = step
        return self.tracker

    def open(self) -> None:
        """Make the run directory (where this process writes): a resumed fit rewinds it to the
        checkpoint; a fresh fit refuses a folder that holds another run unless `force`."""
        if self._opened or not self.roles.writes:
            self._opened = True
            return
        resumed = self.written > 0
        config = self._config()
        self.run_dir.create(config, force=self.force and not resumed)  # a different run there: FileExistsError
        if resumed:
            self.run_dir.truncate_steps(self.written)
        elif self.run_dir.chunk_paths() or self.run_dir.has_summary():
            raise FileExistsError(
                f"{self.run_dir.path} already holds this run's records: resume the fit from its checkpoint, "
                "pass force=True to start it again there, or choose another out="
            )
        self._opened = True

    def _config(self) -> dict:
        plain = {k: v for k, v in self._options.items() if isinstance(v, (int, float, str, bool))}
        if isinstance(self._options.get("sites"), (list, tuple)):
            plain["sites"] = [str(s) for s in self._options["sites"]]
        if self._options.get("autocast") is not None:
            plain["autocast"] = str(self._options["autocast"])
        # Only what differs from the defaults, so that a run directory from before these options
        # existed still takes the same fit's resume.
        defaults = {"detect": True, "tau": 0.1, "freeze": "off"}
        chosen = {"detect": self.detect, "tau": self.tau, "freeze": self.freeze_when}
        detection = {k: v for k, v in chosen.items() if v != defaults[k]}
        return {"integration": self.host, "model": self._model_name, **plain, **detection, **self.config}

    # -- per step --------------------------------------------------------------------------

    def step(self) -> None:
        """Measure after an optimizer step (call only when it really stepped: `StepGate`)."""
        if self.tracker is not None:
            self.tracker.step()

    def values(self) -> dict[str, float]:
        """The latest measurement not yet logged, as `regimes/delta_w`, `regimes/delta_a` (and
        `regimes/delta_a/<site>`); {} when there is none. Reads back: call it at the host's
        logging cadence, on every tracking process."""
        if self.tracker is None:
            return {}
        sites = self.tracker.sites if self.log_sites else []
        new = self.tracker.records(since=self.logged, names=["dw", "da", *(f"da:{s}" for s in sites)])
        if not len(new["iteration"]):
            return {}
        self.logged = int(new["iteration"][-1])
        out = {f"{LOG_PREFIX}delta_w": float(new["dw"][-1]), f"{LOG_PREFIX}delta_a": float(new["da"][-1])}
        out.update({f"{LOG_PREFIX}delta_a/{s}": float(new[f"da:{s}"][-1]) for s in sites})
        return out if self.roles.writes else {}

    # -- per epoch, and the disk -----------------------------------------------------------

    def flush(self, epoch: int | None = None) -> None:
        """Write the records not yet in the steps table, as `epoch`'s (reads back)."""
        if epoch is not None:
            self.epoch = epoch
        if self.tracker is None:
            return
        names = [*self._step_columns(), *(f"da:{s}" for s in self.tracker.sites)]
        new = self.tracker.records(since=self.written, names=names)
        if not len(new["iteration"]):
            return
        self.written = int(new["iteration"][-1])
        if self.roles.writes:
            self.open()
            records = {"iteration": new["iteration"], "epoch": np.full(len(new["iteration"]), self.epoch, dtype=np.int64)}
            records.update({name: new[name] for name in names})
            self.run_dir.append_steps(records)
            if self.detect:  # for the detector, at the epoch's end
                self._unheard.append((new["iteration"], new[self.weight_column], new["da"]))

    def _step_columns(self) -> list[str]:
        """The curves of the steps table: `STEP_COLUMNS`, and the `ValuePattern`'s when freezing."""
        values = [c for q in self.tracker.quantities if isinstance(q, ValuePattern) for c in q.columns()]
        return [*STEP_COLUMNS, *values]

    # -- detection and the frozen regime ---------------------------------------------------

    @property
    def weight_column(self) -> str:
        """The weight-change curve the detector reads (the config's `weight_change`, as rho's)."""
        return "dw" if self.config.get("weight_change", "layerwise") == "global" else "dw_layerwise"

    def end_epoch(self, epoch: int) -> list[tuple[RegimeEvent, int | None]]:
        """The end of `epoch` (1, 2, ...): write its records (`flush`), feed the steps the detector
        has not heard, in order; return its events, each with the optimizer step (`iteration`)
        of the settle step it names (None when withdrawn). Reads back, like `flush`."""
        self.flush(epoch)
        if not (self.detect and self.roles.writes and self.tracker is not None and self._opened):
            return []
        if self.detector is None:  # the first epoch's end, or a resumed fit: the steps table so far
            steps = self.run_dir.read_steps(columns=["iteration", "epoch", self.weight_column, "da"])
            if not len(steps["iteration"]):
                return []
            epochs = steps["epoch"]
            self.detector = RegimeChangeDetector(int(np.count_nonzero(epochs == epochs[0])), self.tau)
            heard = steps["iteration"] <= self.heard
            for dw, da in zip(steps[self.weight_column][heard], steps["da"][heard]):
                self.detector.update(float(dw), float(da))  # heard before the checkpoint: its events were told
            unheard = [(steps["iteration"][~heard], steps[self.weight_column][~heard], steps["da"][~heard])]
        else:  # what flush wrote since
            unheard = self._unheard
        self._unheard = []
        events = []
        for iterations, weights, patterns in unheard:
            for dw, da in zip(weights, patterns):
                told = self.detector.update(float(dw), float(da))
                events += [(event, self.iteration_of(event.step)) for event in told]
            if len(iterations):
                self.heard = int(iterations[-1])
        return events

    def iteration_of(self, step: int | None) -> int | None:
        """The optimizer step of the detector's `step`-th measurement (as `RegimeDetection.iteration`)."""
        return None if step is None or self.tracker is None else step * self.tracker.every

    @property
    def settled(self) -> tuple[int | None, int | None]:
        """(dw, da): the optimizer step each curve settled at, as the detector says now."""
        if self.detector is None:
            return None, None
        return self.iteration_of(self.detector.settled_w), self.iteration_of(self.detector.settled_p)

    def freeze_due(self, epoch: int, *, last: bool = False) -> bool:
        """Whether `freeze` says to freeze at the end of `epoch` (call after `end_epoch`). `last`:
        the fit ends with this epoch, so there is nothing left to train frozen."""
        if self.freeze_when == "off" or self.gates is not None or last or self.tracker is None:
            return False
        if self.freeze_when == "auto":
            return self.detector is not None and self.detector.first_settled_p is not None
        return epoch >= self.freeze_when

    def freeze(self, frozen_state: dict | None = None) -> FrozenGates:
        """Freeze the regime now (`regimes.freeze.freeze_regime`): from the next step on the model
        trains (and evaluates) with the gates of a copy taken now; `frozen_state`: that copy's
        weights from a checkpoint."""
        if self.tracker is None:
            raise RuntimeError("freeze() needs the tracker: call it after start(), on the process that tracks")
        if not any(isinstance(q, ValuePattern) for q in self.tracker.quantities):
            raise RuntimeError('freeze() needs a ValuePattern on the tracker: build the session with freeze= on')
        self.flush()  # the steps before the freeze are measured on the free network
        self.gates = freeze_regime(self.tracker, frozen_state)
        self.freeze_iteration = int(self.tracker.iteration)
        return self.gates

    def epoch_row(self, epoch: int, metrics: Mapping) -> None:
        """Merge the host's `metrics` (scalars) into `epoch`'s row; rewrite the epoch table and
        a summary with status running."""
        row = next((r for r in self.epochs if r["epoch"] == epoch), None)
        if row is None:
            row = {"epoch": epoch}
            self.epochs = [r for r in self.epochs if r["epoch"] < epoch] + [row]
        row.update({k: float(v) for k, v in metrics.items() if k != "epoch" and _is_scalar(v)})
        if self.score is not None and self.score in row:
            row["val_score"] = row[self.score]
        if self.roles.writes:
            self.open()
            self.run_dir.write_epochs(self.epochs)
            self.run_dir.write_summary(self.summary(Status.RUNNING))

    def finish(self, status: Status | None = None) -> RunSummary | None:
        """The end of the fit: the last records, the summary (status finished, or diverged when
        the weights became non-finite), the figure. Returns the summary where this process writes."""
        self.flush()
        summary = None
        if self.roles.writes:
            self.open()
            summary = self.summary(status)
            self.run_dir.write_summary(summary)
            if available("matplotlib"):  # the figure is optional; the records are what matter
                from regimes.plots import save_run_figure

                save_run_figure(self.run_dir.path)
        self.close()
        return summary

    def interrupt(self, error: BaseException | None = None) -> None:
        """The fit stopped on an exception: keep what is measured and say so in the summary.
        Sharded processes do not read back here (the others may not be at the same point)."""
        if self.tracker is not None and self.tracker.weights.sharding is None:
            self.flush()
        if self.roles.writes and self._opened:
            stopped = error is None or isinstance(error, KeyboardInterrupt)
            status = Status.INTERRUPTED if stopped else Status.FAILED
            summary = self.summary(status)
            if not stopped:
                summary = summary.replace(error=f"{type(error).__name__}: {error}")
            self.run_dir.write_summary(summary)
        self.close()

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()

    # -- the summary -----------------------------------------------------------------------

    def summary(self, status: Status | None = None) -> RunSummary:
        """The run's summary from the steps table (the whole run, across resumes) and the epoch rows."""
        steps = self.run_dir.read_steps(columns=["iteration", "epoch", *STEP_COLUMNS]) if self._opened else {}
        dw = steps.get("dw", np.zeros(0))
        if status is None:
            status = Status.FINISHED if np.isfinite(dw).all() else Status.DIVERGED
        per_epoch = _measurements_per_epoch(steps.get("epoch", np.zeros(0, np.int64)))
        numbers = summarize_run(steps, per_epoch, self.config.get("weight_change", "layerwise")) if len(dw) else {}
        scores = [(r["val_score"], r["epoch"]) for r in self.epochs if r.get("val_score") is not None]
        best = (max if self.higher_is_better else min)(scores, default=(None, None))
        tracker = self.tracker
        every = tracker.every if tracker is not None else 1
        return RunSummary(
            model=self._model_name, seed=self.config.get("seed"),
            score_name=self.score, higher_is_better=self.higher_is_better if self.score else None,
            best_score=best[0], best_epoch=best[1], stop_epoch=len(self.epochs) or None,
            **study_fields(numbers),
            settled_w_online=self.settled[0], settled_p_online=self.settled[1], freeze_iteration=self.freeze_iteration,
            batches_per_epoch=per_epoch * every if len(dw) else None,
            steps=int(tracker.iteration) if tracker is not None else None,
            sites=list(tracker.sites) if tracker is not None else None,
            probe_size=tracker.probe_size if tracker is not None else None,
            status=status, seconds=self._seconds_before + time.time() - self._started,
            device=str(tracker.device) if tracker is not None else None,
            versions=software_versions(), threads=torch.get_num_threads(),
            extra={"integration": self.host},
        )  # fmt: skip

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What a resumed fit needs (the tracker's state, the epoch rows, the time so far);
        {} where this process does not track. Write the steps first (`flush`)."""
        if self.tracker is None:
            return {}
        state = {
            "tracker": self.tracker.state_dict(),
            "epochs": [dict(r) for r in self.epochs],
            "epoch": self.epoch,
            "seconds": self._seconds_before + time.time() - self._started,
            "heard": self.heard,  # the detector replays the steps table up to here
        }
        if self.gates is not None:
            state["frozen"] = {"iteration": self.freeze_iteration, "state": self.gates.frozen.state_dict()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from `state_dict()`: now if the tracker exists, else when `start` builds it."""
        if not state:
            return
        if self.tracker is None:
            self._saved = dict(state)
        else:
            self._load(state)

    def _load(self, state: Mapping) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.written = self.logged = self.tracker.iteration
        self.epochs = [dict(r) for r in state.get("epochs", [])]
        self.epoch = int(state.get("epoch", 1))
        self._seconds_before = float(state.get("seconds", 0.0))
        self.heard = int(state.get("heard", 0))
        self._saved = None
        if (frozen := state.get("frozen")) is not None:
            if self.freeze_when == "off":
                raise ValueError(
                    f"the checkpoint's fit froze its regime at step {frozen['iteration']}: resume it with the freeze= "
                    "it was started with"
                )
            self.freeze(frozen["state"])  # the same gates as before the checkpoint
            self.freeze_iteration = int(frozen["iteration"])


def _is_scalar(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _measurements_per_epoch(epochs: np.ndarray) -> int:
    """Measurements in a whole epoch: the most any epoch holds (the first after a resume, and
    the last of a fit stopped mid-epoch, may hold fewer)."""
    if not len(epochs):
        return 1
    return int(np.unique(epochs, return_counts=True)[1].max())


def default_out(root) -> Path:
    return Path(root) / "regimes"
