"""What the tracker costs at the sizes people train: a ResNet34 at CIFAR shape and a
GPT-2-small-shaped language model (ReLU FFN, 12 layers, 768 wide, 128 tokens), on the CPU.

Per model, with the study's batch (the preset's: ResNet34 128, GPT-2 8) and a probe of
round(0.2 x batch) samples, four variants of a training step take turns on one model:

    plain    the optimizer step alone
    floor    + one eval forward of the probe without gradients and one fused weight diff
             (the least any dw/da measurement costs)
    tracker  + regimes.Tracker.step()
    naive    + what one writes by hand: forward hooks copying each site's mask to NumPy,
             flips counted there, a per-parameter loop for dw

Printed: the ratios of median step times (absolute times on a shared machine are
noise), the memory of the stored patterns (packed bits against bool masks and float32
activations), then how tracker/floor moves with the probe's size (1x, 2x, 4x) and with
`every` (1, 4, 16; a block of `every` steps is timed as one, so --sweep-steps 2 at every 16
runs 64 training steps). Exits 1 when tracker/floor
(at 1x, every 1) is above --limit (1.05); --no-check only reports.

    python benchmarks/scale.py --threads 2                                  # full size (tens of minutes)
    python benchmarks/scale.py --threads 2 --batch 32 --steps 4 --sweep-steps 2   # a few minutes
    python benchmarks/scale.py --models gpt2-small --tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import regimes
from regimes.zoo import create_model, model_sites

sys.path.insert(0, str(Path(__file__).parent))
from overhead import add_check_arguments, check, cpu_name  # noqa: E402


class Case:
    """A model at its training shape: a step of plain training, a probe of 0.2 x batch."""

    def __init__(
        self,
        name: str,
        batch: int | None,
        tokens: int,
        probe_scale: int = 1,
        seed: int = 0,
        device: str = "cpu",
        autocast: torch.dtype | None = None,
        image_size: int = 32,
        classes: int = 100,
    ):
        torch.manual_seed(seed)
        self.name, self.device, self.autocast = name, torch.device(device), autocast
        if name == "resnet34":
            self.batch = batch or 128  # preset resnet34-cifar100
            self.model = create_model("resnet34", num_classes=classes).to(self.device)
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2, weight_decay=1e-4)
            self.x = torch.randn(self.batch, 3, image_size, image_size, device=self.device)
            self.y = torch.randint(0, classes, (self.batch,), device=self.device)
            self.sites = None
            self.loss = lambda: F.cross_entropy(self.model(self.x), self.y)
            size = probe_size(self.batch) * probe_scale
            self.probe = torch.randn(size, 3, image_size, image_size, device=self.device)
        elif name == "gpt2-small":
            self.batch = batch or 8  # preset gpt2-wikitext
            vocab = 16384
            self.model = create_model("gpt2", vocab_size=vocab, max_length=tokens).to(self.device)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-4, weight_decay=1e-2)
            self.x = torch.randint(0, vocab, (self.batch, tokens), device=self.device)
            self.sites = model_sites("gpt2")

            def loss():
                logits = self.model(self.x)  # [B, T, V]
                return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), self.x[:, 1:].reshape(-1))

            self.loss = loss
            size = probe_size(self.batch) * probe_scale
            self.probe = {
                "input_ids": torch.randint(0, vocab, (size, tokens), device=self.device),
                "attention_mask": torch.ones(size, tokens, dtype=torch.long, device=self.device),
            }
        else:
            raise KeyError(name)

    def precision(self):
        return torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None)

    def tracker(self, **options) -> regimes.Tracker:
        return regimes.Tracker(self.model, self.probe, sites=self.sites, autocast=self.autocast, **options)

    def train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision():
            loss = self.loss()
        loss.backward()
        self.optimizer.step()

    def forward_probe(self) -> None:
        with self.precision():
            if isinstance(self.probe, dict):
                self.model(**self.probe)
            else:
                self.model(self.probe)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def probe_size(batch: int) -> int:
    return max(1, round(0.2 * batch))  # SPEC: |S| = round(0.2 x batch size), at least 1


class Floor:
    """The least a dw/da measurement costs: an eval forward of the probe and a fused weight diff."""

    def __init__(self, case: Case, every: int = 1):
        self.case, self.every, self.count = case, every, 0
        self.params = [p for p in case.model.parameters() if p.requires_grad]
        self.previous = [p.detach().clone() for p in self.params]

    def step(self) -> None:
        self.count += 1
        if self.count % self.every:
            return
        self.case.model.eval()
        with torch.no_grad():
            self.case.forward_probe()
        self.case.model.train()
        torch._foreach_sub_(self.previous, [p.detach() for p in self.params])
        torch._foreach_norm(self.previous, 1)
        torch._foreach_copy_(self.previous, [p.detach() for p in self.params])


class Naive:
    """What one writes by hand: hooks copying each site's on/off mask to NumPy, a Python loop for dw."""

    def __init__(self, case: Case, site_modules: list[torch.nn.Module]):
        self.case, self.site_modules = case, site_modules
        self.params = [p for p in case.model.parameters() if p.requires_grad]
        self.previous_weights = [p.detach().clone() for p in self.params]
        self.previous_masks = self.masks()
        self.dw, self.da = [], []

    def masks(self) -> list[np.ndarray]:
        masks = []
        handles = [
            m.register_forward_hook(lambda m, a, out: masks.append((out > 0).cpu().numpy())) for m in self.site_modules
        ]
        self.case.model.eval()
        try:
            with torch.no_grad():
                self.case.forward_probe()
        finally:
            self.case.model.train()
            for h in handles:
                h.remove()
        return masks

    def step(self) -> None:
        masks = self.masks()
        self.da.append(np.mean([np.mean(a != b) for a, b in zip(masks, self.previous_masks)]))
        total, count = 0.0, 0
        for p, before in zip(self.params, self.previous_weights):
            total += (p.detach() - before).abs().sum().item()
            count += p.numel()
            before.copy_(p.detach())
        self.dw.append(total / count)
        self.previous_masks = masks


