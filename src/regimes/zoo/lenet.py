"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as commonly used today."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from regimes.errors import UsageError
from regimes.zoo.activations import activation_module, check_activation
from regimes.zoo.registry import register_model

# 28x28 inputs (MNIST) are padded by 2 so both sizes reach the classic 16x5x5 map.
_PADDING_FOR_INPUT_SIZE = {28: 2, 32: 0}


class LeNet5(nn.Module):
    """LeNet-5: two 5x5 conv + max-pool stages, then 120 -> 84 -> num_classes.

    The original's tanh/sigmoid and subsampling are replaced by ReLU and
    max-pooling (the usual modern form). ``input_size`` 28 pads the first conv
    by 2, ``input_size`` 32 uses no padding; both give 61,706 parameters for
    one input channel and 10 classes. Layers are numbered by depth (conv1,
    conv2, fc3, fc4, fc5) and activation sites are ``features.relu1``,
    ``features.relu2``, ``classifier.relu3``, ``classifier.relu4``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, activation: str = "relu"):
        super().__init__()
        check_activation(activation)
        if input_size not in _PADDING_FOR_INPUT_SIZE:
            raise UsageError(
                f"LeNet5 takes 28x28 or 32x32 inputs, got input_size={input_size!r}; "
                "resize other images to one of these"
            )
        padding = _PADDING_FOR_INPUT_SIZE[input_size]
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),  # [B, 6, 28, 28]
                **{f"{activation}1": activation_module(activation)},
                pool1=nn.MaxPool2d(2),  # [B, 6, 14, 14]
                conv2=nn.Conv2d(6, 16, kernel_size=5),  # [B, 16, 10, 10]
                **{f"{activation}2": activation_module(activation)},
                pool2=nn.MaxPool2d(2),  # [B, 16, 5, 5]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc3=nn.Linear(16 * 5 * 5, 120),
                **{f"{activation}3": activation_module(activation)},
                fc4=nn.Linear(120, 84),
                **{f"{activation}4": activation_module(activation)},
                fc5=nn.Linear(84, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [B, 16, 5, 5]
        return self.classifier(x.flatten(1))  # [B, num_classes]


@register_model("lenet5", description="LeNet-5 with ReLU and max-pooling, 28x28 or 32x32 inputs")
def lenet5(*, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, activation: str = "relu") -> LeNet5:
    return LeNet5(in_channels=in_channels, num_classes=num_classes, input_size=input_size, activation=activation)
