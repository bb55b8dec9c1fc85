"""What it costs to leave the tracker on: step time of plain training, of the floor, and with `Tracker`.

The floor is plain training plus what any measurement of dw and da must do: one
eval-mode forward of the probe without gradients and one fused parameter diff.
The three variants run interleaved, round after round, on the same model and data,
and the ratios of their median step times are printed (absolute times on a shared
machine are noise; ratios measured side by side are not).

    python benchmarks/overhead.py --threads 1     # CPU
    python benchmarks/overhead.py --device cuda   # when a GPU is there

Exits 1 when tracker/floor is above `--limit` (1.05) on any model; `--no-check` skips that.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import regimes
from regimes.zoo import create_model

MODELS = {
    "mlp 784-256-128-10": lambda: create_model("mlp", input_size=784, num_classes=10, hidden=(256, 128), dropout=0.2),
    "lenet5": lambda: create_model("lenet5", in_channels=1, num_classes=10, input_size=28),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class FloorProbe:
    """The least a dw/da measurement costs: an eval forward of the probe and a fused weight diff."""

    def __init__(self, model, probe):
        self.model, self.probe = model, probe
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.previous = [p.detach().clone() for p in self.params]

    def step(self):
        self.model.eval()
        with torch.no_grad():
            self.model(self.probe)
        self.model.train()
        torch._foreach_sub_(self.previous, [p.detach() for p in self.params])
        torch._foreach_norm(self.previous, 1)
        torch._foreach_copy_(self.previous, [p.detach() for p in self.params])


def bench(name: str, device: torch.device, batch: int, probe_size: int, steps: int, rounds: int) -> float:
    """Prints one model's line; returns its tracker/floor."""
    torch.manual_seed(0)
    model = MODELS[name]().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    probe = torch.randn(probe_size, 1, 28, 28, device=device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    tracker = regimes.Tracker(model, probe)
    floor = FloorProbe(model, probe)
    variants = {"plain": lambda: None, "floor": floor.step, "tracker": tracker.step}
    times = {v: [] for v in variants}
    for _ in range(3):  # warm-up
        for after in variants.values():
            train_step()
            after()
    # Variants take turns step by step, so slow phases of a shared machine hit all three
    # alike; the median per-step time of each is robust to the remaining outliers. The
    # order alternates (plain, floor, tracker / plain, tracker, floor), so floor and tracker
    # each follow plain and each other equally often: a step runs faster after a light one
    # than after a heavy one, whose work left less of it in cache (on the MLP, the floor
    # measured 50 us slower after the tracker than after plain).
    orders = (["plain", "floor", "tracker"], ["plain", "tracker", "floor"])
    for turn in range(rounds * steps):
        for variant in orders[turn % 2]:
            after = variants[variant]
            synchronize(device)
            start = time.perf_counter()
            train_step()
            after()
            synchronize(device)
            times[variant].append(time.perf_counter() - start)
    median = {v: statistics.median(t) for v, t in times.items()}
    stored_bits = tracker.layout.stored_bytes * 8
    units = int(tracker.layout.units.sum())
    print(
        f"{name:22s} {device.type:5s} step {median['plain'] * 1e3:7.3f} ms | "
        f"floor/plain {median['floor'] / median['plain']:.3f} | tracker/plain {median['tracker'] / median['plain']:.3f} | "
        f"tracker/floor {median['tracker'] / median['floor']:.3f} | "
        f"{stored_bits / units / 8:.4f} bytes per stored unit ({len(tracker.sites)} sites, {units} units)"
    )
    tracker.close()
    return median["tracker"] / median["floor"]


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def add_check_arguments(parser: argparse.ArgumentParser, limit: float = 1.05) -> None:
    parser.add_argument("--limit", type=float, default=limit, help="tracker/floor above this fails the run (exit 1)")
    parser.add_argument("--no-check", dest="check", action="store_false", help="never fail on tracker/floor")


def check(ratios: dict[str, float], args: argparse.Namespace) -> None:
    """Exit 1 (after printing which) when a tracker/floor ratio is above the limit."""
    over = {name: r for name, r in ratios.items() if r > args.limit}
    if over and args.check:
        listed = ", ".join(f"{name} {r:.3f}" for name, r in over.items())
        print(f"FAIL: tracker/floor above {args.limit}: {listed} (--no-check to only report)", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--probe", type=int, default=26, help="probe samples (the study: 0.2 x batch)")
    parser.add_argument("--steps", type=int, default=20, help="steps per round and variant")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    add_check_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, batch {args.batch}, probe {args.probe}"
    )
    ratios = {name: bench(name, device, args.batch, args.probe, args.steps, args.rounds) for name in args.models}
    check(ratios, args)


if __name__ == "__main__":
    main()
