"""Presets: every row of the study's Table II with the configuration that won its sweep,
plus offline stand-ins that need no download (SPEC section 4).

The study did not publish batch sizes; the ones here are ordinary choices for
each data set, and part of the preset so that `regimes show` states them.
"""

from __future__ import annotations

import difflib

from regimes.experiment.config import ConfigError, RunConfig
from regimes.zoo import STUDY_DROPOUT


def _mlp(input_size, num_classes, hidden, dropout):
    return {"input_size": input_size, "num_classes": num_classes, "hidden": list(hidden), "dropout": dropout}


_PRESETS: dict[str, dict] = {
    # The study's rows (Table II), MLPs and CNNs: up to 30 epochs; AlexNet up to 200.
    "mlp-adult": dict(
        description="MLP 104-256-128-64-2 on Adult (UCI census income); Adam, lr 1e-2, wd 1e-4",
        model="mlp", model_args=_mlp(104, 2, (256, 128, 64), STUDY_DROPOUT), dataset="adult",
        optimizer="adam", lr=1e-2, weight_decay=1e-4, batch_size=128, max_epochs=30,
    ),
    "mlp-breast-cancer": dict(
        description="MLP 30-64-32-2 on Breast Cancer (ships with scikit-learn, no download); SGD, lr 1e-2, wd 1e-4",
        model="mlp", model_args=_mlp(30, 2, (64, 32), STUDY_DROPOUT), dataset="breast-cancer",
        optimizer="sgd", lr=1e-2, weight_decay=1e-4, batch_size=32, max_epochs=30,
    ),
    "mlp-har": dict(
        description="MLP 561-512-256-6 on UCI HAR (no dropout); SGD, lr 1e-2, wd 1e-4",
        model="mlp", model_args=_mlp(561, 6, (512, 256), 0.0), dataset="har",
        optimizer="sgd", lr=1e-2, weight_decay=1e-4, batch_size=64, max_epochs=30,
    ),
    "mlp-mnist": dict(
        description="MLP 784-256-128-10 on MNIST; SGD, lr 1e-2, wd 1e-4",
        model="mlp", model_args=_mlp(784, 10, (256, 128), STUDY_DROPOUT), dataset="mnist",
        optimizer="sgd", lr=1e-2, weight_decay=1e-4, batch_size=128, max_epochs=30,
    ),
    "lenet5-mnist": dict(
        description="LeNet5 on MNIST (28x28, padded first conv); SGD, lr 1e-2, wd 1e-4",
        model="lenet5", model_args={"in_channels": 1, "num_classes": 10, "input_size": 28}, dataset="mnist",
        optimizer="sgd", lr=1e-2, weight_decay=1e-4, batch_size=128, max_epochs=30,
    ),
    "lenet5-cifar10": dict(
        description="LeNet5 on CIFAR-10 (32x32x3); Adam, lr 1e-3, wd 1e-4",
        model="lenet5", model_args={"in_channels": 3, "num_classes": 10, "input_size": 32}, dataset="cifar10",
        optimizer="adam", lr=1e-3, weight_decay=1e-4, batch_size=128, max_epochs=30,
    ),
    "alexnet-cifar100": dict(
        description="CIFAR AlexNet (five 3x3 convs) on CIFAR-100; SGD, lr 1e-3, wd 1e-3; up to 200 epochs (GPU)",
        model="alexnet", model_args={"in_channels": 3, "num_classes": 100}, dataset="cifar100",
        optimizer="sgd", lr=1e-3, weight_decay=1e-3, batch_size=128, max_epochs=200,
    ),
    # Offline stand-ins: no download, for newcomers and the tests.
    "mlp-digits": dict(
        description="MLP 784-256-128-10 on scikit-learn's digits upsampled to 28x28 (MNIST stand-in, offline); the MNIST row's config",
        model="mlp", model_args=_mlp(784, 10, (256, 128), STUDY_DROPOUT), dataset="digits",
        optimizer="sgd", lr=1e-2, weight_decay=1e-4, batch_size=64, max_epochs=30,
    ),
    "lenet5-digits": dict(
        description="LeNet5 on scikit-learn's digits upsampled to 28x28 (MNIST stand-in, offline); the MNIST row's config",
        model="lenet5", model_args={"in_channels": 1, "num_classes": 10, "input_size": 28}, dataset="digits",
        optimizer="sgd", lr=1e-2, weight_decay=1e-4, batch_size=64, max_epochs=30,
    ),
    "mlp-mnist1d": dict(
        description="MLP 40-256-128-10 on MNIST-1D (generated procedurally, offline); the MNIST row's config",
        model="mlp", model_args=_mlp(40, 10, (256, 128), STUDY_DROPOUT), dataset="mnist1d",
        optimizer="sgd", lr=1e-2, weight_decay=1e-4, batch_size=64, max_epochs=30,
    ),
}


def list_presets() -> dict[str, str]:
    """`{name: one-line description}`, in the study's order."""
    return {name: preset["description"] for name, preset in _PRESETS.items()}


def get_preset(name: str) -> RunConfig:
    if name not in _PRESETS:
        match = difflib.get_close_matches(name, list(_PRESETS), n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; `regimes presets` lists them: {', '.join(_PRESETS)}")
    return RunConfig.from_dict({**_PRESETS[name], "preset": name})
