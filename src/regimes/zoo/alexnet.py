"""AlexNet adapted to 32x32 images (CIFAR)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

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
    ``features.relu1``..``features.relu5``, ``classifier.relu6``, ``classifier.relu7``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 100, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 64, kernel_size=3, stride=2, padding=1),  # [B, 64, 16, 16]
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),  # [B, 64, 8, 8]
                conv2=nn.Conv2d(64, 192, kernel_size=3, padding=1),  # [B, 192, 8, 8]
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),  # [B, 192, 4, 4]
                conv3=nn.Conv2d(192, 384, kernel_size=3, padding=1),  # [B, 384, 4, 4]
                relu3=nn.ReLU(),
                conv4=nn.Conv2d(384, 256, kernel_size=3, padding=1),  # [B, 256, 4, 4]
                relu4=nn.ReLU(),
                conv5=nn.Conv2d(256, 256, kernel_size=3, padding=1),  # [B, 256, 4, 4]
                relu5=nn.ReLU(),
                pool5=nn.MaxPool2d(2),  # [B, 256, 2, 2]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                dropout6=nn.Dropout(dropout),
                fc6=nn.Linear(256 * 2 * 2, 4096),
                relu6=nn.ReLU(),
                dropout7=nn.Dropout(dropout),
                fc7=nn.Linear(4096, 4096),
                relu7=nn.ReLU(),
                fc8=nn.Linear(4096, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [B, 256, 2, 2]
        return self.classifier(x.flatten(1))  # [B, num_classes]


@register_model("alexnet", description="AlexNet for 32x32 images (CIFAR variant: five 3x3 convs)")
def alexnet(*, in_channels: int = 3, num_classes: int = 100) -> AlexNetCIFAR:
    return AlexNetCIFAR(in_channels=in_channels, num_classes=num_classes)
