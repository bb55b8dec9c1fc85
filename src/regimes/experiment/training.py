"""The study's training protocol (SPEC section 4), as one loop you can read top to bottom.

From-scratch model, the config's optimizer without schedule, early stopping on the
validation score, and a `Tracker` on a fixed probe drawn from the validation split
with the run's seed. Early stopping, the run directory's writer, checkpoints and the
progress bar are callbacks (regimes.experiment.callbacks), called per step and per
epoch with one `RunState`; a checkpoint saves that state and `resume=True` restores
it, continuing to the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import regimes
from regimes.analysis import summarize_run
from regimes.data import load_dataset
from regimes.data.registry import DATASETS
from regimes.experiment.callbacks import Callback, Checkpoint, EarlyStopping, RecordWriter, RegimeDetection, notify
from regimes.experiment.config import RunConfig
from regimes.experiment.distributed import DataParallel, follow_run
from regimes.experiment.freezing import FREEZE_COLUMNS, FreezeRegime
from regimes.experiment.geometry import GeometryRecorder
from regimes.experiment.tasks import get_task
from regimes.extras import available
from regimes.freeze import ValuePattern
from regimes.geometry.watch import AnchorWatch
from regimes.quantities import UpdateNorm
from regimes.records import RunDirectory, RunSummary, Status, software_versions, study_fields
from regimes.runs import best_validation
from regimes.zoo import create_model, model_sites
from regimes.zoo.registry import ModelArgumentError, check_arguments, missing_arguments

__all__ = [
    "RunState", "train_run", "resolve_device", "check_names", "setup_run", "train_epoch", "evaluate", "make_optimizer",
    "seed_everything", "batches_per_epoch",
]  # fmt: skip


def make_optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay,
                               momentum=config.momentum, nesterov=config.nesterov)  # fmt: skip
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device


def batches_per_epoch(n_train: int, batch_size: int) -> int:
    n = -(-n_train // batch_size)
    return n - 1 if n > 1 and n_train % batch_size == 1 else n  # a last batch of one breaks BatchNorm


@dataclass
class RunState:
    """Everything one run is made of, as the loop and its callbacks see it."""

    config: RunConfig
    device: torch.device
    task: object
    splits: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tracker: regimes.Tracker | None  # None on a DDP process other than the first
    order: torch.Generator  # shuffling, saved in checkpoints
    batches_per_epoch: int
    callbacks: list[Callback] = field(default_factory=list)
    epoch: int = 0  # the last finished epoch
    epochs: list[dict] = field(default_factory=list)  # one row of scores per finished epoch
    status: Status = Status.FINISHED  # what the run ends as if nothing goes wrong
    stop: bool = False  # set by a callback (early stopping) or on divergence
    seconds_before: float = 0.0  # time spent before a resume
    started: float = field(default_factory=time.time)
    summary: RunSummary | None = None  # the final summary, set at the end of the run
    parallel: DataParallel | None = None  # under torchrun: this process's place (experiment/distributed.py)

    def autocast(self):
        """The training's precision: bf16 autocast for precision "bf16", else nothing."""
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def summarize(self, curves: dict[str, np.ndarray], status: Status) -> RunSummary:
        """The run's summary from its whole curves so far (`dw`, `dw_layerwise`, `da`)."""
        config, stopper = self.config, self._callback(EarlyStopping)
        detection = self._callback(RegimeDetection)
        settled_w, settled_p = detection.settled if detection is not None else (None, None)
        per_epoch = max(1, self.batches_per_epoch // config.track_every)  # measurements per epoch
        numbers = summarize_run(curves, per_epoch, config.weight_change)  # the headline reading and both rhos
        best = best_validation(self.epochs, self.task.higher_is_better) or (math.nan, 0)
        return RunSummary(
            preset=config.preset, model=config.model, dataset=config.dataset,
            optimizer=config.optimizer, momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay, lr=config.lr, batch_size=config.batch_size,
            precision=config.precision, seed=config.seed,
            score_name=self.task.score_name, higher_is_better=self.task.higher_is_better,
            best_score=best[0], best_epoch=best[1],
            stopping_score=stopper.best_score, stopping_epoch=stopper.best_epoch,
            stop_epoch=len(self.epochs), max_epochs=config.max_epochs,
            **study_fields(numbers),
            settled_w_online=settled_w, settled_p_online=settled_p,
            freeze_iteration=getattr(self._callback(FreezeRegime), "iteration_", None),
            batches_per_epoch=self.batches_per_epoch, steps=int(self.tracker.iteration),
            sites=list(self.tracker.sites), probe_size=self.tracker.probe_size,
            train_size=len(self.splits.train), val_size=len(self.splits.val), data_source=self.splits.source,
            status=status, seconds=self.seconds_before + time.time() - self.started,
            device=str(self.device), versions=software_versions(), threads=torch.get_num_threads(),
        )  # fmt: skip

    def _callback(self, kind: type) -> Callback | None:
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    # -- checkpoints: the state, and each callback's -----------------------------------------

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tracker": self.tracker.state_dict(),
            "order_rng": self.order.get_state(),
            "rng": _rng_state(),
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks},
            "seconds": self.seconds_before + time.time() - self.started,
        }

    def load_state_dict(self, state: dict, epochs: list[dict]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tracker.load_state_dict(state["tracker"])
        self.order.set_state(state["order_rng"])
        _set_rng_state(state["rng"])
        for callback in self.callbacks:
            callback.load_state_dict(state["callbacks"].get(type(callback).__name__, {}))
        self.epoch = state["epoch"]
        self.epochs = epochs[: self.epoch]
        self.seconds_before = state["seconds"]



def train_run(config: RunConfig, out, *, device: str | None = None, data_dir=None, resume: bool = False,
              force: bool = False, callbacks: list[Callback] = ()) -> RunSummary:  # fmt: skip
    """Train one run into the directory `out` and return its summary.

    `device`: None trains on CUDA if present, else on the CPU (`resolve_device`).
    `callbacks` are called after the built-in ones (early stopping, records, checkpoint).

    One process writes a run: the directory's lock (`RunDirectory.writer`) is held from the
    first look at it to the last write, so a second writer is refused before it changes
    anything. A run that fails before its first epoch is recorded leaves no directory behind
    (an interrupted one keeps its `interrupted` summary, and the next run there replaces it).
    """
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
        run = setup_run(config, device, data_dir, parallel)
    made = _first_missing_folder(run_dir.path)  # what a failed start removes again
    with run_dir.writer():
        checkpoint = None
        if resume:
            if (previous := run_dir.read_summary()) is not None and previous.status.done:
                return previous  # nothing left to do
            checkpoint = run_dir.read_checkpoint()  # a damaged one: one message, nothing changed
            run_dir.check_records()
            run = setup_run(config, device, data_dir, parallel)
        started_here = checkpoint is None  # this call writes the run's first records
        if started_here:
            run_dir.create(config.to_dict(), force=force or resume)  # refuses a different run unless force
            if not force and not resume and (existing := run_dir.read_summary()) is not None:
                raise FileExistsError(
                    f"{run_dir.path} already holds this run ({existing.get('status')}, {existing.get('stop_epoch')} "
                    "epochs): use --resume to continue it, --force to start it again, or choose another --out"
                )
        # A freeze acts after the detector has heard the epoch and before the records are written.
        freezing = [FreezeRegime(config.freeze)] if config.freeze != "off" else []
        columns = FREEZE_COLUMNS if freezing else RecordWriter.CURVES
        geometry = [GeometryRecorder(run_dir)] if config.geometry else []  # before the checkpoint: its anchor
        columns += GeometryRecorder.STEP_COLUMNS if geometry else ()
        run.callbacks = [EarlyStopping(config.early_stopping_patience, config.min_delta, run.task.higher_is_better),
                         RegimeDetection(run_dir), *freezing, RecordWriter(run_dir, columns), *geometry,
                         Checkpoint(run_dir), *callbacks]  # fmt: skip
        try:
            if checkpoint is not None:
                run.load_state_dict(checkpoint, run_dir.read_epochs())
                run_dir.truncate_steps(run.tracker.iteration)
            notify(run.callbacks, "on_train_begin", run)
            for epoch in range(run.epoch + 1, config.max_epochs + 1):
                run.epoch = epoch
                row = train_epoch(run)
                run.epochs.append(row)
                if not math.isfinite(row["train_loss"]):
                    run.status, run.stop = Status.DIVERGED, True
                notify(run.callbacks, "on_epoch_end", run, row=row)
                if parallel is not None:
                    run.stop = parallel.agree(run.stop)
                if run.stop:
                    break
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM in the CLI: resumable from the last epoch
            notify(run.callbacks, "on_interrupt", run)
            raise
        except BaseException as error:
            if started_here and not run_dir.has_records():  # failed before its first epoch: leave nothing
                run_dir.remove(up_to=made)
            else:  # its records stay; its summary says how it ended
                writer = run._callback(RecordWriter)
                if writer is not None and hasattr(writer, "curves_"):
                    failed = run.summarize(writer.curves(), Status.FAILED)
                    with contextlib.suppress(OSError):  # a full disk must not hide the error itself
                        run_dir.write_summary(failed.replace(error=f"{type(error).__name__}: {error}"))
            raise
        notify(run.callbacks, "on_train_end", run)
        _save_figure(run_dir)
        run.tracker.close()
        if parallel is not None:
            parallel.close()
        return run.summary


def _first_missing_folder(path: Path):
    """The outermost folder of `path` that does not exist yet (None when `path` exists)."""
    path = Path(path).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device to train on: `name` checked against this machine (None: CUDA if present, else CPU)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this PyTorch build or machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS (Apple GPUs) is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not supported by the runner: use cpu, cuda, cuda:N or mps")
    return device


def check_names(config: RunConfig) -> None:
    """The config's task, data set, model and model arguments exist; checked without loading
    or building anything (a sweep checks every trial before it starts)."""
    get_task(config.task)
    DATASETS.get(config.dataset)
    check_arguments(config.model, config.model_args, complete=False)  # the data may fix what is missing


def setup_run(config: RunConfig, device: torch.device, data_dir=None, parallel: DataParallel | None = None) -> RunState:
    """Data, model, optimizer and tracker, all seeded from the config."""
    task = get_task(config.task)
    seed_everything(config.seed)
    splits = load_dataset(config.dataset, data_dir, **config.data_args)
    task.setup(splits)
    _check_vocabulary(config, splits)
    _check_data_arguments(config, splits)
    model = create_model(config.model, **config.model_args).to(device)
    if parallel is not None:
        parallel.wrap(model)
    optimizer = make_optimizer(config, model)
    probe_rng = torch.Generator().manual_seed(config.seed)
    val_tensors = splits.val.tensors
    probe_indices = torch.randperm(len(val_tensors[0]), generator=probe_rng)[: config.probe_size]
    probe = task.probe(val_tensors, probe_indices, device)
    tracker = None
    if parallel is None or parallel.main:  # under DDP the first process alone tracks
        tracker = regimes.Tracker(model, probe, every=config.track_every, sites=config.sites or model_sites(config.model),
                                  autocast=torch.bfloat16 if config.precision == "bf16" else None,
                                  activation=config.model_args.get("activation", "relu"),
                                  quantities=_quantities(config))  # fmt: skip
    return RunState(config, device, task, splits, model, optimizer, tracker,
                    order=torch.Generator().manual_seed(config.seed),
                    batches_per_epoch=batches_per_epoch(len(splits.train), config.batch_size), parallel=parallel)  # fmt: skip


def _quantities(config: RunConfig) -> list:
    """What the tracker measures beyond dw and da: the value network's pattern under a freeze,
    the step sizes and the distance from the epoch's start for the geometry."""
    quantities = [ValuePattern()] if config.freeze != "off" else []
    if config.geometry:
        quantities += [UpdateNorm(), AnchorWatch()]
    return quantities


def train_epoch(run: RunState) -> dict:
    """One pass over the shuffled training split, a measurement after every optimizer step,
    then the validation split; returns the epoch's row of scores."""
    config, model, task, device = run.config, run.model, run.task, run.device
    epoch_start = time.time()
    train_tensors = run.splits.train.tensors
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    n_train = len(train_tensors[0])
    permutation = torch.randperm(n_train, generator=run.order)[: run.batches_per_epoch * config.batch_size]
    trained, batches = model, permutation.split(config.batch_size)
    if run.parallel is not None:  # DDP: this process's share of each global batch, through the wrapper
        trained, batches = run.parallel.model, run.parallel.epoch_batches(permutation, config.batch_size, config.seed, run.epoch)
    for indices in batches:
        batch = task.batch(train_tensors, indices, device)
        with run.autocast():
            loss, batch_correct, count = task.loss(trained, batch)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        if run.tracker is not None:
            run.tracker.step()
        loss_sum += loss.detach() * count
        correct += batch_correct
        seen += count
        notify(run.callbacks, "on_step_end", run, loss=loss)
    if run.parallel is not None:
        loss_sum, correct, seen = run.parallel.reduce_epoch(loss_sum, correct, seen)
    train_loss = loss_sum.item() / seen  # one host sync per epoch
    with run.autocast():
        val_loss, val_score = evaluate(model, task, run.splits.val.tensors, device, task.eval_batch_size or config.batch_size)
    return {
        "epoch": run.epoch,
        "train_loss": train_loss,
        "train_score": task.score(loss_sum.item(), correct.item(), seen),
        "val_loss": val_loss,
        "val_score": val_score,
        "seconds": time.time() - epoch_start,
    }


@torch.no_grad()
def evaluate(model, task, tensors, device, batch_size: int = 1024) -> tuple[float, float]:
    """Mean loss and score over a split, in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0  # predictions: samples, or tokens for language models
    n = len(tensors[0])
    for start in range(0, n, batch_size):
        indices = torch.arange(start, min(start + batch_size, n))
        loss, batch_correct, count = task.loss(model, task.batch(tensors, indices, device))
        loss_sum += loss * count
        correct += batch_correct
        seen += count
    model.train(was_training)
    return loss_sum.item() / seen, task.score(loss_sum.item(), correct.item(), seen)


def _check_vocabulary(config: RunConfig, splits) -> None:
    vocab = config.model_args.get("vocab_size")
    if splits.vocab_size and vocab is not None and vocab < splits.vocab_size:
        raise ValueError(
            f"model_args.vocab_size = {vocab} is smaller than the tokenizer's vocabulary ({splits.vocab_size}) "
            f"for {config.dataset}: set model_args.vocab_size = data_args.vocab_size"
        )


def _check_data_arguments(config: RunConfig, splits) -> None:
    """A model argument the data set fixes (input size, classes) that the config leaves out is
    an error that gives the data set's values, so that the config stays the whole record."""
    from_data = {"input_size": math.prod(splits.input_shape), "num_classes": splits.num_classes}
    missing = [name for name in missing_arguments(config.model, config.model_args) if name in from_data]
    if missing:
        values = ", ".join(f"{name} = {from_data[name]}" for name in missing)
        sets = " ".join(f"--set model_args.{name}={from_data[name]}" for name in missing)
        raise ModelArgumentError(
            f"model {config.model!r} needs {', '.join(missing)}; for data set {config.dataset!r} that is {values}: "
            f"add them to the config's [model_args] table, or pass {sets}"
        )


def _save_figure(run_dir: RunDirectory) -> None:
    if not available("matplotlib"):  # the figure is optional; the records are what matter
        return
    from regimes.plots import save_run_figure

    save_run_figure(run_dir.path)


# ---------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
