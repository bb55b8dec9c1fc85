"""Callbacks of the training loop (skorch's shape): empty `on_*` methods that take the
run's state and `**kwargs`, so a callback overrides only what it needs and new keyword
arguments never break an old callback. `__init__` only stores arguments; what a callback
learns during a run ends in `_`, and `state_dict()` / `load_state_dict()` carry it over a
resume.

The loop's own work is done by callbacks too: `EarlyStopping`, `Checkpoint` (what --resume
continues from) and `ProgressBar`; the run's records, detector and freeze are the run
object's (`regimes.Run`), which the loop calls at every epoch's end.

    >>> import tempfile
    >>> from regimes.experiment import Callback, get_preset, train_run
    >>> class PrintScore(Callback):
    ...     def on_epoch_end(self, run, row, **kwargs):
    ...         print("epoch", run.epoch, "steps", run.tracker.iteration)
    >>> config = get_preset("mlp-breast-cancer").replace(max_epochs=2)
    >>> summary = train_run(config, tempfile.mkdtemp() + "/run", callbacks=[PrintScore()])
    epoch 1 steps 15
    epoch 2 steps 30
    >>> print(summary["status"], summary["stop_epoch"])
    finished 2

A callback's `name` (its class's, unless given) keys its state in a checkpoint, so two
callbacks of one run cannot share a name. What a callback adds to the run's summary it
returns from `summary_fields()`: nothing looks a callback up by its type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from regimes.errors import UsageError
from regimes.records import Status

__all__ = ["Callback", "EarlyStopping", "EpochRecords", "Checkpoint", "ProgressBar", "notify", "check_unique_names"]


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

    @property
    def name(self) -> str:
        """The key of this callback's state in a checkpoint: unique among a run's callbacks."""
        return getattr(self, "_name", None) or type(self).__name__

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def summary_fields(self) -> dict:
        """Fields this callback adds to the run's summary (`regimes.records.RunSummary`)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def notify(callbacks, hook: str, run, **kwargs) -> None:
    for callback in callbacks:
        getattr(callback, hook)(run, **kwargs)


def check_unique_names(callbacks) -> None:
    """Two callbacks of one run with one name would overwrite each other's saved state."""
    seen: dict[str, object] = {}
    for callback in callbacks:
        if callback.name in seen:
            raise UsageError(
                f"two callbacks are named {callback.name!r} ({type(seen[callback.name]).__name__} and "
                f"{type(callback).__name__}): give one another name (callback.name = '...'), so that each keeps its "
                "own state in the checkpoint"
            )
        seen[callback.name] = callback


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
            if run.epoch < run.config.max_epochs:
                from regimes.runs import describe_stop

                run.stop_reason = describe_stop(
                    status=run.status,
                    stop_epoch=run.epoch,
                    max_epochs=run.config.max_epochs,
                    epochs=run.epochs,
                    stopper=self,
                    score_name=run.task.score_name,
                )

    def summary_fields(self) -> dict:
        return {"stopping_score": self.best_score, "stopping_epoch": self.best_epoch}

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("best_score", "best_epoch", "epochs_without_improvement")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class EpochRecords(Callback):
    """Ends the epoch in the run object (`RunState.run`, a `regimes.Run`): its records, the
    detector (whose events every callback hears as `on_regime_change`), the freeze, the epoch
    table and the summary. After early stopping, so that the summary says how a last epoch ended."""

    def on_epoch_end(self, run, row, **kwargs) -> None:
        last = run.stop or run.epoch >= run.config.max_epochs
        events = run.run.end_epoch(run.epoch, row, last=last, status=run.status if run.stop else None)
        for event, iteration in events:
            notify(run.callbacks, "on_regime_change", run, event=event, iteration=iteration)


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
        self.bar_ = tqdm(
            total=config.max_epochs,
            initial=run.epoch,
            desc=config.preset or config.model,
            unit="epoch",
            dynamic_ncols=True,
        )
        self.last_ = run.tracker.iteration

    def on_epoch_end(self, run, row, **kwargs) -> None:
        last = run.tracker.records(since=self.last_, names=["dw", "da"])
        if len(last["iteration"]):
            self.last_ = int(last["iteration"][-1])
        self.bar_.n = run.epoch
        self.bar_.set_postfix(
            loss=f"{row['train_loss']:.4f}",
            train=f"{row['train_score']:.4f}",
            val=f"{row['val_score']:.4f}",
            dw=f"{last['dw'][-1]:.2e}" if len(last["dw"]) else "-",
            da=f"{last['da'][-1]:.4f}" if len(last["da"]) else "-",
        )
        self.bar_.refresh()

    def on_train_end(self, run, **kwargs) -> None:
        import sys

        self.bar_.close()
        if run.stop_reason is not None:
            self.bar_.write(f"stopped {run.stop_reason}", file=sys.stderr)

    def on_interrupt(self, run, **kwargs) -> None:
        if hasattr(self, "bar_"):
            self.bar_.close()
