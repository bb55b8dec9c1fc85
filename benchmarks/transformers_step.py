"""Seconds per training step with and without the tracker, for every Transformer preset
at a tiny size on the CPU (issue 4).

Each preset's model (its registered feed-forward sites tracked), task and optimizer
run on random inputs of the preset's kind; plain steps and tracked steps alternate
on the same model, so both see the same machine state. The tracked step is a plain
step plus ``tracker.step()`` on a probe of round(0.2 x batch) samples.

    python benchmarks/transformers_step.py [--steps 30] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import regimes
from regimes.experiment import get_preset
from regimes.experiment.setup import make_optimizer
from regimes.experiment.tasks import get_task
from regimes.zoo import create_model, model_sites

TEXT = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, vocab_size=1000)
VISION = dict(image_size=32)
TINY = {
    "xlnet-sst2": TEXT,
    "roberta-ag-news": dict(TEXT, max_length=64),
    "t5-squad": dict(TEXT, head_size=16),
    "gpt2-wikitext": dict(TEXT, max_length=64),
    "vitb16-cifar100": dict(VISION, patch_size=4, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),
    "swin-food101": dict(VISION, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4),
    "pvt-tinyimagenet": dict(
        VISION,
        depths=[2, 2],
        hidden_sizes=[32, 64],
        num_heads=[1, 2],
        mlp_ratios=[4, 4],
        sequence_reduction_ratios=[2, 1],
        patch_sizes=[4, 2],
    ),
}
SEQ, TARGET = 64, 16  # source and target lengths of the text inputs


def random_split(task_name: str, config, n: int) -> tuple[torch.Tensor, ...]:
    """Random tensors in the layout the preset's task reads (regimes.data.Splits)."""
    g = torch.Generator().manual_seed(0)
    if task_name == "classification":
        return torch.randn(n, 3, 32, 32, generator=g), torch.randint(
            config.model_args["num_classes"], (n,), generator=g
        )
    vocab = config.model_args["vocab_size"]
    ids = torch.randint(3, vocab, (n, SEQ), generator=g)
    mask = torch.ones(n, SEQ, dtype=torch.long)
    mask[:, SEQ * 3 // 4 :] = torch.rand(n, 1, generator=g).lt(0.5).long()  # half the samples padded
    ids = ids * mask
    if task_name == "text-classification":
        return ids, mask, torch.randint(config.model_args["num_classes"], (n,), generator=g)
    if task_name == "causal-lm":
        return (torch.randint(3, vocab, (n, SEQ), generator=g),)
    targets = torch.randint(3, vocab, (n, TARGET), generator=g)
    return ids, mask, targets


def measure(preset: str, steps: int, batch: int) -> tuple[float, float, int]:
    config = get_preset(preset)
    config = config.replace(model_args={**config.model_args, **TINY[preset]}, batch_size=batch)
    torch.manual_seed(0)
    model = create_model(config.model, **config.model_args)
    task = get_task(config.task)
    tensors = random_split(config.task, config, 4 * batch)
    optimizer = make_optimizer(config, model)
    probe = task.probe(tensors, torch.arange(config.probe_size), "cpu")
    tracker = regimes.Tracker(model, probe, sites=model_sites(config.model))
    model.train()

    def step(track: bool) -> float:
        indices = torch.randint(len(tensors[0]), (batch,))
        start = time.perf_counter()
        loss, _, _ = task.loss(model, task.batch(tensors, indices, "cpu"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if track:
            tracker.step()
        return time.perf_counter() - start

    for _ in range(3):  # warm-up: first calls set up kernels
        step(False), step(True)
    plain, tracked = [], []
    for _ in range(steps):  # interleaved
        plain.append(step(False))
        tracked.append(step(True))
    _ = tracker.delta_a  # reads back what is queued
    tracker.close()
    return statistics.median(plain), statistics.median(tracked), len(tracker.sites)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"CPU, {args.threads} threads, fp32, batch {args.batch}, probe {round(0.2 * args.batch)}, "
        f"text length {SEQ} (target {TARGET}), images 32x32; median of {args.steps} interleaved steps"
    )
    print("| preset | sites | plain s/step | tracked s/step | tracked / plain |")
    print("|---|---:|---:|---:|---:|")
    for preset in TINY:
        plain, tracked, sites = measure(preset, args.steps, args.batch)
        print(f"| {preset} | {sites} | {plain:.4f} | {tracked:.4f} | {tracked / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
