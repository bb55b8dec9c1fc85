"""The study's training protocol (SPEC section 4), as one loop you can read top to bottom.

From-scratch model, the config's optimizer without schedule, early stopping on the
validation score, and a `Tracker` on a fixed probe drawn from the validation split
with the run's seed. Everything goes into a run directory as it happens: the step
records and scores after every epoch, with a checkpoint from which `resume=True`
continues to the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import regimes
from regimes.analysis import summarize
from regimes.data import load_dataset
from regimes.experiment.config import RunConfig
from regimes.experiment.tasks import get_task
from regimes.records import RunDirectory, atomic_write, software_versions
from regimes.zoo import create_model, model_sites


class RunDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without an improvement larger than `min_delta`."""

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


def train_run(
    config: RunConfig,
    out,
    *,
    device: str = "cpu",
    data_dir=None,
    resume: bool = False,
    force: bool = False,
    progress=None,
) -> dict:
    """Train one run into the directory `out` and return its summary.

    `progress(epoch, row, tracker)` is called after every epoch (the CLI's progress bar).
    """
    run_dir = RunDirectory(out)
    checkpoint = _load_checkpoint(run_dir) if resume else None
    if resume and (previous := run_dir.read_summary() or {}).get("status") in ("finished", "diverged"):
        return previous  # nothing left to do
    if not resume:
        run_dir.create(config.to_dict(), force=force)  # refuses a different run unless force
        if not force and (existing := run_dir.read_summary()) is not None:
            raise FileExistsError(
                f"{run_dir.path} already holds this run ({existing.get('status')}, {existing.get('stop_epoch')} "
                "epochs): use --resume to continue it, --force to start it again, or choose another --out"
            )
    device = torch.device(device)
    task = get_task(config.task)

    seed_everything(config.seed)
    splits = load_dataset(config.dataset, data_dir, **config.data_args)
    task.setup(splits)
    _check_vocabulary(config, splits)
    train_tensors, val_tensors = splits.train.tensors, splits.val.tensors
    n_train = len(train_tensors[0])
    steps_per_epoch = batches_per_epoch(n_train, config.batch_size)
    model = create_model(config.model, **config.model_args).to(device)
    optimizer = make_optimizer(config, model)
    order = torch.Generator().manual_seed(config.seed)  # shuffling, saved in checkpoints
    probe_rng = torch.Generator().manual_seed(config.seed)
    probe_indices = torch.randperm(len(val_tensors[0]), generator=probe_rng)[: config.probe_size]
    probe = task.probe(val_tensors, probe_indices, device)
    stopper = EarlyStopping(config.early_stopping_patience, config.min_delta, task.higher_is_better)
    epochs: list[dict] = []
    start_epoch = 1
    started = time.time()

    autocast = _autocast(config.precision, device)
    with autocast():  # the probe runs at the training's precision
        tracker = regimes.Tracker(model, probe, every=config.track_every, sites=config.sites or model_sites(config.model))
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        tracker.load_state_dict(checkpoint["tracker"])
        order.set_state(checkpoint["order_rng"])
        _set_rng_state(checkpoint["rng"])
        stopper = EarlyStopping(**checkpoint["early_stopping"])
        epochs = run_dir.read_epochs()[: checkpoint["epoch"]]
        start_epoch = checkpoint["epoch"] + 1
        started -= checkpoint["seconds"]
        run_dir.truncate_steps(tracker.iteration)
    elif resume:  # interrupted before its first epoch ended: start over in place
        run_dir.create(config.to_dict(), force=True)
    written = len(tracker.iterations)

    def summary(status: str) -> dict:
        return _summary(config, splits, task, stopper, epochs, tracker, steps_per_epoch, status, time.time() - started, device)

    status = "finished"
    try:
        for epoch in range(start_epoch, config.max_epochs + 1):
            epoch_start = time.time()
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            seen = 0
            permutation = torch.randperm(n_train, generator=order)[: steps_per_epoch * config.batch_size]
            for indices in permutation.split(config.batch_size):
                batch = task.batch(train_tensors, indices, device)
                with autocast():
                    loss, batch_correct, count = task.loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with autocast():
                    tracker.step()
                loss_sum += loss.detach() * count
                correct += batch_correct
                seen += count
            train_loss = loss_sum.item() / seen  # one host sync per epoch
            if not math.isfinite(train_loss):
                status = "diverged"
            with autocast():
                val_loss, val_score = evaluate(model, task, val_tensors, device, task.eval_batch_size or config.batch_size)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_score": task.score(loss_sum.item(), correct.item(), seen),
                "val_loss": val_loss,
                "val_score": val_score,
                "seconds": time.time() - epoch_start,
            }
            epochs.append(row)
            stop = stopper.update(val_score, epoch) if status != "diverged" else True
            written = _write_epoch(run_dir, tracker, epoch, written)
            run_dir.write_epochs(epochs)
            _save_checkpoint(run_dir, epoch, model, optimizer, tracker, order, stopper, time.time() - started)
            run_dir.write_summary(summary("running" if not stop else status))
            if progress is not None:
                progress(epoch, row, tracker)
            if stop:
                break
    except KeyboardInterrupt:
        run_dir.write_summary(summary("interrupted"))
        raise
    result = summary(status)
    run_dir.write_summary(result)
    _save_figure(run_dir)
    tracker.close()
    return result


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


