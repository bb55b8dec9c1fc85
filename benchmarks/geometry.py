"""What the theory's instruments cost: regimes.geometry per sample, against one forward pass.

For the zoo's MNIST MLP (784-256-128-10), LeNet5 and AlexNet (CIFAR-100), each function
runs on the same batch as a plain eval-mode forward without gradients; the script prints
seconds per sample (CPU time of the process on the CPU, wall time on a GPU) and the ratio to
that forward (absolute times on a shared machine are noise; the ratios are what to read). Each call is timed between two timings of the
forward (averaged over 0.2 s of calls) and its ratio taken to their mean; the median over
repeats is kept. On a busy shared CPU, `--threads 1` gives the steadiest ratios.

Where the cost comes from: `local_affine_map` and `region_distance` push every input
direction through the network (forward mode), so they cost about n_in forwards per sample
(784 for MNIST, 3072 for CIFAR), whatever the batch; `parameter_radius` is a few dozen
forwards for the certificate's bisection and some hundred for the empirical search.

    python benchmarks/geometry.py                          # CPU
    python benchmarks/geometry.py --device cuda            # when a GPU is there
    python benchmarks/geometry.py --models mlp --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from regimes.geometry import local_affine_map, parameter_radius, region_distance
from regimes.zoo import create_model

MODELS = {
    "mlp": (
        "MLP 784-256-128-10",
        lambda: create_model("mlp", input_size=784, num_classes=10, hidden=(256, 128), dropout=0.2),
        (784,),
    ),
    "lenet5": (
        "LeNet5 (MNIST)",
        lambda: create_model("lenet5", in_channels=1, num_classes=10, input_size=28),
        (1, 28, 28),
    ),
    "alexnet": ("AlexNet (CIFAR-100)", lambda: create_model("alexnet", in_channels=3, num_classes=100), (3, 32, 32)),
}
# Batch per model and device: enough samples to amortise, few enough for a shared CPU.
BATCH = {"cpu": {"mlp": 16, "lenet5": 4, "alexnet": 1}, "cuda": {"mlp": 64, "lenet5": 32, "alexnet": 8}}


def timed(fn, device: torch.device) -> tuple[float, object]:
    """Seconds of work: wall time on a GPU (synchronised), CPU time of this process on the CPU,
    which waiting for a busy shared machine does not inflate."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start, value


def bench(key: str, device: torch.device, batch: int, repeats: int) -> None:
    label, build, shape = MODELS[key]
    torch.manual_seed(0)
    model = build().to(device)
    x = torch.randn(batch, *shape, device=device)

    def forward():
        model.eval()
        with torch.no_grad():
            model(x)

    functions = {
        "local_affine_map": lambda: local_affine_map(model, x),
        "region_distance": lambda: region_distance(model, x),
        "parameter_radius": lambda: parameter_radius(model, x),
    }

    def forward_time() -> float:  # the forward is short: average it over at least 0.2 s of calls
        total, calls = 0.0, 0
        while total < 0.2:
            total += timed(forward, device)[0]
            calls += 1
        return total / calls

    forward()
    for fn in functions.values():  # warm-up (kernels, jvp decompositions, caches)
        fn()
    # Each call is sandwiched between two timings of the forward, and its ratio is taken to
    # their mean: slow phases of a shared machine then hit numerator and denominator alike.
    seconds = {name: [] for name in functions}
    ratios = {name: [] for name in functions}
    forwards, last = [], {}
    for _ in range(repeats):
        for name, fn in functions.items():
            before = forward_time()
            t, last[name] = timed(fn, device)
            after = forward_time()
            seconds[name].append(t)
            ratios[name].append(t / ((before + after) / 2))
            forwards += [before, after]
    certified, empirical = last["parameter_radius"]
    distance = last["region_distance"]
    print(f"\n{label}, batch {batch}, input {tuple(shape)} ({x[0].numel()} features)")
    print(f"  {'':18s} {'s/sample':>10s} {'x forward':>10s}")
    print(f"  {'forward':18s} {statistics.median(forwards) / batch:10.2e} {1:10d}")
    for name in functions:
        print(f"  {name:18s} {statistics.median(seconds[name]) / batch:10.2e} {statistics.median(ratios[name]):10.0f}")
    print(
        f"  (median region distance {distance.median():.3g}; certified radius {certified.median():.3g}, "
        f"empirical {empirical.median():.3g}, ratio {(empirical / certified).median():.3g})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=None, help="samples per call (default: per model and device)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for key in args.models:
        batch = args.batch or BATCH["cuda" if device.type == "cuda" else "cpu"][key]
        bench(key, device, batch, args.repeats)


if __name__ == "__main__":
    main()
