"""The study's training protocol (SPEC section 4), as one loop you can read top to bottom.

From-scratch model, the config's optimizer without schedule, early stopping on the
validation score, and a `Tracker` on a fixed probe drawn from the validation split with the
run's seed (experiment/setup.py). The run's records, online detector, freeze and summary
are a `regimes.Run`, as for every other host; early stopping, the geometry, checkpoints and
the progress bar are callbacks (experiment/callbacks.py), called per step and per epoch
with one `RunState`. A checkpoint saves that state; `resume=True` restores it and continues
to the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from regimes.errors import NoRunError, RegimesError, UnsupportedError
from regimes.experiment.callbacks import Callback, Checkpoint, EarlyStopping, EpochRecords, check_unique_names, notify
from regimes.experiment.config import RunConfig
from regimes.experiment.distributed import DataParallel, follow_run
from regimes.experiment.epoch import train_epoch
from regimes.experiment.geometry import GeometryRecorder
from regimes.experiment.setup import resolve_device, setup_run
from regimes.experiment.state import RunState
from regimes.loggers import make_loggers
from regimes.records import DamagedRecordError, RunDirectory, RunSummary, Status
from regimes.run import Run, warn_late_freeze

__all__ = ["train_run"]


def train_run(
    config: RunConfig,
    out,
    *,
    device: str | None = None,
    data_dir=None,
    resume: bool = False,
    force: bool = False,
    callbacks: list[Callback] = (),
    log: Sequence[str] = (),
) -> RunSummary:
    """Train one run into the directory `out` and return its summary.

    `device`: None trains on CUDA if present, else on the CPU (`resolve_device`).
    `callbacks` are called after the built-in ones (early stopping, geometry, checkpoint).
    `log`: loggers the run's curves go to as it trains ("tensorboard", "mlflow", "wandb":
    `regimes.loggers`).

    One process writes a run: the directory's lock (`RunDirectory.writer`) is held from the
    first look at it to the last write, so a second writer is refused before it changes
    anything. A run that fails before its first epoch is recorded leaves no directory behind
    (an interrupted one keeps its `interrupted` summary, and the next run there replaces it).
    """
    check_unique_names([EarlyStopping(0, 0.0), EpochRecords(), GeometryRecorder(None), Checkpoint(None), *callbacks])
    loggers = make_loggers(log, out, config.to_dict())  # an unknown name or a missing extra: before anything is written
    if config.freeze != "off" and DataParallel.requested():
        raise UnsupportedError(
            f"freeze = {config.freeze!r} under torchrun: the runner freezes the regime in one process; "
            'train this run with one process (regimes run, without torchrun), or set freeze = "off"'
        )
    parallel = DataParallel.from_environment(device)  # under torchrun: one process of a DDP run
    if parallel is not None and not parallel.main:
        return follow_run(config, out, parallel, data_dir=data_dir, resume=resume)
    run_dir = RunDirectory(out)
    device = parallel.device if parallel is not None else resolve_device(device)
    if resume:
        run_dir.check_resumable()
    else:
        # Everything that can be wrong with the config, the data or the device shows up in
        # setup, before the run directory exists, so a failed start leaves nothing behind.
        state = setup_run(config, device, data_dir, parallel)
    made = _first_missing_folder(run_dir.path)  # what a failed start removes again
    with run_dir.writer():
        checkpoint = None
        if resume:
            if (previous := run_dir.read_summary()) is not None and previous.status.done:
                return previous  # nothing left to do
            checkpoint = run_dir.read_checkpoint()  # a damaged one: one message, nothing changed
            if checkpoint is None:
                raise NoRunError(
                    f"{run_dir.path} has no checkpoint to resume from (it ended before its first epoch, or its "
                    f"checkpoint was removed); nothing there was changed. Start it again with "
                    f"`regimes run {run_dir.config_path} --out {run_dir.path} --force`"
                )
            run_dir.check_records()
            state = setup_run(config, device, data_dir, parallel)
        stopper = EarlyStopping(config.early_stopping_patience, config.min_delta, state.task.higher_is_better)
        geometry = [GeometryRecorder(run_dir)] if config.geometry else []  # before the checkpoint: its anchor
        # The order is the order of work at an epoch's end: early stopping decides, the run writes
        # its records (and tells the detector's events), the geometry, then the checkpoint.
        state.callbacks = [stopper, EpochRecords(), *geometry, Checkpoint(run_dir), *callbacks]
        state.run = Run(
            run_dir,
            config=config.to_dict(),
            host="runner",
            force=force,
            resume=checkpoint is not None,
            weight_change=config.weight_change,
            higher_is_better=state.task.higher_is_better,  # the best epoch of a perplexity is its lowest
            batches_per_epoch=state.batches_per_epoch,
            freeze=config.freeze,
            describe=_describe(state),
            contributors=state.callbacks,
            loggers=loggers,
            lock=False,
        )
        state.run.attach(state.tracker)
        try:
            if checkpoint is None:
                state.run.open()  # refuses a different run there unless force
            else:
                _resume(state, checkpoint, run_dir)
            _train(state)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM in the CLI: resumable from the last epoch
            notify(state.callbacks, "on_interrupt", state)
            state.run.abort(flush=False)  # a resume starts from the last epoch's checkpoint
            raise
        except BaseException as error:
            if checkpoint is None and not run_dir.has_records():  # failed before its first epoch: leave nothing
                state.run.close()
                run_dir.remove(up_to=made)
            else:  # its records stay; its summary says how it ended
                try:
                    state.run.abort(error, flush=False)
                except OSError:  # a full disk must not hide the error itself
                    state.run.close()
            raise
        notify(state.callbacks, "on_train_end", state)
        state.run.finish(state.status)
        if parallel is not None:
            parallel.close()
        return state.run.summary


def _resume(state: RunState, checkpoint: dict, run_dir: RunDirectory) -> None:
    """Restore the checkpoint into the run set up from its config; one that does not fit it
    (another model, missing keys: a file from elsewhere) is a DamagedRecordError."""
    try:
        state.load_state_dict(checkpoint, run_dir.read_epochs())
    except RegimesError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise DamagedRecordError(
            f"{run_dir.checkpoint_path} does not fit the run its config describes ({type(error).__name__}: "
            f"{str(error)[:300]}); nothing was changed. Start the run again with "
            f"`regimes run {run_dir.config_path} --out {run_dir.path} --force`, or with another --out"
        ) from None


def _train(state: RunState) -> None:
    """The epochs, from the one after the last finished (0, or a checkpoint's) to the end."""
    config = state.config
    warn_late_freeze(config.freeze, config.max_epochs)
    notify(state.callbacks, "on_train_begin", state)
    for epoch in range(state.epoch + 1, config.max_epochs + 1):
        state.epoch = epoch
        row = train_epoch(state)
        state.epochs.append(row)
        if not math.isfinite(row["train_loss"]):
            state.status, state.stop = Status.DIVERGED, True
            state.stop_reason = f"at epoch {epoch}: the training loss became NaN or infinite (diverged)"
        notify(state.callbacks, "on_epoch_end", state, row=row)
        if state.parallel is not None:
            state.stop = state.parallel.agree(state.stop)
        if state.stop:
            break


def _describe(state: RunState) -> dict:
    """What the runner knows of its run for the summary, beyond what the run object records."""
    config = state.config
    return {
        "preset": config.preset,
        "model": config.model,
        "dataset": config.dataset,
        "optimizer": config.optimizer,
        "momentum": config.momentum,
        "nesterov": config.nesterov,
        "weight_decay": config.weight_decay,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "precision": config.precision,
        "seed": config.seed,
        "score_name": state.task.score_name,
        "higher_is_better": state.task.higher_is_better,
        "max_epochs": config.max_epochs,
        "train_size": len(state.splits.train),
        "val_size": len(state.splits.val),
        "data_source": state.splits.source,
        "device": str(state.device),
        "majority_score": _majority_score(state),
    }


def _majority_score(state: RunState) -> float | None:
    """The validation split's majority-class accuracy, the score a run must beat to have learned
    (None for a task whose score is not an accuracy over class labels)."""
    tensors = state.splits.val.tensors
    labels = tensors[-1] if len(tensors) > 1 else None
    if not state.task.higher_is_better or labels is None or labels.dim() != 1 or labels.is_floating_point():
        return None
    return float(labels.bincount().max()) / len(labels)


def _first_missing_folder(path: Path):
    """The outermost folder of `path` that does not exist yet (None when `path` exists)."""
    path = Path(path).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path
