"""The activation every zoo model takes (`model_args.activation`): "relu" (the study's),
"gelu" or "silu". The tracker follows it: the runner passes the same name as the
Tracker's `activation`, and a unit is on when its pre-activation is > 0 (SPEC section 1).
"""

from __future__ import annotations

import torch.nn as nn

from regimes.errors import UsageError
from regimes.registry import suggestion

ACTIVATIONS = ("relu", "gelu", "silu")


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise UsageError(
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}{suggestion(name, ACTIVATIONS)}"
        )
    return name


def activation_module(name: str) -> nn.Module:
    """A fresh torch module for the activation `name`."""
    return {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[check_activation(name)]()


def use_torch_activations(model: nn.Module, relu_to: str = "relu") -> nn.Module:
    """Replace Hugging Face's activation modules (GELUActivation, NewGELUActivation,
    SiLUActivation) in `model` by torch's own (nn.GELU, nn.GELU(approximate="tanh"),
    nn.SiLU), computing the same function. The tracker sees torch's modules as sites, named
    by their module path as the ReLU sites are, so a model's registered site globs hold for
    every activation. ReLU needs nothing: Hugging Face's is torch's nn.ReLU. `relu_to`: also
    replace every nn.ReLU by this activation (for models that hard-code some ReLUs)."""
    from transformers import activations as hf

    replacements = {
        hf.GELUActivation: nn.GELU,
        hf.NewGELUActivation: lambda: nn.GELU(approximate="tanh"),
        hf.SiLUActivation: nn.SiLU,
    }
    if relu_to != "relu":
        replacements[nn.ReLU] = lambda: activation_module(relu_to)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            make = replacements.get(type(child))
            if make is not None:
                setattr(parent, name, make())
    return model
