"""The tracker on one GPU, in under 8 minutes: a prepared check for a machine with CUDA.

1. tracker/floor and tracked/plain on the ResNet34 (CIFAR shape, batch 128) and the
   GPT-2-small shape (ReLU FFN, 12x768, 128 tokens, batch 8), bf16 autocast as the
   study's presets, probe 0.2 x batch: plain, floor, tracker and naive steps in rotation
   (benchmarks/scale.py's variants, timed with torch.cuda.synchronize around each step).
2. `tracker.step()` under `torch.cuda.set_sync_debug_mode("error")`: the per-step path
   must never wait for the GPU. The model's own probe forward is tried first the same
   way, so a synchronisation inside the model (not ours) is told apart.
3. One larger configuration trained for a few hundred steps with the tracker: ResNet34
   at TinyImageNet shape (64x64, 200 classes, batch 128), blocks of plain and tracked
   steps taking turns; tracked/plain, the last dw and da, peak GPU memory.

Exits 0 with a message when no CUDA device is present; 1 when a check fails (tracker/floor
above --limit, or a host-device synchronisation in tracker.step()).

    python benchmarks/gpu.py
    python benchmarks/gpu.py --steps 10 --train-steps 200 --no-check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import add_check_arguments, check, cpu_name  # noqa: E402
from scale import Case, main_rotation  # noqa: E402

BUDGET_S = 7 * 60  # stages that would start past this are skipped, so the whole run stays under 8 minutes


def sync_check(case: Case) -> bool:
    """True when tracker.step() made no host-device synchronisation (the model's forward aside)."""
    tracker = case.tracker(sync_every=10**6)
    case.train_step()
    torch.cuda.synchronize()

    def attempt(what, fn) -> str | None:
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
            return None
        except RuntimeError as error:
            return f"{what}: {error}\n" + "".join(traceback.format_exc(limit=-4))
        finally:
            torch.cuda.set_sync_debug_mode(0)

    def probe_forward():
        case.model.eval()
        try:
            with torch.no_grad():
                case.forward_probe()
        finally:
            case.model.train()

    model_sync = attempt("the model's own probe forward", probe_forward)
    tracker_sync = attempt("tracker.step()", tracker.step)
    ok = tracker_sync is None or model_sync is not None
    if tracker_sync is None:
        print("  sync debug mode 'error': tracker.step() made no host-device synchronisation")
    elif model_sync is not None:
        print(
            f"  sync debug mode 'error': the model's own forward synchronises, so tracker.step() does too:\n{model_sync}"
        )
    else:
        print(f"  FAIL: tracker.step() synchronises where the model's forward does not:\n{tracker_sync}")
    tracker.close()
    return ok


def long_run(args) -> None:
    case = Case(
        "resnet34", args.batch or 128, 0, device=args.device, autocast=args.autocast, image_size=64, classes=200
    )
    tracker = case.tracker()
    cuda = case.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    block, plain, tracked = 10, [], []
    for k in range(args.train_steps // block):
        case.synchronize()
        start = time.perf_counter()
        for _ in range(block):
            case.train_step()
            if k % 2:
                tracker.step()
        case.synchronize()
        (tracked if k % 2 else plain).append((time.perf_counter() - start) / block)
    records = tracker.records()
    memory = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "(not on a GPU)"
    print(
        f"  {args.train_steps} steps (ResNet34, 64x64, 200 classes, batch {case.batch}, probe {tracker.probe_size}): "
        f"plain {statistics.median(plain) * 1e3:.1f} ms/step, tracked/plain "
        f"{statistics.median(tracked) / statistics.median(plain):.3f}; last dw {records['dw'][-1]:.3g}, "
        f"da {records['da'][-1]:.3g}; peak GPU memory {memory}"
    )
    tracker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant in the rotation")
    parser.add_argument("--train-steps", type=int, default=300, help="steps of the larger configuration")
    parser.add_argument("--smoke", action="store_true", help="a tiny run on the CPU that only checks the script runs")
    add_check_arguments(parser)
    args = parser.parse_args()
    args.device, args.autocast, args.batch, tokens = "cuda", torch.bfloat16, None, 128
    if args.smoke:
        args.device, args.autocast, args.batch, tokens = "cpu", None, 4, 16
        args.steps, args.train_steps, args.check = 1, 20, False
    elif not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing to measure. "
            "Run it on a machine with a GPU; benchmarks/scale.py measures the same shapes on the CPU."
        )
        return
    start = time.perf_counter()
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU smoke run"
    print(f"torch {torch.__version__}, {device}, host {cpu_name()}, autocast {args.autocast}")
    ratios, failed = {}, False
    for name in ("resnet34", "gpt2-small"):
        if time.perf_counter() - start > BUDGET_S:
            print(f"{name}: skipped (past the {BUDGET_S} s budget)")
            continue
        case = Case(name, args.batch, tokens, device=args.device, autocast=args.autocast)
        print(f"{name}: batch {case.batch}")
        ratios[name] = main_rotation(case, args)
        if args.device == "cuda":
            failed |= not sync_check(case)
            del case
            torch.cuda.empty_cache()
    if time.perf_counter() - start < BUDGET_S:
        long_run(args)
    else:
        print("larger configuration: skipped (past the budget)")
    print(f"total {time.perf_counter() - start:.0f} s")
    if failed and args.check:
        sys.exit(1)
    check(ratios, args)


if __name__ == "__main__":
    main()
