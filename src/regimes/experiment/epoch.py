"""One epoch of the study's protocol: a pass over the shuffled training split with a
measurement after every optimizer step, then the validation split."""

from __future__ import annotations

import math
import time

import torch

from regimes.experiment.callbacks import notify
from regimes.experiment.state import RunState

__all__ = ["train_epoch", "evaluate"]


def train_epoch(run: RunState) -> dict:
    """One pass over the shuffled training split, a measurement after every optimizer step,
    then the validation split; returns the epoch's row of scores."""
    config, model, task, device = run.config, run.model, run.task, run.device
    epoch_start = time.time()
    if _overflows(config.lr, model):  # torch refuses the first step: every weight would be infinite
        return {
            "epoch": run.epoch,
            "train_loss": math.inf,
            "train_score": math.nan,
            "val_loss": math.nan,
            "val_score": math.nan,
            "seconds": time.time() - epoch_start,
        }
    train_tensors = run.splits.train.tensors
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    n_train = len(train_tensors[0])
    permutation = torch.randperm(n_train, generator=run.order)[: run.batches_per_epoch * config.batch_size]
    trained, batches = model, permutation.split(config.batch_size)
    if run.parallel is not None:  # DDP: this process's share of each global batch, through the wrapper
        trained, batches = (
            run.parallel.model,
            run.parallel.epoch_batches(permutation, config.batch_size, config.seed, run.epoch),
        )
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
        val_loss, val_score = evaluate(
            model, task, run.splits.val.tensors, device, task.eval_batch_size or config.batch_size
        )
    return {
        "epoch": run.epoch,
        "train_loss": train_loss,
        "train_score": task.score(loss_sum.item(), correct.item(), seen),
        "val_loss": val_loss,
        "val_score": val_score,
        "seconds": time.time() - epoch_start,
    }


def _overflows(lr: float, model: torch.nn.Module) -> bool:
    """Whether the learning rate is beyond the parameters' floating-point range."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return any(abs(lr) > torch.finfo(dtype).max for dtype in dtypes)


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
