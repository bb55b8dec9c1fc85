"""AlexNet adapted to 32x32 images (CIFAR)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from regimes.zoo.activations import activation_module, check_activation
from regimes.zoo.registry import register_model


class AlexNetCIFAR(nn.Module):
    """The widely used CIFAR adaptation of AlexNet (Krizhevsky et al. 2012).

    Variant: five 3x3 convolutions with 64-192-384-256-256 channels (the
    torchvision AlexNet widths); the first has stride 2, all have padding 1;
    2x2 max-pooling after conv1, conv2 and conv5 brings 32x32 down to 2x2.
    Classifier: Dropout(0.5) -> Linear(256*2*2, 4096) -> ReLU -> Dropout(0.5)
    -> Linear(4096, 4096) -> ReLU -> Linear(4096, num_classes). No local
    response normalisation, no batch norm. Layer names follow the Caffe
    AlexNet (conv1..conv5, fc6..fc8); the 7 activation sites are
    ``features.relu1``..``features.relu5``, ``classifier.relu6``, ``classifier.relu7``
    (``gelu1``.. or ``silu1``.. with ``activation`` "gelu" or "silu").
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 100, dropout: float = 0.5, activation: str = "relu"):
        super().__init__()
        check_activation(activation)
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 64, kernel_size=3, stride=2, padding=1),  # [B, 64, 16, 16]
                **{f"{activation}1": activation_module(activation)},
                pool1=nn.MaxPool2d(2),  # [B, 64, 8, 8]
                conv2=nn.Conv2d(64, 192, kernel_size=3, padding=1),  # [B, 192, 8, 8]
                **{f"{activation}2": activation_module(activation)},
                pool2=nn.MaxPool2d(2),  # [B, 192, 4, 4]
                conv3=nn.Conv2d(192, 384, kernel_size=3, padding=1),  # [B, 384, 4, 4]
                **{f"{activation}3": activation_module(activation)},
                conv4=nn.Conv2d(384, 256, kernel_size=3, padding=1),  # [B, 256, 4, 4]
                **{f"{activation}4": activation_module(activation)},
                conv5=nn.Conv2d(256, 256, kernel_size=3, padding=1),  # [B, 256, 4, 4]
                **{f"{activation}5": activation_module(activation)},
                pool5=nn.MaxPool2d(2),  # [B, 256, 2, 2]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                dropout6=nn.Dropout(dropout),
                fc6=nn.Linear(256 * 2 * 2, 4096),
                **{f"{activation}6": activation_module(activation)},
                dropout7=nn.Dropout(dropout),
                fc7=nn.Linear(4096, 4096),
                **{f"{activation}7": activation_module(activation)},
                fc8=nn.Linear(4096, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [B, 256, 2, 2]
        return self.classifier(x.flatten(1))  # [B, num_classes]


@register_model("alexnet", description="AlexNet for 32x32 images (CIFAR variant: five 3x3 convs)")
def alexnet(*, in_channels: int = 3, num_classes: int = 100, activation: str = "relu") -> AlexNetCIFAR:
    return AlexNetCIFAR(in_channels=in_channels, num_classes=num_classes, activation=activation)