def rotate(case: Case, variants: dict, rounds: int, block: int = 1) -> dict[str, float]:
    """Median seconds per training step of each variant, taking turns block by block."""
    times = {v: [] for v in variants}
    for after in variants.values():  # warm-up: one step each (a block holds one measurement whatever its phase)
        case.train_step()
        after()
    for _ in range(rounds):
        for variant, after in variants.items():
            case.synchronize()
            start = time.perf_counter()
            for _ in range(block):
                case.train_step()
                after()
            case.synchronize()
            times[variant].append((time.perf_counter() - start) / block)
    return {v: statistics.median(t) for v, t in times.items()}


def site_modules(tracker: regimes.Tracker) -> list[torch.nn.Module]:
    if tracker.probe.site_modules is None:
        raise SystemExit("the naive variant hooks modules; this model has functional activation sites")
    return tracker.probe.site_modules


def main_rotation(case: Case, args) -> float:
    """Prints the four variants' ratios and the pattern memory; returns tracker/floor."""
    tracker = case.tracker()
    floor = Floor(case)
    naive = Naive(case, site_modules(tracker))
    median = rotate(
        case, {"plain": lambda: None, "floor": floor.step, "tracker": tracker.step, "naive": naive.step}, args.steps
    )
    layout = tracker.layout
    units = int(layout.units.sum())
    print(
        f"  step: plain {median['plain']:.3f} s (probe {tracker.probe_size}, {len(tracker.sites)} sites, "
        f"{units:,} units, {int(tracker.weights.sizes.sum()):,} parameters)"
    )
    print(
        f"  floor/plain {median['floor'] / median['plain']:.3f} | tracker/plain {median['tracker'] / median['plain']:.3f} "
        f"| tracker/floor {median['tracker'] / median['floor']:.3f} | naive/plain {median['naive'] / median['plain']:.3f} "
        f"| naive/tracker {median['naive'] / median['tracker']:.3f}"
    )
    print(
        f"  stored pattern: {layout.stored_bytes / 2**20:.3f} MiB packed (one kept by the tracker) | "
        f"{units / 2**20:.3f} MiB as bool masks | {4 * units / 2**20:.3f} MiB as float32 activations"
    )
    tracker.close()
    return median["tracker"] / median["floor"]


def probe_sweep(args, name: str) -> None:
    cases = {k: Case(name, args.batch, args.tokens, probe_scale=k) for k in args.probe_scales}
    ratios = {}
    for k, case in cases.items():  # each scale on its own model (same seed), in turn
        tracker = case.tracker()
        median = rotate(case, {"floor": Floor(case).step, "tracker": tracker.step}, args.sweep_steps)
        ratios[k] = (tracker.probe_size, median["tracker"] / median["floor"], median["floor"])
        tracker.close()
    print("  probe size  " + " | ".join(f"{k}x ({n}): tracker/floor {r:.3f}" for k, (n, r, _) in ratios.items()))


def every_sweep(args, name: str) -> None:
    out = []
    for every in args.every:
        case = Case(name, args.batch, args.tokens)
        tracker = case.tracker(every=every)
        median = rotate(
            case, {"floor": Floor(case, every).step, "tracker": tracker.step}, args.sweep_steps, block=every
        )
        out.append(f"every {every}: tracker/floor {median['tracker'] / median['floor']:.3f}")
        tracker.close()
    print("  " + " | ".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet34", "gpt2-small"], choices=["resnet34", "gpt2-small"])
    parser.add_argument("--batch", type=int, default=None, help="training batch (default: the study preset's)")
    parser.add_argument("--tokens", type=int, default=128, help="GPT-2 sequence length")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant in the main rotation")
    parser.add_argument("--sweep-steps", type=int, default=3, help="timed steps (blocks) per variant in the sweeps")
    parser.add_argument("--probe-scales", nargs="+", type=int, default=[1, 2, 4], help="probe sizes, x 0.2 batch")
    parser.add_argument("--every", nargs="+", type=int, default=[1, 4, 16], help="measure every k steps")
    parser.add_argument("--no-sweeps", dest="sweeps", action="store_false", help="skip the probe-size and every sweeps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    add_check_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}; "
        f"batch {args.batch or 'as the preset'}, {args.steps} steps per variant"
    )
    ratios = {}
    for name in args.models:
        case = Case(name, args.batch, args.tokens)
        print(f"{name}: batch {case.batch}" + (f", {args.tokens} tokens" if name == "gpt2-small" else ", 32x32x3"))
        ratios[name] = main_rotation(case, args)
        if args.sweeps:
            probe_sweep(args, name)
            every_sweep(args, name)
    check(ratios, args)


if __name__ == "__main__":
    main()
