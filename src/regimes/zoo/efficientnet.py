"""A small EfficientNet (Tan and Le 2019) with ReLU, for small images on a CPU.

EfficientNetB0's building block, MBConv: a 1x1 expansion, a depthwise kxk
convolution, squeeze-and-excitation, a 1x1 projection without activation and
a residual connection where the shape allows, every convolution followed by
BatchNorm. As in the study every swish becomes ReLU (the squeeze-and-excitation
gate stays a sigmoid: a gate, not the block's activation). The Hugging Face
EfficientNetB0 (:mod:`regimes.zoo.hf_vision`) pads for 224x224 inputs and
cannot take 28x28 ones; here every convolution pads to "same", the stem keeps
full resolution and four stages bring 28x28 to 4x4.

Default stages (expansion, channels, blocks, stride, kernel): B0's first four
at a quarter of its depth, (1, 16, 1, 1, 3), (4, 24, 2, 2, 3), (4, 40, 2, 2, 5),
(4, 80, 2, 2, 3); a 1x1 head to 256 features, dropout, a linear classifier.
Each ReLU application is its own module (one site): ``stem.relu``,
``blocks.<i>.expand.relu``, ``blocks.<i>.depthwise.relu``, ``blocks.<i>.se.relu``,
``head.relu``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from regimes.errors import UsageError
from regimes.zoo.activations import activation_module, check_activation
from regimes.zoo.registry import register_model

DEFAULT_STAGES = ((1, 16, 1, 1, 3), (4, 24, 2, 2, 3), (4, 40, 2, 2, 5), (4, 80, 2, 2, 3))


def conv_bn_act(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, activation=None):
    """Conv (``same`` padding, no bias) + BatchNorm (+ the activation, unless None)."""
    layers = OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        bn=nn.BatchNorm2d(out_channels),
    )
    if activation is not None:
        layers["relu" if activation == "relu" else activation] = activation_module(activation)
    return nn.Sequential(layers)


class SqueezeExcite(nn.Module):
    """Channel gate: global pool, 1x1 reduce, activation, 1x1 expand, sigmoid, rescale."""

    def __init__(self, channels: int, reduced: int, activation: str = "relu"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        setattr(self, "relu" if activation == "relu" else activation, activation_module(activation))
        self._activation = "relu" if activation == "relu" else activation
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # [B, C, 1, 1]
        scale = self.expand(getattr(self, self._activation)(self.reduce(scale)))
        return x * torch.sigmoid(scale)


class MBConv(nn.Module):
    """Inverted residual block: expand (1x1), depthwise (kxk), squeeze-excite, project (1x1, linear)."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int, kernel: int, activation: str):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = conv_bn_act(in_channels, hidden, 1, activation=activation) if expansion != 1 else nn.Identity()
        self.depthwise = conv_bn_act(hidden, hidden, kernel, stride, groups=hidden, activation=activation)
        self.se = SqueezeExcite(hidden, max(1, in_channels // 4), activation)  # B0: a quarter of the block's input
        self.project = conv_bn_act(hidden, out_channels, 1)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class SmallEfficientNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        stem_channels: int = 16,
        stages: tuple[tuple[int, int, int, int, int], ...] = DEFAULT_STAGES,
        head_channels: int = 256,
        dropout: float = 0.2,
        activation: str = "relu",
    ):
        super().__init__()
        check_activation(activation)
        self.stem = conv_bn_act(in_channels, stem_channels, 3, activation=activation)  # full resolution
        blocks, channels = [], stem_channels
        for expansion, out_channels, repeats, stride, kernel in stages:
            for i in range(repeats):
                blocks.append(MBConv(channels, out_channels, expansion, stride if i == 0 else 1, kernel, activation))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_act(channels, head_channels, 1, activation=activation)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_channels, num_classes)
        _efficientnet_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))  # [B, head_channels, H / 8, W / 8]
        return self.classifier(self.dropout(self.pool(x).flatten(1)))  # [B, num_classes]


@torch.no_grad()
def _efficientnet_init(model: nn.Module) -> None:
    """torchvision's EfficientNet initialisation: convolutions Kaiming-normal (fan out),
    BatchNorm 1 and 0, the classifier uniform in +-1/sqrt(classes), biases 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / module.out_features**0.5
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)


@register_model(
    "efficientnet_small",
    description="small EfficientNet (MBConv + squeeze-excite, every activation ReLU, 'same' padding) for 28-32 px images",
)
def efficientnet_small(
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    stem_channels: int = 16,
    stages: list = DEFAULT_STAGES,
    head_channels: int = 256,
    dropout: float = 0.2,
    activation: str = "relu",
) -> SmallEfficientNet:
    """``stages``: one ``[expansion, channels, blocks, stride, kernel]`` per stage."""
    stages = tuple(tuple(int(v) for v in stage) for stage in stages)
    if not stages or any(len(stage) != 5 or min(stage) < 1 for stage in stages):
        raise UsageError(
            f"stages: one [expansion, channels, blocks, stride, kernel] of positive numbers each, got {stages}"
        )
    return SmallEfficientNet(in_channels, num_classes, stem_channels, stages, head_channels, dropout, activation)
