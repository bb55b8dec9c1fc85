"""Models the experiments can build, by name: ``create_model("lenet5", num_classes=10)``.

Importing this package registers every built-in family. A family with heavy
optional dependencies must import them inside its factory, not at module
level, so that ``list_models()`` works without them installed.
"""

# Importing a family module registers its factories (the Hugging Face families import
# transformers only inside their factories).
from regimes.zoo import hf_text, hf_vision  # noqa: F401
from regimes.zoo.alexnet import AlexNetCIFAR
from regimes.zoo.efficientnet import SmallEfficientNet
from regimes.zoo.lenet import LeNet5
from regimes.zoo.mlp import MLP, STUDY_DROPOUT
from regimes.zoo.registry import create_model, describe_models, list_models, model_sites, register_model
from regimes.zoo.resnet import SmallResNet

__all__ = [
    "AlexNetCIFAR",
    "LeNet5",
    "MLP",
    "STUDY_DROPOUT",
    "SmallEfficientNet",
    "SmallResNet",
    "create_model",
    "describe_models",
    "list_models",
    "model_sites",
    "register_model",
]
