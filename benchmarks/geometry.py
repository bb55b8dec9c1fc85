"""What the theory's instruments cost: regimes.geometry per sample, against one forward pass.

For the zoo's MNIST MLP (784-256-128-10), LeNet5 and AlexNet (CIFAR-100), each function
runs on the same batch as a plain eval-mode forward without gradients; the script prints
seconds per sample and the ratio to that forward (absolute times on a shared machine are
noise; the ratios are what to read). The functions and the forward take turns, and the
median of the repeats is kept.

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
    "mlp": ("MLP 784-256-128-10", lambda: create_model("mlp", input_size=784, num_classes=10, hidden=(256, 128), dropout=0.2), (784,)),
    "lenet5": ("LeNet5 (MNIST)", lambda: create_model("lenet5", in_channels=1, num_classes=10, input_size=28), (1, 28, 28)),
    "alexnet": ("AlexNet (CIFAR-100)", lambda: create_model("alexnet", in_channels=3, num_classes=100), (3, 32, 32)),
}
# Batch per model and device: enough samples to amortise, few enough for a shared CPU.
BATCH = {"cpu": {"mlp": 16, "lenet5": 4, "alexnet": 1}, "cuda": {"mlp": 64, "lenet5": 32, "alexnet": 8}}


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


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
        "forward": forward,
        "local_affine_map": lambda: local_affine_map(model, x),
        "region_distance": lambda: region_distance(model, x),
        "parameter_radius": lambda: parameter_radius(model, x),
    }
    for fn in functions.values():  # warm-up (kernels, jvp decompositions, caches)
        fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            # The forward is short: time it over many calls for a stable per-call figure.
            calls = 20 if name == "forward" else 1
            times[name].append(timed(lambda fn=fn, calls=calls: [fn() for _ in range(calls)], device) / calls)
    base = statistics.median(times["forward"])
    certified, empirical = parameter_radius(model, x)
    distance = region_distance(model, x)
    print(f"\n{label}, batch {batch}, input {tuple(shape)} ({x[0].numel()} features)")
    print(f"  {'':18s} {'s/sample':>10s} {'x forward':>10s}")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"  {name:18s} {t / batch:10.2e} {t / base:10.0f}")
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
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for key in args.models:
        batch = args.batch or BATCH["cuda" if device.type == "cuda" else "cpu"][key]
        bench(key, device, batch, args.repeats)


if __name__ == "__main__":
    main()
