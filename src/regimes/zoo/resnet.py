"""A small CIFAR-style ResNet (He et al. 2016, section 4.2) for small images on a CPU.

The ImageNet ResNet34 (:mod:`regimes.zoo.hf_vision`) opens with a 7x7 stride-2
convolution and a max-pool, which leave a 28x28 image 7x7 before the first
block. Here the stem is one 3x3 convolution at full resolution, as in the
paper's CIFAR networks; then stages of basic blocks, each stage after the first
halving the resolution and doubling the width. With ``depths=(1, 1, 1)`` and
widths 16-32-64 it is a ResNet-8 (about 78k parameters for one channel in).

Every ReLU application is its own module, so each is one site with a readable
name: ``stem.relu``, ``stages.<s>.<b>.relu1`` (inside the block) and
``stages.<s>.<b>.relu2`` (after the sum with the shortcut).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from regimes.errors import UsageError
from regimes.zoo.activations import activation_module, check_activation
from regimes.zoo.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut (1x1 conv + BN where the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = activation_module(activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu2 = activation_module(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """3x3 stem at full resolution, ``len(widths)`` stages of basic blocks, global average pool, linear head."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        depths: tuple[int, ...] = (1, 1, 1),
        widths: tuple[int, ...] = (16, 32, 64),
        activation: str = "relu",
    ):
        super().__init__()
        check_activation(activation)
        if len(depths) != len(widths) or not depths or min(depths) < 1 or min(widths) < 1:
            raise UsageError(
                f"depths and widths need one positive entry per stage, got {list(depths)} and {list(widths)}"
            )
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(widths[0]),
                relu=activation_module(activation),
            )
        )
        stages, channels = [], widths[0]
        for stage, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, activation))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():  # as torchvision's ResNet
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # [B, widths[-1], H / 2^(stages-1), W / 2^(stages-1)]
        return self.fc(self.pool(x).flatten(1))  # [B, num_classes]


@register_model(
    "resnet_small",
    description="CIFAR-style ResNet (3x3 stem, basic blocks, BatchNorm, ReLU); default ResNet-8, widths 16-32-64",
)
def resnet_small(
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    depths: list = (1, 1, 1),
    widths: list = (16, 32, 64),
    activation: str = "relu",
) -> SmallResNet:
    return SmallResNet(in_channels, num_classes, tuple(depths), tuple(widths), activation)
