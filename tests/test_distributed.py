"""Several processes on CPU (gloo): DDP through the Lightning callback, FSDP2 (fully_shard)
through the shared tracking session.

- DDP: exactly one process probes and writes; the other builds no tracker; both make the
  same collective calls (none from one process alone); the first process's curves equal a
  slow reference riding in the same fit.
- FSDP2: every process tracks (the probe's forward gathers shards on all of them), the weight
  change is the whole model's (summed over shards: equal to a reference on the gathered
  tensors), one all-reduce per read-back, and only the first process writes.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
import torch
import torch.distributed as dist
from torch import nn

from regimes.records import RunDirectory, Status

COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "barrier",
    "all_gather",
    "all_gather_object",
    "broadcast_object_list",
    "gather",
    "scatter",
    "reduce",
    "reduce_scatter_tensor",
    "all_gather_into_tensor",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountCollectives:
    """Counts calls of torch.distributed's collectives in this process while active."""

    def __init__(self):
        self.counts, self.originals = {}, {}

    def start(self):
        for name in COLLECTIVES:
            original = self.originals[name] = getattr(dist, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.counts[_name] = self.counts.get(_name, 0) + 1
                return _original(*args, **kwargs)

            setattr(dist, name, counted)

    def stop(self):
        for name, original in self.originals.items():
            setattr(dist, name, original)


# ---------------------------------------------------------------------- DDP through Lightning

L = pytest.importorskip("lightning")

from test_integrations import Classifier, LightningReference, assert_same_curves, tabular  # noqa: E402

from regimes.integrations import lightning as pl_integration  # noqa: E402


class Witness(L.Callback):
    """What each process did, written to <folder>/rank<r>.json at the end of the fit."""

    def __init__(self, folder, regimes_callback, reference):
        self.folder, self.regimes, self.reference = folder, regimes_callback, reference

    def on_train_start(self, trainer, pl_module):
        self.collectives = CountCollectives()
        self.collectives.start()
        self.gate = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.gate is None:
            self.gate = self.regimes.gate_ is not None

    def on_train_end(self, trainer, pl_module):
        self.collectives.stop()
        tracker = self.regimes.tracker
        seen = {
            "tracker": tracker is not None,
            "gate": self.gate,
            "collectives": self.collectives.counts,
            "global_step": trainer.global_step,
        }
        if tracker is not None:
            differences = assert_same_curves(tracker, self.reference.reference)
            seen.update(iteration=tracker.iteration, differences=differences)
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow
def test_lightning_ddp_one_process_probes_and_writes(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.strategies import DDPStrategy

    probe = tabular(12, seed=1).tensors[0][:4]
    callback = pl_integration.RegimesCallback(probe, out=tmp_path / "run", log_every_n_steps=1)
    reference = LightningReference(probe)
    strategy = DDPStrategy(start_method="spawn", process_group_backend="gloo", timeout=timedelta(seconds=60))
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        accumulate_grad_batches=2,
        callbacks=[callback, reference, Witness(tmp_path, callback, reference)],
        logger=TensorBoardLogger(tmp_path / "tb"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = torch.utils.data.DataLoader(tabular(), batch_size=4)
    trainer.fit(Classifier(lr=0.5), data, torch.utils.data.DataLoader(tabular(12, seed=1), batch_size=4))
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert first["tracker"] and first["gate"] and not second["tracker"] and not second["gate"]
    assert first["collectives"] == second["collectives"]  # no collective from one process alone
    # 40 samples over 2 processes: 5 batches of 4 each an epoch, 3 optimizer steps (2 + 2 + 1).
    assert first["iteration"] == first["global_step"] == 6
    run = RunDirectory(tmp_path / "run")
    assert run.read_summary().status == Status.FINISHED and len(run.read_steps()["dw"]) == 6
    print(f"\nDDP: rank 0 vs slow reference {first['differences']}; collectives per process {first['collectives']}")


# ---------------------------------------------------------------------- FSDP2 through the session


def _fsdp_worker(rank: int, folder: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        from torch.distributed.fsdp import fully_shard

        from regimes.integrations.session import TrackingSession
        from regimes.quantities import ShardedSums

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))
        for layer in model[0], model[2]:
            fully_shard(layer)  # model[4] stays whole on both processes: counted once
        fully_shard(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        probe = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))

        def full_weights():
            return [
                (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double().clone()
                for p in model.parameters()
            ]

        def pattern():
            outputs = []
            hooks = [
                m.register_forward_hook(lambda m, i, o: outputs.append(o > 0))
                for m in model.modules()
                if isinstance(m, nn.ReLU)
            ]
            model.eval()
            with torch.no_grad():
                model(probe)
            model.train()
            for hook in hooks:
                hook.remove()
            return outputs

        reads = []
        original_reduce = ShardedSums.reduce
        ShardedSums.reduce = lambda self, t: reads.append(1) or original_reduce(self, t)

        session = TrackingSession(Path(folder) / "run", host="test")
        tracker = session.start(model, lambda: probe, sync_every=3)
        session.open()
        previous_w, previous_a, reference_dw, reference_da = full_weights(), pattern(), [], []
        data = torch.randn(7, 4, 6, generator=torch.Generator().manual_seed(2 + rank))  # each process its own batches
        for x in data:
            loss = model(x).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            session.step()
            weights, current = full_weights(), pattern()
            reference_dw.append(
                sum(float((a - b).abs().sum()) for a, b in zip(weights, previous_w)) / sum(w.numel() for w in weights)
            )
            reference_da.append(float(np.mean([float((a != b).double().mean()) for a, b in zip(current, previous_a)])))
            previous_w, previous_a = weights, current
        session.end_epoch(1)
        session.finish()
        result = {
            "roles": [session.roles.tracks, session.roles.writes],
            "dw": tracker.delta_w.tolist(),
            "da": tracker.delta_a.tolist(),
            "reference_dw": reference_dw,
            "reference_da": reference_da,
            "reads": len(reads),
            "local_sizes": [int(w.numel()) for w in tracker.weights.previous],
            "sizes": tracker.weights.sizes.tolist(),
        }
        Path(folder, f"fsdp{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_every_process_tracks_and_the_weight_change_sums_the_shards(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    if not hasattr(__import__("torch.distributed.fsdp", fromlist=["fully_shard"]), "fully_shard"):
        pytest.skip("this PyTorch has no FSDP2 (fully_shard)")
    torch.multiprocessing.spawn(_fsdp_worker, args=(str(tmp_path), free_port()), nprocs=2)
    first, second = (json.loads((tmp_path / f"fsdp{r}.json").read_text()) for r in (0, 1))
    assert first["roles"] == [True, True] and second["roles"] == [True, False]
    assert first["local_sizes"] != first["sizes"]  # shards, not whole tensors
    for result in first, second:
        np.testing.assert_allclose(result["dw"], result["reference_dw"], rtol=2e-5)
        np.testing.assert_allclose(result["da"], result["reference_da"], atol=1e-12)
        assert result["reads"] == 3  # one all-reduce per read-back: at steps 3 and 6 (sync_every), at the flush
    assert first["dw"] == second["dw"]
    run = RunDirectory(tmp_path / "run")
    assert run.read_summary().steps == 7 and len(run.read_steps()["dw"]) == 7
    worst = max(abs(a - b) / b for a, b in zip(first["dw"], first["reference_dw"]))
    print(f"\nFSDP2: max relative dw difference from the gathered reference {worst:.2e}")


# ---------------------------------------------------------------------- torchrun -m regimes run


def torchrun(*args, processes=2):
    """`torchrun --standalone --nproc-per-node N -m regimes run ...` with this checkout's regimes."""
    import sys

    from processes import run as run_reaped

    import regimes

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(regimes.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "regimes",
        "run",
        *args,
        "--quiet",
    ]
    done = run_reaped(command, timeout=300, env=env)  # torchrun's workers are reaped whatever happens
    assert done.returncode == 0, done.stderr[-3000:]


NO_BATCHNORM = ["--set", "model_args.batchnorm=false", "--set", "model_args.dropout=0.0"]


@pytest.mark.slow
def test_torchrun_trains_one_run_with_the_global_batch_of_the_single_process_run(tmp_path):
    """Without BatchNorm (whose statistics are per process) and dropout, two processes give the
    single-process curves: each global batch of 32 is split 16 + 16 (the last, of 7: 4 + 3,
    weighted by share), and the first process alone writes the one run directory."""
    import pandas as pd

    from regimes.experiment import apply_overrides, get_preset, train_run

    torchrun("mlp-breast-cancer", "--set", "max_epochs=2", *NO_BATCHNORM, "--out", str(tmp_path / "ddp"))
    config = apply_overrides(
        get_preset("mlp-breast-cancer"), ["max_epochs=2", "model_args.batchnorm=false", "model_args.dropout=0.0"]
    )
    single = train_run(config, tmp_path / "single")
    ddp, one = pd.read_parquet(tmp_path / "ddp" / "steps"), pd.read_parquet(tmp_path / "single" / "steps")
    assert len(ddp) == len(one) == 2 * 15  # 455 samples, batches of 32: 15 optimizer steps an epoch
    np.testing.assert_array_equal(ddp["iteration"], one["iteration"])
    np.testing.assert_allclose(ddp["dw"], one["dw"], rtol=1e-5)
    np.testing.assert_allclose(ddp["da"], one["da"], atol=1e-12)
    summary = RunDirectory(tmp_path / "ddp").read_summary()
    assert summary.status == Status.FINISHED and summary.batches_per_epoch == single["batches_per_epoch"]
    print(
        f"\ntorchrun x2 vs one process: max relative dw difference {np.max(np.abs(ddp.dw - one.dw) / one.dw):.2e}, "
        f"max da difference {np.max(np.abs(ddp.da - one.da)):.2e}"
    )


@pytest.mark.slow
def test_torchrun_resume_equals_the_uninterrupted_run(tmp_path):
    import pandas as pd

    torchrun("mlp-breast-cancer", "--set", "max_epochs=3", "--out", str(tmp_path / "whole"))
    torchrun("mlp-breast-cancer", "--set", "max_epochs=2", "--out", str(tmp_path / "cut"))
    cut = RunDirectory(tmp_path / "cut")
    cut.write_config({**cut.read_config(), "max_epochs": 3})  # as if the 3-epoch run had stopped after epoch 2
    cut.write_summary(cut.read_summary().replace(status=Status.INTERRUPTED))
    torchrun("--resume", str(tmp_path / "cut"))
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "whole" / "steps"), pd.read_parquet(tmp_path / "cut" / "steps")
    )
    whole, resumed = RunDirectory(tmp_path / "whole").read_summary(), cut.read_summary()
    assert resumed.status == Status.FINISHED and resumed.steps == whole.steps == 45 and resumed.rho == whole.rho
