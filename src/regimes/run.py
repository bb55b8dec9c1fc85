"""`Run`: one run's life, from its first record to its summary, whatever trains it.

The runner (`regimes run`), the Lightning, Trainer and accelerate adapters and a plain
training loop all write through this one object (W&B's `wandb.init()` / `Run` is the model):

>>> import tempfile, torch, regimes
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
>>> run = regimes.Run(tempfile.mkdtemp() + "/my-run", config={"lr": 0.1})  # the run directory
>>> tracker = run.watch(model, x[:8], optimizer=optimizer)  # a regimes.Tracker on the probe
>>> for epoch in range(1, 4):
...     for batch in torch.arange(64).split(16):
...         loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
...         optimizer.zero_grad()
...         loss.backward()
...         optimizer.step()
...         tracker.step()
...     events = run.end_epoch(epoch, {"train_loss": loss})  # records, detector, freeze, summary
>>> summary = run.finish()  # the summary and the figure
>>> print(summary["steps"], summary["batches_per_epoch"], summary["window"], summary["status"])
12 4 1 finished

It owns the run directory (`regimes.records.RunDirectory`): the steps table and the
per-tensor table, flushed after every epoch; the epoch table; the online detector's feed
(`regimes.detect`); the frozen regime (`freeze=`); the summary, built in one place; and its
own checkpoint state (`state_dict()` / `load_state_dict()`), so a resumed fit continues the
same records. What it records goes to the `loggers` too, as it is measured.

**Measurements per epoch.** The smoothing window and the detector's window are in
measurements: `batches_per_epoch // every` (at least 1), where `batches_per_epoch` is the
number of optimizer steps in a whole epoch. The runner knows it; a host that does not say
gets the number of steps its first epoch took.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from regimes.analysis import measurements_per_epoch, summarize_run
from regimes.detect import RegimeChangeDetector, RegimeEvent
from regimes.errors import RunExistsError, UsageError
from regimes.extras import available
from regimes.records import (
    NEURON_FIELDS,
    DamagedRecordError,
    RunDirectory,
    RunSummary,
    Status,
    software_versions,
    study_fields,
    validity,
)
from regimes.records.run import writer_lock
from regimes.runs import best_validation
from regimes.sites import unwrap_model
from regimes.tracker import Tracker

__all__ = ["Run", "CURVES", "check_freeze", "warn_late_freeze", "measurements_per_epoch"]

CURVES = ("dw", "dw_layerwise", "da", "da_units")  # what the summary is computed from


def check_freeze(freeze, detect: bool = True):
    """`freeze` as a run takes it: "off", "auto" (needs detection) or an epoch number >= 1."""
    if freeze in ("off", "auto") or (type(freeze) is int and freeze >= 1):
        if freeze == "auto" and not detect:
            raise UsageError('freeze="auto" freezes when the online detector says the pattern settled: detect=True')
        return freeze
    raise UsageError(f'freeze must be "off", "auto" or an epoch number >= 1 (freeze after that epoch), got {freeze!r}')


def warn_late_freeze(freeze, max_epochs) -> None:
    """Say so when `freeze` is an epoch the fit never ends with epochs left to train (as the runner does)."""
    if type(freeze) is int and max_epochs is not None and 0 <= max_epochs <= freeze:
        warnings.warn(
            f"freeze={freeze} freezes after epoch {freeze}, and the fit has {max_epochs} epochs: it will not freeze. "
            "Set freeze below the number of epochs.",
            stacklevel=3,
        )


class Run:
    """One run's records, detector, freeze, summary and checkpoint state.

    Args:
        out: the run directory (made if need be; one writer at a time).
        config: plain data kept as the run's config (a fresh run in a folder that
            holds a run with another config is refused unless `force`).
        host: who trains ("loop", "runner", "lightning", ...), kept in the summary.
        force: replace a run already in `out`.
        resume: continue the run in `out` (load the checkpoint state with `load_state_dict`).
        weight_change: the headline reading of rho, "layerwise" (default) or "global".
        batches_per_epoch: optimizer steps in a whole epoch; None: learned from the first epoch.
        detect: feed every measured step to the online detector at each epoch's end.
        tau: the detector's threshold, a fraction of each curve's range.
        freeze: "off", "auto" (the first epoch end after the detector says the pattern
            settled) or an epoch number: freeze the activation pattern then (never at the last epoch).
        score: the metric of `end_epoch` that is the validation score ("val_score").
        higher_is_better: whether a higher score is better.
        describe: more summary fields the host knows (model, dataset, optimizer, lr, ...).
        contributors: objects whose `summary_fields()` add to the summary (early stopping).
        loggers: objects with `log_metrics(metrics, step)` (and `close()`), told every
            measurement (`regimes/delta_w`, `regimes/delta_a`, ...), epoch metrics and event.
        log_sites: also log each site's pattern change (`regimes/delta_a/<site>`).
        writes: False on a process that tracks but does not write (a sharded fit's others).
        lock: hold the run directory's writer lock from the first write to `finish`
            (False when the caller holds it already, as the runner does).
    """

    def __init__(
        self,
        out,
        *,
        config: Mapping | None = None,
        host: str = "loop",
        force: bool = False,
        resume: bool = False,
        weight_change: str = "layerwise",
        batches_per_epoch: int | None = None,
        detect: bool = True,
        tau: float = 0.1,
        freeze="off",
        score: str | None = None,
        higher_is_better: bool = True,
        describe: Mapping | None = None,
        contributors: Iterable = (),
        loggers: Iterable = (),
        log_sites: bool = False,
        writes: bool = True,
        lock: bool = True,
    ) -> None:
        if weight_change not in ("layerwise", "global"):
            raise UsageError(f'weight_change must be "layerwise" or "global", got {weight_change!r}')
        if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and 0 < tau <= 1):
            raise UsageError(f"tau must be in (0, 1], got {tau!r}")
        if batches_per_epoch is not None and (type(batches_per_epoch) is not int or batches_per_epoch < 1):
            raise UsageError(f"batches_per_epoch must be a whole number >= 1, got {batches_per_epoch!r}")
        self.directory = out if isinstance(out, RunDirectory) else RunDirectory(out)
        self.config, self.host, self.force, self.resume = dict(config or {}), host, force, resume
        self.weight_change, self.batches_per_epoch = weight_change, batches_per_epoch
        self.detect, self.tau, self.freeze_when = bool(detect), float(tau), check_freeze(freeze, detect)
        self.score, self.higher_is_better = score or "val_score", higher_is_better
        self.describe = dict(describe or {})
        self.contributors = list(contributors)
        self.loggers, self.log_sites = list(loggers), log_sites
        self.writes, self.lock = writes, lock
        self.tracker: Tracker | None = None
        self.epochs: list[dict] = []  # one row per finished epoch: the host's metrics
        self.epoch = 1  # the epoch the records being measured belong to
        self.detector: RegimeChangeDetector | None = None
        self.gates = None  # the frozen regime's `regimes.freeze.FrozenGates`, once frozen
        self.freeze_iteration: int | None = None
        self.summary: RunSummary | None = None  # the final summary, once finished
        self.written = 0  # the last iteration in the steps table
        self.heard = 0  # the last iteration the detector heard
        self.logged = 0  # the last iteration told to the loggers
        self._epoch_start = 0  # the iteration the first epoch began at (to learn batches_per_epoch)
        self._curves: dict[str, list[np.ndarray]] = {name: [] for name in CURVES}
        self._neurons: dict[str, float] = {}
        self._saved: dict | None = None  # a checkpoint's state, until the tracker exists
        self._opened = False
        self._lock = None
        self._started, self._seconds_before = time.time(), 0.0

    # -- the tracker -----------------------------------------------------------------------

    def watch(
        self, model: torch.nn.Module, probe, *, optimizer: torch.optim.Optimizer | None = None, **tracker_options
    ) -> Tracker:
        """Build the run's `regimes.Tracker` on `model` and `probe` (`tracker_options`: sites,
        every, activation, quantities, ...), with what the run's freeze needs. `optimizer`: the
        training's, whose name, lr, weight decay and momentum the summary then records."""
        if optimizer is not None:
            for key, value in optimizer_fields(optimizer).items():
                self.describe.setdefault(key, value)
        quantities = list(tracker_options.pop("quantities", ()))
        if self.freeze_when != "off":
            from regimes.freeze import ValuePattern

            quantities.append(ValuePattern())  # the value network's own pattern: da_value, drift_value
        self.describe.setdefault("model", type(unwrap_model(model)).__name__)
        return self.attach(Tracker(model, probe, quantities=quantities, **tracker_options))

    def attach(self, tracker: Tracker) -> Tracker:
        """Record `tracker` (built by the caller) in this run; a saved state is loaded into it."""
        from regimes.freeze import ValuePattern

        if self.freeze_when != "off" and not any(isinstance(q, ValuePattern) for q in tracker.quantities):
            raise UsageError("a run with freeze on needs a regimes.freeze.ValuePattern quantity on its tracker")
        self.tracker = tracker
        self._epoch_start = tracker.iteration
        if self._saved is not None:
            self._load(self._saved)
        return tracker

    @property
    def every(self) -> int:
        return self.tracker.every if self.tracker is not None else 1

    def step(self) -> None:
        """Measure after an optimizer step (`tracker.step()`), and tell the loggers."""
        if self.tracker is not None:
            self.tracker.step()

    # -- the run directory -----------------------------------------------------------------

    def open(self) -> None:
        """Make the run directory (called by the first write): a resumed run rewinds its
        tables to the checkpoint; a fresh run refuses a folder holding another run's records
        unless `force`."""
        if self._opened:
            return
        self._opened = True
        if not self.writes:
            return
        if self.lock:
            self._lock = writer_lock(self.directory.path, self.directory.lock_path, 2.0, "a run")
            self._lock.__enter__()
        try:
            self._open()
        except BaseException:
            self._release()
            self._opened = False
            raise

    def _open(self) -> None:
        directory = self.directory
        resumed = self.resume or self.written > 0
        if resumed:
            directory.check_records()
            directory.truncate_steps(self.written)
            try:
                on_disk = directory.read_steps(columns=["iteration", *CURVES])
            except DamagedRecordError:  # recorded before da_units: its pooled readings stay None
                on_disk = directory.read_steps(columns=["iteration", *CURVES[:3]])
            self._curves = {name: [on_disk.get(name, np.zeros(0))] for name in CURVES}
            if not directory.has_config():
                directory.create(self.config)
            return
        directory.create(self.config, force=self.force)  # another run there: FileExistsError
        if not self.force and (existing := directory.read_summary()) is not None:
            raise RunExistsError(
                f"{directory.path} already holds this run ({existing.get('status')}, {existing.get('stop_epoch')} "
                "epochs): use --resume to continue it, --force to start it again, or choose another --out (in Python: "
                "resume=True, force=True, or another out)"
            )

    def _release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)

    # -- per epoch -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the records not yet in the steps and per-tensor tables, as the current epoch's
        (reads back: every process that tracks calls it at the same point)."""
        if self.tracker is None:
            return
        tracker = self.tracker
        columns = [c for c in tracker.history.columns if not c.startswith("dw:")]
        tensors = [f"dw:{name}" for name in tracker.parameter_names]
        new = tracker.records(since=self.written, names=[*columns, *tensors])
        iterations = new["iteration"]
        if not len(iterations):
            return
        if self.writes:
            self.open()  # before the new records count: a resume rewinds the tables to `written`
        self.written = int(iterations[-1])
        for name in CURVES:
            self._curves[name].append(new[name])
        # The neurons as the last epoch left them (one flush is one epoch's records).
        self._neurons = {k: float(np.nanmean(new[k])) for k in NEURON_FIELDS if k in new and np.isfinite(new[k]).any()}
        self._log(new)
        if not self.writes:
            return
        # The per-tensor table first: a crash between the two leaves it ahead, and a resume
        # truncates both to the checkpoint.
        self.directory.append_tensor_steps(
            iterations, self.epoch, tracker.parameter_names, np.column_stack([new[t] for t in tensors])
        )
        records = {"iteration": iterations, "epoch": np.full(len(iterations), self.epoch, dtype=np.int64)}
        records.update({name: new[name] for name in columns})
        self.directory.append_steps(records)

    def end_epoch(
        self, epoch: int, metrics: Mapping | None = None, *, last: bool = False, status: Status | None = None
    ) -> list[tuple[RegimeEvent, int | None]]:
        """The end of `epoch` (1, 2, ...): write its records, feed the detector the steps it has
        not heard, freeze if due (never when `last`: no epoch is left to train frozen), merge
        `metrics` (scalars) into the epoch's row, write the epoch table and a summary (status
        `status`, else running). Returns the detector's events, each with the optimizer step it
        names (None when a claim is withdrawn)."""
        if type(epoch) is not int or epoch < 1:
            raise UsageError(f"epoch must be a whole number >= 1, got {epoch!r}")
        if self.epochs and epoch < self.epochs[-1]["epoch"]:
            raise UsageError(f"epoch {epoch} ends after epoch {self.epochs[-1]['epoch']}: epochs go forward")
        self.epoch = epoch
        self.flush()
        if self.batches_per_epoch is None and self.tracker is not None and self.tracker.iteration > self._epoch_start:
            self.batches_per_epoch = self.tracker.iteration - self._epoch_start  # the first epoch's steps
        events = self._hear()
        if self._freeze_due(epoch, last):
            self.freeze()
        self.epoch = epoch + 1
        for event, iteration in events:
            self._log_values({f"regimes/settled_{event.curve}": math.nan if iteration is None else float(iteration)})
        self.log(metrics or {}, epoch=epoch, status=status)
        return events

    def log(self, metrics: Mapping, *, epoch: int, status: Status | None = None) -> None:
        """Merge `metrics` (scalars: floats, ints, one-element tensors) into `epoch`'s row (a
        metric named as `score` is the validation score), tell the loggers, and write the epoch
        table and a summary (status `status`, else running)."""
        self._merge_row(epoch, metrics)
        for logger in self.loggers if self.writes else ():
            logger.flush()  # a long run shows its curves as it trains
        if self.writes:
            self.open()
            self.directory.write_epochs(self.epochs)
            self.directory.write_summary(self.build_summary(status or Status.RUNNING))

    def _merge_row(self, epoch: int, metrics: Mapping) -> None:
        row = next((r for r in self.epochs if r["epoch"] == epoch), None)
        if row is None:
            row = {"epoch": epoch}
            self.epochs = [r for r in self.epochs if r["epoch"] < epoch] + [row]
        row.update({k: _scalar(v) for k, v in metrics.items() if k != "epoch" and _is_scalar(v)})
        if self.score in row:
            row["val_score"] = row[self.score]
        self._log_values({f"epoch/{k}": v for k, v in row.items() if k != "epoch"}, step=self._step())

    # -- online detection ------------------------------------------------------------------

    @property
    def weight_column(self) -> str:
        """The weight-change curve rho and the detector read (`weight_change`)."""
        return "dw" if self.weight_change == "global" else "dw_layerwise"

    def _hear(self) -> list[tuple[RegimeEvent, int | None]]:
        if not self.detect or self.tracker is None or self.batches_per_epoch is None:
            return []
        curves = self.curves()
        iterations = self.every * np.arange(1, len(curves["da"]) + 1)  # measurement k is at step k * every
        if self.detector is None:  # the first epoch's end, or a resumed run: replay what was heard
            self.detector = RegimeChangeDetector(measurements_per_epoch(self.batches_per_epoch, self.every), self.tau)
            for dw, da in zip(
                curves[self.weight_column][iterations <= self.heard], curves["da"][iterations <= self.heard]
            ):
                self.detector.update(float(dw), float(da))  # its events were told before the checkpoint
        unheard = iterations > self.heard
        events = []
        for dw, da in zip(curves[self.weight_column][unheard], curves["da"][unheard]):
            events += [(e, self.iteration_of(e.step)) for e in self.detector.update(float(dw), float(da))]
        if unheard.any():
            self.heard = int(iterations[-1])
        return events

    def iteration_of(self, step: int | None) -> int | None:
        """The optimizer step of the detector's `step`-th measurement."""
        return None if step is None else step * self.every

    @property
    def settled(self) -> tuple[int | None, int | None]:
        """(dw, da): the optimizer step each curve settled at, as the detector says now."""
        if self.detector is None:
            return None, None
        return self.iteration_of(self.detector.settled_w), self.iteration_of(self.detector.settled_p)

    # -- the frozen regime -----------------------------------------------------------------

    def _freeze_due(self, epoch: int, last: bool) -> bool:
        if self.freeze_when == "off" or self.gates is not None or last or self.tracker is None:
            return False
        if self.freeze_when == "auto":
            return self.detector is not None and self.detector.first_settled_p is not None
        return epoch >= self.freeze_when

    def freeze(self, frozen_state: dict | None = None):
        """Freeze the regime now (`regimes.freeze.freeze_regime`): from the next step on the model
        trains with the gates of a copy taken now; `frozen_state`: that copy's weights (a resume)."""
        from regimes.freeze import freeze_regime

        if self.tracker is None:
            raise RuntimeError("freeze() needs the run's tracker: call watch() or attach() first")
        self.flush()  # the steps before the freeze are measured on the free network
        self.gates = freeze_regime(self.tracker, frozen_state)
        self.freeze_iteration = int(self.tracker.iteration)
        return self.gates

    # -- the end ---------------------------------------------------------------------------

    def curves(self) -> dict[str, np.ndarray]:
        """The whole run's `dw`, `dw_layerwise` and `da` so far (written ones; `flush` first)."""
        for chunks in self._curves.values():
            if len(chunks) > 1:
                chunks[:] = [np.concatenate(chunks)]
        return {name: chunks[0] if chunks else np.zeros(0) for name, chunks in self._curves.items()}

    def finish(self, status: Status | None = None) -> RunSummary | None:
        """The end of the run: the last records, the summary (finished, or diverged when the
        weight change became non-finite), the figure. Returns the summary where this process writes."""
        self.flush()
        if status is None:
            status = Status.FINISHED if np.isfinite(self.curves()["dw"]).all() else Status.DIVERGED
        self.summary = self.build_summary(status)
        if self.writes:
            self.open()
            self.directory.write_summary(self.summary)
            save_figure(self.directory)
        self.close()
        return self.summary if self.writes else None

    def abort(self, error: BaseException | None = None, *, flush: bool = True) -> None:
        """The run stopped on `error`: keep what is measured and say how it ended (interrupted
        for Ctrl-C or SIGTERM, failed with the error otherwise). Sharded processes do not read
        back here (the others may not be at the same point). `flush=False` keeps the tables at
        the last epoch's end (a host that resumes from epoch checkpoints would drop the rest)."""
        if flush and self.tracker is not None and self.tracker.weights.sharding is None:
            self.flush()
        if self.writes and self._opened:
            interrupted = error is None or isinstance(error, KeyboardInterrupt)
            summary = self.build_summary(Status.INTERRUPTED if interrupted else Status.FAILED)
            if not interrupted:
                summary = summary.replace(error=f"{type(error).__name__}: {error}")
            self.directory.write_summary(summary)
        self.close()

    def close(self) -> None:
        """Remove the tracker's hooks and release the run directory (`finish` and `abort` do)."""
        if self.tracker is not None:
            self.tracker.close()
        for logger in self.loggers:
            getattr(logger, "close", lambda: None)()
        self._release()

    def __fspath__(self) -> str:
        """The run directory's path: a `Run` goes wherever a path does (`plot_run(run)`)."""
        return str(self.directory.path)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None:
            self.abort(error)
        elif self.summary is None:
            self.finish()

    # -- the summary -----------------------------------------------------------------------

    def build_summary(self, status: Status) -> RunSummary:
        """The run's summary now: the study's numbers over the whole run's curves, the epochs'
        best score, the detector, the freeze, and what the host and `contributors` describe."""
        curves, tracker = self.curves(), self.tracker
        per_epoch = measurements_per_epoch(self.batches_per_epoch or 1, self.every)
        numbers = summarize_run(curves, per_epoch, self.weight_change) if len(curves["da"]) else {}
        best = best_validation(self.epochs, self.higher_is_better)
        scored = best is not None or any("val_score" in r for r in self.epochs)
        fields = {
            "higher_is_better": self.higher_is_better if scored else None,
            "best_score": best[0] if best else None,
            "best_epoch": best[1] if best else None,
            "stop_epoch": len(self.epochs) or None,
            **study_fields(numbers),
            "settled_w_online": self.settled[0],
            "settled_p_online": self.settled[1],
            "freeze_iteration": self.freeze_iteration,
            "batches_per_epoch": self.batches_per_epoch,
            "steps": int(tracker.iteration) if tracker is not None else None,
            "sites": list(tracker.sites) if tracker is not None else None,
            "probe_size": tracker.probe_size if tracker is not None else None,
            "device": str(tracker.device) if tracker is not None else None,
            "status": status,
            "seconds": self._seconds_before + time.time() - self._started,
            "versions": software_versions(),
            "threads": torch.get_num_threads(),
            **self._neurons,
        }
        fields.update(self.describe)
        for contributor in self.contributors:
            fields.update(contributor.summary_fields())
        first = next((r["val_score"] for r in self.epochs if r.get("val_score") is not None), None)
        fields.setdefault("first_score", first)
        known = {k: v for k, v in fields.items() if k in RunSummary.__dataclass_fields__}
        extra = {k: v for k, v in fields.items() if k not in known}
        if self.host != "runner":
            extra.setdefault("integration", self.host)
        summary = RunSummary(**known, extra=extra)
        # Whether the run can be read as a result (measured, learned, frozen): said in the summary itself.
        valid = validity(summary, every=self.every)
        return summary.replace(measured=valid["measured"], learned=valid["learned"], frozen=valid["frozen"])

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What a resumed run needs (plain data and tensors): the tracker's state, the epoch
        rows, the detector's place, the frozen copy. Flushes first, so that the tables hold
        every record the state has seen."""
        if self.tracker is None:
            return {}
        self.flush()
        state = {
            "tracker": self.tracker.state_dict(),
            "epochs": [dict(r) for r in self.epochs],
            "epoch": self.epoch,
            "seconds": self._seconds_before + time.time() - self._started,
            "heard": self.heard,
            "batches_per_epoch": self.batches_per_epoch,
        }
        if self.gates is not None:
            state["frozen"] = {"iteration": self.freeze_iteration, "state": self.gates.frozen.state_dict()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from `state_dict()`: now if the tracker exists, else when it is attached."""
        if not state:
            return
        if self.tracker is None:
            self._saved = dict(state)
        else:
            self._load(state)

    def _load(self, state: Mapping) -> None:
        self._saved = None
        self.tracker.load_state_dict(state["tracker"])
        self.written = self.logged = self.tracker.iteration
        self.epochs = [dict(r) for r in state.get("epochs", [])]
        self.epoch = int(state.get("epoch", 1))
        self._seconds_before = float(state.get("seconds", 0.0))
        self.heard = int(state.get("heard", 0))
        if self.batches_per_epoch is None and state.get("batches_per_epoch") is not None:
            self.batches_per_epoch = int(state["batches_per_epoch"])
        if self.batches_per_epoch is None and self.writes:  # a state from before it was kept
            epochs = self.directory.read_steps(columns=["epoch"])["epoch"]
            if len(epochs):
                self.batches_per_epoch = int(np.unique(epochs, return_counts=True)[1].max()) * self.every
        if self.writes:
            self.open()
        if (frozen := state.get("frozen")) is not None:
            if self.freeze_when == "off":
                raise UsageError(
                    f"the checkpoint's run froze its regime at step {frozen['iteration']}: resume it with the "
                    "freeze it was started with"
                )
            self.freeze(frozen["state"])  # the same gates as before the checkpoint
            self.freeze_iteration = int(frozen["iteration"])

    # -- loggers ---------------------------------------------------------------------------

    def _step(self) -> int:
        return int(self.tracker.iteration) if self.tracker is not None else 0

    def _log(self, new: Mapping[str, np.ndarray]) -> None:
        if not (self.loggers and self.writes):
            return
        sites = self.tracker.sites if self.log_sites else []
        for k, iteration in enumerate(new["iteration"]):
            if iteration <= self.logged:
                continue
            values = {"regimes/delta_w": float(new["dw"][k]), "regimes/delta_a": float(new["da"][k])}
            values.update({f"regimes/delta_a/{s}": float(new[f"da:{s}"][k]) for s in sites})
            self._log_values(values, step=int(iteration))
        self.logged = max(self.logged, int(new["iteration"][-1]))

    def _log_values(self, values: Mapping[str, float], step: int | None = None) -> None:
        if not (self.loggers and self.writes):
            return
        step = self._step() if step is None else step
        for logger in self.loggers:
            logger.log_metrics(dict(values), step=step)


def save_figure(directory: RunDirectory) -> None:
    """The run's figure, when matplotlib is installed (the records are what matter)."""
    if not available("matplotlib"):
        return
    from regimes.plots import save_run_figure

    save_run_figure(directory.path)


def innermost_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under host wrappers (Lightning's `_optimizer`, accelerate's `optimizer`)."""
    while True:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
            optimizer = inner
        else:
            return optimizer


def optimizer_fields(optimizer) -> dict:
    """The summary's optimizer fields from a torch optimizer (its first parameter group)."""
    optimizer = innermost_optimizer(optimizer)
    group = optimizer.param_groups[0]
    fields = {
        "optimizer": type(optimizer).__name__.lower(),
        "lr": group.get("lr"),
        "weight_decay": group.get("weight_decay"),
        "momentum": group.get("momentum"),
        "nesterov": group.get("nesterov"),
    }
    return {
        k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
        for k, v in fields.items()
        if v is not None
    }


def _is_scalar(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _scalar(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def default_out(root) -> Path:
    """Where an adapter writes when not told: `<root>/regimes`."""
    return Path(root) / "regimes"
