"""Vision models through Hugging Face ``transformers`` configs, built from scratch with ReLU.

ResNet34 and EfficientNetB0 (every activation ReLU, all tracked) and the vision
Transformers ViT-B/16, Swin and PVT (only the feed-forward activation is ReLU,
and only those sites are tracked). Nothing is downloaded: each model is built
from a config with the library's default initialisation. ``transformers`` is
imported inside the factories, so ``list_models()`` works without it.

Every model takes images ``[B, C, H, W]`` and returns logits ``[B, num_classes]``.
The Transformers resize their input to ``image_size`` (bilinear) when it differs,
so CIFAR's 32x32 or TinyImageNet's 64x64 images feed a 224x224 ViT-B/16.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from regimes.extras import require
from regimes.zoo.activations import check_activation, use_torch_activations
from regimes.zoo.registry import register_model

# The feed-forward ReLU of each Transformer, by module path inside the wrapper.
VIT_SITES = ("*.mlp.activation_fn",)
SWIN_SITES = ("*.mlp.activation_fn",)
PVT_SITES = ("*.mlp.intermediate_act_fn",)


def import_transformers():
    """The ``transformers`` module (a MissingExtraError that names the extra if it is not installed)."""
    transformers = require("transformers", "building a Hugging Face model")
    transformers.logging.set_verbosity_error()  # no "newly initialised weights" chatter
    return transformers


class ImageClassifier(nn.Module):
    """A Hugging Face image classifier as ``logits = model(images)``."""

    def __init__(self, hf: nn.Module, image_size: int | None = None):
        super().__init__()
        self.hf = hf
        self.image_size = image_size  # None: take the images as they come

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return self.hf(pixel_values=images).logits  # [B, num_classes]


# ---- CNNs: every ReLU tracked --------------------------------------------------------


@register_model("resnet34", description="ResNet34 (HF ResNetConfig, basic blocks 3-4-6-3, ReLU), from scratch")
def resnet34(
    *,
    num_classes: int = 100,
    in_channels: int = 3,
    depths: list = (3, 4, 6, 3),
    hidden_sizes: list = (64, 128, 256, 512),
    embedding_size: int = 64,
    activation: str = "relu",
) -> ImageClassifier:
    transformers = import_transformers()
    config = transformers.ResNetConfig(
        num_channels=in_channels,
        embedding_size=embedding_size,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type="basic",
        hidden_act=check_activation(activation),
        num_labels=num_classes,
    )
    # The library's basic block hard-codes ReLU after its first convolution: that one too.
    return ImageClassifier(use_torch_activations(transformers.ResNetForImageClassification(config), relu_to=activation))


@register_model(
    "efficientnet_b0",
    description="EfficientNetB0 (HF EfficientNetConfig, width/depth 1.0) with every activation ReLU, from scratch",
)
def efficientnet_b0(
    *,
    num_classes: int = 100,
    in_channels: int = 3,
    width_coefficient: float = 1.0,
    depth_coefficient: float = 1.0,
    dropout_rate: float = 0.2,
    activation: str = "relu",
) -> ImageClassifier:
    # B0: 16 MBConv blocks, 1280 features before the head; its squeeze-and-excitation
    # gates stay sigmoid (a gate, not the block's activation). The swish activations
    # all become ReLU, as in the study; activation="silu" keeps the native swish.
    transformers = import_transformers()
    from transformers.models.efficientnet.modeling_efficientnet import round_filters

    config = transformers.EfficientNetConfig(
        num_channels=in_channels,
        image_size=224,
        width_coefficient=width_coefficient,
        depth_coefficient=depth_coefficient,
        dropout_rate=dropout_rate,
        hidden_act=check_activation(activation),
        num_labels=num_classes,
    )
    config.hidden_dim = round_filters(config, 1280)  # the head's width: 1280 for B0
    model = use_torch_activations(transformers.EfficientNetForImageClassification(config))
    _torchvision_efficientnet_init(model)
    return ImageClassifier(model)


@torch.no_grad()
def _torchvision_efficientnet_init(model: nn.Module) -> None:
    """torchvision's EfficientNet initialisation, in place of the library's.

    transformers draws BatchNorm scales from N(0, 0.02) (its checkpoints are
    converted, never trained from scratch): through 16 blocks the signal
    vanishes and nothing trains. Here, as in torchvision: convolutions
    Kaiming-normal (fan out), BatchNorm 1 and 0, the classifier uniform in
    +-1/sqrt(classes), biases 0.
    """
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


# ---- vision Transformers: feed-forward ReLUs tracked -----------------------------------


@register_model("vit", description="ViT (HF ViTConfig; default B/16 at 224) with ReLU feed-forwards", sites=VIT_SITES)
def vit(
    *,
    num_classes: int = 100,
    in_channels: int = 3,
    image_size: int = 224,
    patch_size: int = 16,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    intermediate_size: int = 3072,
    activation: str = "relu",
) -> ImageClassifier:
    transformers = import_transformers()
    config = transformers.ViTConfig(
        num_channels=in_channels,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        hidden_act=check_activation(activation),
        num_labels=num_classes,
    )
    return ImageClassifier(use_torch_activations(transformers.ViTForImageClassification(config)), image_size)


@register_model(
    "swin",
    description="Swin Transformer (HF SwinConfig; default Swin-B at 224) with ReLU feed-forwards",
    sites=SWIN_SITES,
)
def swin(
    *,
    num_classes: int = 101,
    in_channels: int = 3,
    image_size: int = 224,
    patch_size: int = 4,
    embed_dim: int = 128,
    depths: list = (2, 2, 18, 2),
    num_heads: list = (4, 8, 16, 32),
    window_size: int = 7,
    mlp_ratio: float = 4.0,
    activation: str = "relu",
) -> ImageClassifier:
    transformers = import_transformers()
    config = transformers.SwinConfig(
        num_channels=in_channels,
        image_size=image_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(num_heads),
        window_size=window_size,
        mlp_ratio=mlp_ratio,
        hidden_act=check_activation(activation),
        num_labels=num_classes,
    )
    return ImageClassifier(use_torch_activations(transformers.SwinForImageClassification(config)), image_size)


@register_model(
    "pvt",
    description="Pyramid Vision Transformer v1 (HF PvtConfig; default PVT-Small at 224) with ReLU feed-forwards",
    sites=PVT_SITES,
)
def pvt(
    *,
    num_classes: int = 200,
    in_channels: int = 3,
    image_size: int = 224,
    depths: list = (3, 4, 6, 3),
    hidden_sizes: list = (64, 128, 320, 512),
    num_heads: list = (1, 2, 5, 8),
    mlp_ratios: list = (8, 8, 4, 4),
    sequence_reduction_ratios: list = (8, 4, 2, 1),
    patch_sizes: list = (4, 2, 2, 2),
    activation: str = "relu",
) -> ImageClassifier:
    transformers = import_transformers()
    config = transformers.PvtConfig(
        num_channels=in_channels,
        image_size=image_size,
        depths=list(depths),
        hidden_sizes=list(hidden_sizes),
        num_attention_heads=list(num_heads),
        mlp_ratios=list(mlp_ratios),
        patch_sizes=list(patch_sizes),
        strides=list(patch_sizes),
        sequence_reduction_ratios=list(sequence_reduction_ratios),
        num_encoder_blocks=len(depths),
        hidden_act=check_activation(activation),
        num_labels=num_classes,
    )
    return ImageClassifier(use_torch_activations(transformers.PvtForImageClassification(config)), image_size)
