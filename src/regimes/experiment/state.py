"""`RunState`: everything one run of the study's loop is made of, and its checkpoint.

A checkpoint holds tensors and plain data only (the random states too), so that it loads
with `torch.load(weights_only=True)`: nothing in it can run code.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from regimes.records import Status

if TYPE_CHECKING:  # types only: the loop hands these in
    from regimes.experiment.callbacks import Callback
    from regimes.experiment.config import RunConfig
    from regimes.experiment.distributed import DataParallel
    from regimes.run import Run
    from regimes.tracker import Tracker

__all__ = ["RunState", "rng_state", "set_rng_state"]


@dataclass
class RunState:
    """Everything one run is made of, as the loop and its callbacks see it."""

    config: RunConfig
    device: torch.device
    task: object
    splits: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tracker: Tracker | None  # None on a DDP process other than the first
    order: torch.Generator  # shuffling, saved in checkpoints
    batches_per_epoch: int
    callbacks: list[Callback] = field(default_factory=list)
    epoch: int = 0  # the last finished epoch
    epochs: list[dict] = field(default_factory=list)  # one row of scores per finished epoch
    status: Status = Status.FINISHED  # what the run ends as if nothing goes wrong
    stop: bool = False  # set by a callback (early stopping) or on divergence
    run: Run | None = None  # the run's records, detector, freeze and summary (regimes.run)
    stop_reason: str | None = None  # why the run stopped before max_epochs, in words (printed at the end)
    parallel: DataParallel | None = None  # under torchrun: this process's place (experiment/distributed.py)

    @property
    def summary(self):
        """The run's final summary (None until it ended)."""
        return self.run.summary if self.run is not None else None

    def autocast(self):
        """The training's precision: bf16 autocast for precision "bf16", else nothing."""
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- checkpoints: the state, the run's and each callback's (by its unique name) ----------

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "order_rng": self.order.get_state(),
            "rng": rng_state(),
            "run": self.run.state_dict(),
            "callbacks": {c.name: c.state_dict() for c in self.callbacks},
        }

    def load_state_dict(self, state: dict, epochs: list[dict]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.order.set_state(state["order_rng"])
        set_rng_state(state["rng"])
        self.run.load_state_dict(state["run"])
        for callback in self.callbacks:
            callback.load_state_dict(state["callbacks"].get(callback.name, {}))
        self.epoch = state["epoch"]
        self.epochs = epochs[: self.epoch]


def rng_state() -> dict:
    """The random states of torch, NumPy and Python as tensors and plain numbers."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(w) for w in p["words"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
