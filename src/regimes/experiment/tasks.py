"""Tasks: how a batch becomes a loss and a score, and how the score reads.

The training loop only talks to a task, so a new kind of model (language models,
sequence-to-sequence) brings its own task and leaves the loop alone. A task sees
the split's tensors (the layouts are listed on :class:`regimes.data.Splits`):
``setup(splits)`` once, then ``batch``, ``probe``, ``loss`` and ``score``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from regimes.registry import Registry

PAD_ID = 0  # the tokenizers' padding id (regimes.data.text)


class Classification:
    """Cross-entropy on logits; the score is accuracy (higher is better).

    uint8 images (splits with ``pixel_mean``) are scaled to [0, 1] and normalised
    on the device, batch by batch.
    """

    score_name = "accuracy"
    higher_is_better = True
    eval_batch_size: int | None = 1024  # None: the run's batch size (large models)

    def __init__(self) -> None:
        self.pixel_mean = self.pixel_std = None

    def setup(self, splits) -> None:
        """Read what the task needs from the data (called once, before any batch)."""
        if getattr(splits, "pixel_mean", None) is not None:
            self.pixel_mean = torch.tensor(splits.pixel_mean).view(1, -1, 1, 1)
            self.pixel_std = torch.tensor(splits.pixel_std).view(1, -1, 1, 1)
            self.eval_batch_size = None

    def batch(self, tensors: tuple[torch.Tensor, ...], indices: torch.Tensor, device) -> tuple:
        inputs, labels = (t[indices].to(device, non_blocking=True) for t in tensors)
        if inputs.dtype == torch.uint8:
            mean, std = self.pixel_mean.to(device), self.pixel_std.to(device)
            inputs = (inputs.float().div_(255) - mean) / std
        return inputs, labels

    def probe(self, tensors: tuple[torch.Tensor, ...], indices: torch.Tensor, device):
        inputs, _labels = self.batch(tensors, indices, device)
        return inputs

    def logits(self, model, inputs) -> torch.Tensor:
        return model(**inputs) if isinstance(inputs, dict) else model(inputs)

    def loss(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(mean loss, number correct as a device scalar, number of predictions)."""
        inputs, labels = batch
        logits = self.logits(model, inputs).float()  # [B, classes]
        loss = F.cross_entropy(logits, labels)
        correct = (logits.argmax(1) == labels).sum()
        return loss, correct, labels.numel()

    def score(self, loss_sum: float, correct: float, count: int) -> float:
        return correct / count if count else math.nan


def _trim(*tensors_and_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cut [B, T] tensors to the longest real sequence in the batch (the last tensor is the mask)."""
    mask = tensors_and_mask[-1]
    length = max(1, int(mask.sum(1).max()))
    return tuple(t[:, :length] for t in tensors_and_mask)


class TextClassification(Classification):
    """Token ids with an attention mask -> class. The probe is a dict with the mask, so padding is not a unit."""

    eval_batch_size = None

    def setup(self, splits) -> None:
        pass

    def batch(self, tensors, indices, device):
        input_ids, attention_mask, labels = (t[indices] for t in tensors)
        input_ids, attention_mask = _trim(input_ids, attention_mask)  # padding costs nothing
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        return inputs, labels.to(device)


class CausalLM(Classification):
    """Next-token prediction on blocks of a token stream; the score is perplexity (lower is better).

    Position t predicts token t + 1, so a block of T tokens gives T - 1 predictions.
    The score is ``exp(mean token cross-entropy)`` over the split.
    """

    score_name = "perplexity"
    higher_is_better = False
    eval_batch_size = None

    def setup(self, splits) -> None:
        pass

    def batch(self, tensors, indices, device):
        (input_ids,) = (t[indices].to(device) for t in tensors)
        return {"input_ids": input_ids}, input_ids

    def loss(self, model, batch):
        inputs, tokens = batch
        logits = self.logits(model, inputs)[:, :-1].float()  # [B, T-1, vocab]
        targets = tokens[:, 1:]  # [B, T-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        correct = (logits.argmax(-1) == targets).sum()
        return loss, correct, targets.numel()

    def score(self, loss_sum: float, correct: float, count: int) -> float:
        return math.exp(min(loss_sum / count, 700.0)) if count else math.nan  # exp overflows past ~709


class Seq2Seq(Classification):
    """Source -> target text with teacher forcing (T5 on SQuAD).

    The decoder reads ``<pad>`` then the target shifted right and predicts every
    target token. The score is **token accuracy under teacher forcing**: the
    fraction of the target's tokens (its ``</s>`` included, padding excluded)
    that are the argmax of the logits. The loss is the mean token cross-entropy.
    """

    score_name = "token accuracy"
    eval_batch_size = None

    def setup(self, splits) -> None:
        pass

    def _inputs(self, tensors, indices, device, trim: bool):
        input_ids, attention_mask, targets = (t[indices] for t in tensors)
        target_mask = (targets != PAD_ID).long()
        if trim:
            input_ids, attention_mask = _trim(input_ids, attention_mask)
            targets, target_mask = _trim(targets, target_mask)
        decoder_input_ids = torch.cat([torch.full_like(targets[:, :1], PAD_ID), targets[:, :-1]], dim=1)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": target_mask,
        }
        return {k: v.to(device) for k, v in inputs.items()}, targets.to(device)

    def batch(self, tensors, indices, device):
        return self._inputs(tensors, indices, device, trim=True)

    def probe(self, tensors, indices, device):
        # Untrimmed: the source and target keep their distinct fixed lengths, by which
        # the tracker tells the encoder's padding from the decoder's.
        inputs, _targets = self._inputs(tensors, indices, device, trim=False)
        return inputs

    def loss(self, model, batch):
        inputs, targets = batch
        logits = self.logits(model, inputs).float()  # [B, T_out, vocab]
        real = targets != PAD_ID
        loss = F.cross_entropy(logits[real], targets[real])
        correct = (logits.argmax(-1)[real] == targets[real]).sum()
        return loss, correct, int(real.sum())


TASKS: Registry[type[Classification]] = Registry(
    "task",
    entries={
        "classification": Classification,
        "text-classification": TextClassification,
        "causal-lm": CausalLM,
        "seq2seq": Seq2Seq,
    },
)


def get_task(name: str) -> Classification:
    """A new instance of the task registered as ``name`` (a task keeps per-run state)."""
    return TASKS.get(name)()
