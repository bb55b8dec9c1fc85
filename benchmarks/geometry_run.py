"""What `geometry = true` costs a run: the same preset trained with and without it, taking turns.

Per preset, `--repeats` pairs of runs (off, on) of `--epochs` epochs each, same seed and
thread count, early stopping off; printed: the median over pairs of the wall time per epoch
(training, validation and, when on, the geometry of epoch 0 spread over the epochs) and the
ratio on/off taken pair by pair, beside the geometry's own seconds per epoch from the run's
table as a fraction of the epoch's training time. Absolute times on a shared machine are
noise; read the ratios.

    python benchmarks/geometry_run.py --threads 1
    python benchmarks/geometry_run.py --presets mlp-breast-cancer lenet5-digits --epochs 3 --repeats 3

At one larger size, `--resnet` times the geometry of a ResNet-shaped CNN (ResNet-20 for
CIFAR: 3 stages of 3 basic blocks, 16-32-64 channels, BatchNorm, residual additions,
32x32x3 inputs) over a probe of 0.2 x batch, against an epoch of training it at CIFAR-10's
size (50,000 images: 391 steps of 128), the epoch's time taken as the median measured
step time x steps per epoch (the callback computes the geometry once per epoch):

    python benchmarks/geometry_run.py --threads 1 --resnet
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from regimes.experiment import get_preset, train_run
from regimes.geometry.watch import probe_geometry
from regimes.records import RunDirectory

sys.path.insert(0, str(Path(__file__).parent))
from overhead import cpu_name  # noqa: E402

PRESETS = ["mlp-breast-cancer", "mlp-digits", "lenet5-digits", "mlp-mnist1d"]


def one_run(preset: str, geometry: bool, epochs: int, out: Path) -> tuple[float, float]:
    """(wall seconds per epoch, geometry seconds per epoch from its table; 0 when off)."""
    config = get_preset(preset).replace(max_epochs=epochs, patience=epochs + 1, geometry=geometry)
    start = time.perf_counter()
    train_run(config, out, device="cpu", force=True)
    wall = time.perf_counter() - start
    rows = RunDirectory(out).read_geometry()
    return wall / epochs, sum(r["seconds"] for r in rows) / epochs


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20 (0.27M parameters): every part piecewise linear in eval mode."""

    def __init__(self, num_classes: int = 10, blocks: int = 3, widths: tuple = (16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for k, width in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, width, 2 if k and not b else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):  # [B, 3, 32, 32]
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


def resnet_geometry(batch: int, steps: int, epoch_steps: int) -> None:
    """Geometry of a ResNet-20 over a probe of 0.2 x batch against an epoch of its training."""
    torch.manual_seed(0)
    model = ResNet20()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    probe = torch.randn(max(1, round(0.2 * batch)), 3, 32, 32)
    times, geometry = [], []
    for k in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if k:  # the first step warms up
            times.append(time.perf_counter() - start)
        if k == steps:  # once, after the timed steps (as the callback does at an epoch's end)
            start = time.perf_counter()
            probe_geometry(model, probe)
            geometry.append(time.perf_counter() - start)
    step = statistics.median(times)
    epoch = step * epoch_steps
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"ResNet-20 ({parameters:,} parameters), batch {batch}, probe {len(probe)}: step {step:.3f} s, "
        f"epoch of {epoch_steps} steps ~ {epoch:.0f} s; geometry {geometry[0]:.1f} s "
        f"= {geometry[0] / epoch:.3f} of an epoch (once per epoch)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--resnet", action="store_true", help="the ResNet-20 against an epoch instead of the presets")
    parser.add_argument("--batch", type=int, default=128, help="--resnet: training batch (probe 0.2 x batch)")
    parser.add_argument("--steps", type=int, default=10, help="--resnet: timed training steps")
    parser.add_argument(
        "--epoch-steps",
        type=int,
        default=None,
        help="--resnet: steps per epoch (default: CIFAR-10's 50,000 images at --batch)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resnet:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}")
        resnet_geometry(args.batch, args.steps, args.epoch_steps or -(-50_000 // args.batch))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs, {args.repeats} pairs")
    print(
        f"{'preset':<22} {'probe':>5} {'s/epoch off':>11} {'s/epoch on':>10} {'on / off':>8} {'geometry / epoch':>16}"
    )
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
            print(
                f"{preset:<22} {probe:>5} {statistics.median(off):>11.3f} {statistics.median(on):>10.3f} "
                f"{statistics.median(ratios):>8.2f} {statistics.median(shares):>16.2f}"
            )


if __name__ == "__main__":
    main()
