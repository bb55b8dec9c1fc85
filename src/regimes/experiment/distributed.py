"""One study run over several processes with DDP: `torchrun --nproc-per-node N -m regimes run PRESET`.

torchrun starts N copies of `regimes run`; each finds its rank in the environment
(`DataParallel.from_environment`). The config's `batch_size` stays the global batch: every
global batch of the shuffled order (the same order on every process: one seed) is split
between the processes as DistributedSampler would split it (`indices[rank::N]`), DDP
averages their gradients, and the optimizer steps once per global batch, as the
single-process run does.

Exactly one process, the first, tracks, evaluates for the record, writes the run directory
and its checkpoints, and runs the callbacks; resume works as without torchrun. The others
train (`follow_run`) and take the first process's early-stopping decision, which it
broadcasts once per epoch: every collective is called by every process at the same point.
The model a checkpoint holds is the plain module, so runs resume with or without torchrun.
gloo on CPU, NCCL on CUDA (one GPU per process: cuda:LOCAL_RANK).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from regimes.errors import UsageError
from regimes.experiment.epoch import train_epoch
from regimes.experiment.setup import setup_run
from regimes.records import RunDirectory

__all__ = ["DataParallel", "follow_run"]


@dataclass
class DataParallel:
    """This process's place in a DDP run, and the model wrapper its training forward runs."""

    rank: int
    world_size: int
    device: torch.device
    model: nn.Module | None = None  # the DDP wrapper, set by `wrap`

    @staticmethod
    def requested() -> bool:
        """Whether this process is one of several that torchrun started (WORLD_SIZE > 1)."""
        return int(os.environ.get("WORLD_SIZE", "1")) > 1

    @classmethod
    def from_environment(cls, device: str | torch.device | None = "cpu") -> DataParallel | None:
        """Under torchrun (WORLD_SIZE > 1): join the process group and return this process's
        place; None for a single process. `device`: cpu (gloo) or cuda / auto (NCCL, cuda:LOCAL_RANK)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        kind = torch.device("cuda" if device in (None, "auto") and torch.cuda.is_available() else device or "cpu").type
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise UsageError("--device cuda under torchrun: this machine has no CUDA GPU; use --device cpu")
            torch.cuda.set_device(local_rank)
            place = torch.device("cuda", local_rank)
        elif kind == "cpu":
            place = torch.device("cpu")
        else:
            raise UsageError(f"device {device!r} under torchrun: use cpu (gloo) or cuda (NCCL)")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=timedelta(minutes=30))
        return cls(rank, world_size, place)

    @property
    def main(self) -> bool:
        """The process that tracks and writes."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The DDP wrapper the training forward runs (parameters broadcast from the first process).

        Its gradients are averaged weighted by each process's share of the global batch, so
        that a global batch that does not split evenly gives the gradient of its mean loss,
        as in the single-process run (exact for a per-sample mean; a per-token mean, as the
        language models', is weighted by samples)."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.model.register_comm_hook(None, self._weighted_mean)
        self._weight = 1.0
        return self.model

    def _weighted_mean(self, state, bucket):
        # DDP's default hook divides by the world size: sum_r g_r / N. Here each process's
        # gradient counts by its share: sum_r (n_r / n) g_r, n_r its samples of the n.
        tensor = bucket.buffer().mul_(self._weight)
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda done: done.value()[0])

    def epoch_batches(self, order: torch.Tensor, batch_size: int, seed: int, epoch: int):
        """This process's share of each global batch of `order` (and its weight in the
        gradient); the epoch's random state (dropout) is seeded from (seed, epoch, rank), so
        that a resumed run draws what the uninterrupted one drew."""
        torch.manual_seed(seed * 1_000_003 + epoch * 1_009 + self.rank)
        for batch in order.split(batch_size):
            local = batch[self.rank :: self.world_size]
            self._weight = len(local) / len(batch)
            yield local

    def reduce_epoch(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int):
        """The epoch's training loss sum, correct count and seen count over all processes (one all-reduce)."""
        totals = torch.stack(
            [torch.as_tensor(v, device=self.device).detach().double() for v in (loss_sum, correct, seen)]
        )
        dist.all_reduce(totals)
        return totals[0], totals[1], int(totals[2].item())

    def agree(self, stop: bool) -> bool:
        """The first process's decision, on every process (once per epoch)."""
        flag = torch.tensor([float(stop)], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def close(self) -> None:
        """Leave the process group together (every process calls this once, at the run's end):
        a barrier first, so that none tears its connections down while another still uses them."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def follow_run(config, out, parallel: DataParallel, *, data_dir=None, resume: bool = False) -> None:
    """What a process other than the first does in a DDP run: the same training, no tracker,
    no run directory, no callbacks; it stops when the first process says so."""
    run_dir = RunDirectory(out)
    if resume and (previous := run_dir.read_summary()) is not None and previous.status.done:
        return  # the first process returns too, before any collective: nothing left to do
    run = setup_run(config, parallel.device, data_dir, parallel)
    checkpoint = run_dir.read_checkpoint() if resume else None
    if checkpoint is not None:  # the first process's, restored as RunState.load_state_dict does, less the tracker
        run.model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        run.order.set_state(checkpoint["order_rng"])
        run.epoch = checkpoint["epoch"]
    try:
        for epoch in range(run.epoch + 1, config.max_epochs + 1):
            run.epoch = epoch
            row = train_epoch(run)
            if parallel.agree(not math.isfinite(row["train_loss"])):
                break
    finally:
        parallel.close()
