"""The multilayer perceptrons of the study (SPEC section 4, Table I)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn

from regimes.errors import UsageError
from regimes.zoo.activations import activation_module, check_activation
from regimes.zoo.registry import register_model

# The study marks some MLPs "dropout" but publishes no rate; presets use this one.
STUDY_DROPOUT = 0.2


class MLP(nn.Module):
    """Flatten, then per hidden width Linear -> BatchNorm1d -> ReLU -> Dropout, then a Linear head.

    ``activation`` "gelu" or "silu" puts that activation in place of ReLU (sites
    ``blocks.<i>.gelu``, ``blocks.<i>.silu``).

    The study's MLPs all use BatchNorm. Where the study says "dropout" it gives
    no rate; the presets use ``p = STUDY_DROPOUT = 0.2``. Dropout modules exist
    only when ``dropout > 0``. Activation sites are named ``blocks.<i>.relu``.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        batchnorm: bool = True,
        activation: str = "relu",
    ):
        super().__init__()
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise UsageError(f"hidden must be a list of positive integers (e.g. [64, 32]), got {hidden!r}")
        check_activation(activation)
        hidden = tuple(hidden)  # presets come from TOML, where this is a list
        _check_positive(input_size=input_size, num_classes=num_classes)
        _check_positive(**{f"hidden[{i}]": width for i, width in enumerate(hidden)})
        if not 0.0 <= dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {dropout}")

        blocks = []
        widths = (input_size, *hidden)
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            blocks.append(_hidden_block(fan_in, fan_out, dropout, batchnorm, activation))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # [B, input_size]
        x = self.blocks(x)  # [B, hidden[-1]]
        return self.head(x)  # [B, num_classes]


def _hidden_block(
    fan_in: int, fan_out: int, dropout: float, batchnorm: bool, activation: str = "relu"
) -> nn.Sequential:
    layers = OrderedDict(linear=nn.Linear(fan_in, fan_out))
    if batchnorm:
        layers["norm"] = nn.BatchNorm1d(fan_out)
    layers[activation] = activation_module(activation)
    if dropout > 0:
        layers["dropout"] = nn.Dropout(dropout)
    return nn.Sequential(layers)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not (isinstance(value, int) and value > 0):
            raise UsageError(f"{name} must be a positive integer, got {value!r}")


@register_model("mlp", description="MLP with BatchNorm and optional dropout (the study's Table I MLPs)")
def mlp(
    *,
    input_size: int,
    num_classes: int,
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.0,
    batchnorm: bool = True,
    activation: str = "relu",
) -> MLP:
    return MLP(input_size, num_classes, hidden=hidden, dropout=dropout, batchnorm=batchnorm, activation=activation)
