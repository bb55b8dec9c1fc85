"""Tasks: how a batch becomes a loss and a score, and how the score reads.

The training loop only talks to a task, so a new kind of model (language models,
sequence-to-sequence) brings its own task and leaves the loop alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Classification:
    """Cross-entropy on logits; the score is accuracy (higher is better)."""

    score_name = "accuracy"
    higher_is_better = True

    def batch(self, tensors: tuple[torch.Tensor, ...], indices: torch.Tensor, device) -> tuple:
        return tuple(t[indices].to(device, non_blocking=True) for t in tensors)

    def probe(self, tensors: tuple[torch.Tensor, ...], indices: torch.Tensor, device):
        inputs, _labels = self.batch(tensors, indices, device)
        return inputs

    def loss(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(mean loss, number correct as a device scalar, batch size)."""
        inputs, labels = batch
        logits = model(inputs)  # [B, classes]
        loss = F.cross_entropy(logits, labels)
        correct = (logits.argmax(1) == labels).sum()
        return loss, correct, labels.numel()

    def score(self, loss_sum: float, correct: float, count: int) -> float:
        return correct / count if count else math.nan


TASKS = {"classification": Classification}


def get_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()
