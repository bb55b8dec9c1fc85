"""What the run object costs on top of the tracker: a plain loop trained three ways, side by
side in rotation (no tracking; a `regimes.Tracker`; a `regimes.Run` writing its run
directory every epoch), and the ratios of their times.

    python benchmarks/lifecycle.py --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch
from torch import nn

import regimes


def train(mode: str, epochs: int, folder: str) -> float:
    torch.manual_seed(0)
    x, y = torch.randn(455, 30), torch.randint(0, 2, (455,))
    model = nn.Sequential(
        nn.Linear(30, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 2),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    started = time.perf_counter()
    run = regimes.Run(folder) if mode == "run" else None
    tracker = run.watch(model, x[:6]) if run else regimes.Tracker(model, x[:6]) if mode == "tracker" else None
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(455).split(32):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if tracker is not None:
                tracker.step()
        if run is not None:
            run.end_epoch(epoch, {"train_loss": loss})
        elif tracker is not None:
            tracker.records()  # the tracker's own read-back, as a loop that reads its curves does
    if run is not None:
        run.finish()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times = {"plain": [], "tracker": [], "run": []}
    for _ in range(args.rounds):
        for mode in times:
            with tempfile.TemporaryDirectory() as folder:
                times[mode].append(train(mode, args.epochs, f"{folder}/run"))
    median = {mode: statistics.median(t) for mode, t in times.items()}
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"{args.rounds} rounds in rotation, {args.epochs} epochs of 15 steps (Breast Cancer-sized MLP)"
    )
    print(f"tracker / plain   {median['tracker'] / median['plain']:.3f}")
    print(f"run / plain       {median['run'] / median['plain']:.3f}")
    print(f"run / tracker     {median['run'] / median['tracker']:.3f}   (the run directory, figure included)")


if __name__ == "__main__":
    main()
