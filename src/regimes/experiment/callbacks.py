"""Callbacks of the training loop (skorch's shape): empty `on_*` methods that take the
run's state and `**kwargs`, so a callback overrides only what it needs and new keyword
arguments never break an old callback. `__init__` only stores arguments; what a callback
learns during a run ends in `_`, and `state_dict()` / `load_state_dict()` carry it over a
resume.

The loop's own work is done by callbacks too: `EarlyStopping`, `RecordWriter` (the run
directory), `Checkpoint` (what --resume continues from) and `ProgressBar`.

    class PrintRho(Callback):
        def on_epoch_end(self, run, **kwargs):
            print(run.epoch, run.summary["rho"])

    train_run(config, "runs/x", callbacks=[PrintRho()])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from regimes.records import Status

__all__ = ["Callback", "EarlyStopping", "RecordWriter", "RegimeDetection", "Checkpoint", "ProgressBar", "notify"]


class Callback:
    """Hooks of the training loop; `run` is its `RunState` (regimes.experiment.training)."""

    def on_train_begin(self, run, **kwargs) -> None:
        """After setup (and after a resume restored the state), before the first epoch."""

    def on_step_end(self, run, **kwargs) -> None:
        """After every optimizer step and its measurement (`loss`: the batch's loss, on the device)."""

    def on_epoch_end(self, run, **kwargs) -> None:
        """After the epoch's evaluation (`row`: its train/validation scores)."""

    def on_train_end(self, run, **kwargs) -> None:
        """After the last epoch, the run's status decided (finished or diverged)."""

    def on_interrupt(self, run, **kwargs) -> None:
        """On Ctrl-C or SIGTERM: the run stops as `interrupted` and can be resumed."""

    def on_regime_change(self, run, **kwargs) -> None:
        """The online detector changed its answer (`event`: a `regimes.detect.RegimeEvent`,
        its steps in measurements; `iteration`: the optimizer step it settled at, or None)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def notify(callbacks, hook: str, run, **kwargs) -> None:
    for callback in callbacks:
        getattr(callback, hook)(run, **kwargs)


@dataclass
class EarlyStopping(Callback):
    """Stop after `patience` epochs without an improvement larger than `min_delta`.

    `best_score` is early stopping's reference: it moves only by more than `min_delta`.
    """

    patience: int
    min_delta: float
    higher_is_better: bool = True
    best_score: float = math.nan
    best_epoch: int = 0
    epochs_without_improvement: int = 0

    def update(self, score: float, epoch: int) -> bool:
        """Record the epoch's validation score; True when training should stop."""
        gain = score - self.best_score if self.higher_is_better else self.best_score - score
        if math.isnan(self.best_score) or gain > self.min_delta:
            self.best_score, self.best_epoch, self.epochs_without_improvement = score, epoch, 0
        else:
            self.epochs_without_improvement += 1
        return self.epochs_without_improvement >= self.patience

    def on_epoch_end(self, run, row, **kwargs) -> None:
        if run.status != Status.DIVERGED and self.update(row["val_score"], run.epoch):
            run.stop = True

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("best_score", "best_epoch", "epochs_without_improvement")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class RecordWriter(Callback):
    """Writes the run directory as the run goes: the new step records and all epoch rows
    after every epoch, and the summary (status `running` until the end)."""

    CURVES = ("dw", "dw_layerwise", "da")  # what the summary is computed from

    def __init__(self, run_dir, columns=CURVES):
        self.run_dir, self.columns = run_dir, columns

    def on_train_begin(self, run, **kwargs) -> None:
        # What is on disk (after a resume, rewound to the checkpoint) is the curve so far.
        on_disk = self.run_dir.read_steps(columns=["iteration", *self.CURVES])
        self.written_ = int(on_disk["iteration"][-1]) if len(on_disk["iteration"]) else 0
        self.curves_ = {name: [on_disk.get(name, np.zeros(0))] for name in self.CURVES}

    def on_epoch_end(self, run, **kwargs) -> None:
        tracker = run.tracker
        names = [*self.columns, *(f"da:{site}" for site in tracker.sites)]
        tensors = [f"dw:{name}" for name in tracker.parameter_names]
        new = tracker.records(since=self.written_, names=list(dict.fromkeys([*names, *self.CURVES, *tensors])))
        if len(new["iteration"]):
            # The per-tensor table first: a crash between the two leaves it ahead, and a
            # resume truncates both to the checkpoint.
            self.run_dir.append_tensor_steps(new["iteration"], run.epoch, tracker.parameter_names,
                                             np.column_stack([new[t] for t in tensors]))  # fmt: skip
            records = {"iteration": new["iteration"], "epoch": np.full(len(new["iteration"]), run.epoch, dtype=np.int64)}
            records.update({name: new[name] for name in names})
            self.run_dir.append_steps(records)
            self.written_ = int(new["iteration"][-1])
            for name in self.curves_:
                self.curves_[name].append(new[name])
        self.run_dir.write_epochs(run.epochs)
        self.run_dir.write_summary(run.summarize(self.curves(), Status.RUNNING if not run.stop else run.status))

    def curves(self) -> dict[str, np.ndarray]:
        for chunks in self.curves_.values():
            if len(chunks) > 1:
                chunks[:] = [np.concatenate(chunks)]
        return {name: chunks[0] for name, chunks in self.curves_.items()}

    def on_train_end(self, run, **kwargs) -> None:
        run.summary = run.summarize(self.curves(), run.status)
        self.run_dir.write_summary(run.summary)

    def on_interrupt(self, run, **kwargs) -> None:
        if not hasattr(self, "curves_"):  # interrupted before the loop began: the curves are on disk
            self.on_train_begin(run)
        self.run_dir.write_summary(run.summarize(self.curves(), Status.INTERRUPTED))


class RegimeDetection(Callback):
    """Feeds every measured step to the online detector (`regimes.detect`) at the end of each
    epoch, in order, and tells every callback `on_regime_change`. It reads the curves the
    headline rho is computed from (the config's weight change, and da); after a resume it
    replays what is on disk, so its answers are those of an uninterrupted run."""

    def __init__(self, run_dir, tau: float = 0.1):
        self.run_dir, self.tau = run_dir, tau

    def on_train_begin(self, run, **kwargs) -> None:
        from regimes.detect import RegimeChangeDetector

        self.weights_ = "dw_layerwise" if run.config.weight_change == "layerwise" else "dw"
        self.every_ = run.config.track_every
        self.detector_ = RegimeChangeDetector(max(1, run.batches_per_epoch // self.every_), self.tau)
        on_disk = self.run_dir.read_steps(columns=["iteration", self.weights_, "da"])
        for dw, da in zip(on_disk.get(self.weights_, ()), on_disk["da"]):
            self.detector_.update(float(dw), float(da))  # replay: no events for the past
        self.read_ = int(on_disk["iteration"][-1]) if len(on_disk["iteration"]) else 0

    def on_epoch_end(self, run, **kwargs) -> None:
        new = run.tracker.records(since=self.read_, names=[self.weights_, "da"])
        if len(new["iteration"]):
            self.read_ = int(new["iteration"][-1])
        for dw, da in zip(new[self.weights_], new["da"]):
            for event in self.detector_.update(float(dw), float(da)):
                notify(run.callbacks, "on_regime_change", run, event=event, iteration=self.iteration(event.step))

    def iteration(self, step: int | None) -> int | None:
        """The optimizer step of the detector's `step`-th measurement."""
        return None if step is None else step * self.every_

    @property
    def settled(self) -> tuple[int | None, int | None]:
        """(dw, da): the iteration each curve settled at, as the detector says now (None, None
        before the run began)."""
        if not hasattr(self, "detector_"):
            return None, None
        return self.iteration(self.detector_.settled_w), self.iteration(self.detector_.settled_p)


class Checkpoint(Callback):
    """Saves the run's state after every epoch (atomically), for --resume."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def on_epoch_end(self, run, **kwargs) -> None:
        self.run_dir.write_checkpoint(run.state_dict())


class ProgressBar(Callback):
    """A tqdm bar over epochs with the last epoch's scores and the last dw and da; at the end,
    a line saying why a run stopped before max_epochs (early stopping, divergence), on stderr."""

    def on_train_begin(self, run, **kwargs) -> None:
        from tqdm.auto import tqdm

        config = run.config
        self.bar_ = tqdm(total=config.max_epochs, initial=run.epoch, desc=config.preset or config.model,
                         unit="epoch", dynamic_ncols=True)  # fmt: skip
        self.last_ = run.tracker.iteration

    def on_epoch_end(self, run, row, **kwargs) -> None:
        last = run.tracker.records(since=self.last_, names=["dw", "da"])
        if len(last["iteration"]):
            self.last_ = int(last["iteration"][-1])
        self.bar_.n = run.epoch
        self.bar_.set_postfix(
            loss=f"{row['train_loss']:.4f}", train=f"{row['train_score']:.4f}", val=f"{row['val_score']:.4f}",
            dw=f"{last['dw'][-1]:.2e}" if len(last["dw"]) else "-", da=f"{last['da'][-1]:.4f}" if len(last["da"]) else "-",
        )  # fmt: skip
        self.bar_.refresh()

    def on_train_end(self, run, **kwargs) -> None:
        import sys

        from regimes.runs import describe_stop

        self.bar_.close()
        if run.status == Status.DIVERGED or len(run.epochs) < run.config.max_epochs:
            stopper = next((c for c in run.callbacks if isinstance(c, EarlyStopping)), None)
            reason = describe_stop(status=run.status, stop_epoch=len(run.epochs), max_epochs=run.config.max_epochs,
                                   epochs=run.epochs, stopper=stopper, score_name=run.task.score_name)  # fmt: skip
            self.bar_.write(f"stopped {reason}", file=sys.stderr)

    def on_interrupt(self, run, **kwargs) -> None:
        if hasattr(self, "bar_"):
            self.bar_.close()
