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

__all__ = ["Callback", "EarlyStopping", "RecordWriter", "Checkpoint", "ProgressBar", "notify"]


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

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def notify(callbacks, event: str, run, **kwargs) -> None:
    for callback in callbacks:
        getattr(callback, event)(run, **kwargs)


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

    def __init__(self, run_dir, columns=("dw", "da")):
        self.run_dir, self.columns = run_dir, columns

    def on_train_begin(self, run, **kwargs) -> None:
        # What is on disk (after a resume, rewound to the checkpoint) is the curve so far;
        # the layerwise weight change is kept in memory only until the steps table has it.
        on_disk = self.run_dir.read_steps(columns=["iteration", "dw", "da"])
        self.written_ = int(on_disk["iteration"][-1]) if len(on_disk["iteration"]) else 0
        self.curves_ = {name: [on_disk.get(name, np.full(len(on_disk["iteration"]), np.nan))] for name in self.CURVES}

    def on_epoch_end(self, run, **kwargs) -> None:
        tracker = run.tracker
        names = [*self.columns, *(f"da:{site}" for site in tracker.sites)]
        new = tracker.records(since=self.written_, names=list(dict.fromkeys([*names, *self.CURVES])))
        if len(new["iteration"]):
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


class Checkpoint(Callback):
    """Saves the run's state after every epoch (atomically), for --resume."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def on_epoch_end(self, run, **kwargs) -> None:
        self.run_dir.write_checkpoint(run.state_dict())


class ProgressBar(Callback):
    """A tqdm bar over epochs with the last epoch's scores and the last dw and da."""

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
        self.bar_.close()

    def on_interrupt(self, run, **kwargs) -> None:
        if hasattr(self, "bar_"):
            self.bar_.close()
