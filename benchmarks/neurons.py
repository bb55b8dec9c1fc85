"""What `NeuronStats` (on, dead, always-on per site) adds to a tracked step.

Two trackers, without and with `NeuronStats`, follow copies of one model trained on the
same batches; their steps run interleaved, round after round, and the ratio of their
median step times is printed (absolute times on a shared machine are noise; ratios
measured side by side are not). A tracked step includes its share of the read-back.
Then `NeuronStats.measure` alone beside one probe forward, in microseconds.

    python benchmarks/neurons.py                 # CPU
    python benchmarks/neurons.py --device cuda   # when a GPU is there
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import regimes
from regimes.neurons import NeuronStats
from regimes.zoo import create_model

MODELS = {
    "mlp 784-256-128-10": (
        lambda: create_model("mlp", input_size=784, num_classes=10, hidden=(256, 128), dropout=0.2),
        (784,),
    ),
    "lenet5": (lambda: create_model("lenet5", in_channels=1, num_classes=10, input_size=28), (1, 28, 28)),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, device: torch.device, batch: int, probe_size: int, rounds: int) -> dict:
    make, shape = MODELS[name]
    torch.manual_seed(0)
    base = make().to(device)
    models = {"tracker": base, "tracker + neurons": copy.deepcopy(base)}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    probe = torch.randn(probe_size, *shape, device=device)
    trackers = {
        "tracker": regimes.Tracker(models["tracker"], probe, sync_every=50),
        "tracker + neurons": regimes.Tracker(
            models["tracker + neurons"], probe, sync_every=50, quantities=[NeuronStats()]
        ),
    }
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = {k: [] for k in models}
    for r in range(rounds):
        for k in models:
            synchronize(device)
            start = time.perf_counter()
            optimizers[k].zero_grad()
            F.cross_entropy(models[k](x), y).backward()
            optimizers[k].step()
            trackers[k].step()
            synchronize(device)
            if r >= 5:  # warm-up
                times[k].append(time.perf_counter() - start)
    for tracker in trackers.values():
        tracker.records()
        tracker.close()
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        **{k: m * 1e3 for k, m in medians.items()},
        "ratio": medians["tracker + neurons"] / medians["tracker"],
    }


def measure_alone(name: str, device: torch.device, probe_size: int, calls: int = 300) -> tuple[float, float]:
    """Microseconds of one `NeuronStats.measure` and of one probe forward (`probe.pattern`)."""
    from regimes.quantities import Step

    make, shape = MODELS[name]
    tracker = regimes.Tracker(
        make().to(device), torch.randn(probe_size, *shape, device=device), quantities=[NeuronStats()]
    )
    stats = tracker.quantities[-1]
    step = Step(1, tracker.last_pattern, tracker.last_pattern, tracker.weights, tracker.layout)
    out = []
    for work in (lambda: stats.measure(step), tracker.probe.pattern):
        for _ in range(10):
            work()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            work()
        synchronize(device)
        out.append((time.perf_counter() - start) / calls * 1e6)
    tracker.close()
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--probe", type=int, default=26, help="probe samples (0.2 x batch by default)")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, batch {args.batch}, probe {args.probe}, threads {torch.get_num_threads()}")
    print(f"{'model':<22}{'tracker ms':>12}{'+ neurons ms':>14}{'ratio':>8}")
    for name in MODELS:
        row = bench(name, device, args.batch, args.probe, args.rounds)
        print(f"{row['model']:<22}{row['tracker']:>12.3f}{row['tracker + neurons']:>14.3f}{row['ratio']:>8.3f}")
    print(f"\n{'model':<22}{'measure us':>12}{'probe us':>14}")
    for name in MODELS:
        measure, probe = measure_alone(name, device, args.probe)
        print(f"{name:<22}{measure:>12.0f}{probe:>14.0f}")


if __name__ == "__main__":
    main()