def _autocast(precision: str, device: torch.device):
    """A context factory: bf16 autocast for precision "bf16", else nothing."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _check_vocabulary(config: RunConfig, splits) -> None:
    vocab = config.model_args.get("vocab_size")
    if splits.vocab_size and vocab is not None and vocab < splits.vocab_size:
        raise ValueError(
            f"model_args.vocab_size = {vocab} is smaller than the tokenizer's vocabulary ({splits.vocab_size}) "
            f"for {config.dataset}: set model_args.vocab_size = data_args.vocab_size"
        )


# ---------------------------------------------------------------------- records


def _write_epoch(run_dir: RunDirectory, tracker, epoch: int, written: int) -> int:
    """Append this epoch's step records; returns how many records are on disk now."""
    iterations = tracker.iterations
    if len(iterations) == written:
        return written
    new = slice(written, None)
    records = {
        "iteration": iterations[new],
        "epoch": np.full(len(iterations) - written, epoch, dtype=np.int64),
        "dw": tracker.delta_w[new],
        "da": tracker.delta_a[new],
    }
    layers = tracker.delta_a_layers[new]
    for column, site in enumerate(tracker.sites):
        records[f"da:{site}"] = layers[:, column]
    run_dir.append_steps(records)
    return len(iterations)


def _summary(config, splits, task, stopper, epochs, tracker, steps_per_epoch, status, seconds, device) -> dict:
    numbers = {}
    if len(tracker.iterations) > 0:
        numbers = summarize(tracker.delta_w, tracker.delta_a, max(1, steps_per_epoch // config.track_every))
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
        "score_name": task.score_name,
        "higher_is_better": task.higher_is_better,
        "best_score": stopper.best_score,
        "best_epoch": stopper.best_epoch,
        "stop_epoch": len(epochs),
        "max_epochs": config.max_epochs,
        "auc_w": numbers.get("auc_w"),
        "auc_p": numbers.get("auc_p"),
        "rho": numbers.get("rho"),
        "stabilization_w": numbers.get("stabilization_w"),
        "stabilization_p": numbers.get("stabilization_p"),
        "window": numbers.get("window"),
        "batches_per_epoch": steps_per_epoch,
        "steps": int(tracker.iteration),
        "sites": list(tracker.sites),
        "probe_size": tracker.probe_size,
        "train_size": len(splits.train),
        "val_size": len(splits.val),
        "data_source": splits.source,
        "status": status,
        "seconds": seconds,
        "device": str(device),
        "versions": software_versions(),
    }


def _save_figure(run_dir: RunDirectory) -> None:
    try:
        from regimes.plots import save_run_figure
    except ImportError:  # matplotlib is optional; the records are what matter
        return
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


def _save_checkpoint(run_dir, epoch, model, optimizer, tracker, order, stopper, seconds) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "tracker": tracker.state_dict(),
        "order_rng": order.get_state(),
        "rng": _rng_state(),
        "early_stopping": vars(stopper).copy(),
        "seconds": seconds,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(run_dir.checkpoint_path, buffer.getvalue())


def _load_checkpoint(run_dir: RunDirectory) -> dict | None:
    if not Path(run_dir.config_path).is_file():
        raise FileNotFoundError(f"{run_dir.path} holds no run to resume (no config.toml); start it with `regimes run`")
    if not run_dir.checkpoint_path.is_file():
        return None
    return torch.load(run_dir.checkpoint_path, map_location="cpu", weights_only=False)
