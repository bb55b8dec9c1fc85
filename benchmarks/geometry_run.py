"""What `geometry = true` costs a run: the same preset trained with and without it, taking turns.

Per preset, `--repeats` pairs of runs (off, on) of `--epochs` epochs each, same seed and
thread count, early stopping off; printed: the median over pairs of the wall time per epoch
(training, validation and, when on, the geometry of epoch 0 spread over the epochs) and the
ratio on/off taken pair by pair, beside the geometry's own seconds per epoch from the run's
table as a fraction of the epoch's training time. Absolute times on a shared machine are
noise; read the ratios.

    python benchmarks/geometry_run.py --threads 1
    python benchmarks/geometry_run.py --presets mlp-breast-cancer lenet5-digits --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from regimes.experiment import get_preset, train_run
from regimes.records import RunDirectory

PRESETS = ["mlp-breast-cancer", "mlp-digits", "lenet5-digits", "mlp-mnist1d"]


def one_run(preset: str, geometry: bool, epochs: int, out: Path) -> tuple[float, float]:
    """(wall seconds per epoch, geometry seconds per epoch from its table; 0 when off)."""
    config = get_preset(preset).replace(max_epochs=epochs, patience=epochs + 1, geometry=geometry)
    start = time.perf_counter()
    train_run(config, out, device="cpu", force=True)
    wall = time.perf_counter() - start
    rows = RunDirectory(out).read_geometry()
    return wall / epochs, sum(r["seconds"] for r in rows) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs, {args.repeats} pairs")
    print(f"{'preset':<22} {'probe':>5} {'s/epoch off':>11} {'s/epoch on':>10} {'on / off':>8} {'geometry / epoch':>16}")
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            off, on, ratios, shares = [], [], [], []
            for k in range(args.repeats):
                plain, _ = one_run(preset, False, args.epochs, Path(folder) / f"{preset}-off-{k}")
                measured, geometry = one_run(preset, True, args.epochs, Path(folder) / f"{preset}-on-{k}")
                off.append(plain)
                on.append(measured)
                ratios.append(measured / plain)
                shares.append(geometry / plain)
            probe = get_preset(preset).probe_size
            print(f"{preset:<22} {probe:>5} {statistics.median(off):>11.3f} {statistics.median(on):>10.3f} "
                  f"{statistics.median(ratios):>8.2f} {statistics.median(shares):>16.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
