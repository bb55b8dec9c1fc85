"""Optional dependencies, checked in one place (torchmetrics' ``RequirementCache``).

Only torch and numpy are required. Everything else belongs to a pip extra, and
code that needs it asks here, so a missing package is always one line that
names the extra to install:

    >>> plt = require("matplotlib.pyplot", "the run's figure")  # doctest: +SKIP
    MissingExtraError: the run's figure needs matplotlib, which is not installed: pip install -e '.[study]' (in the regimes checkout)

``available(module)`` answers without importing (for "skip this if absent").
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from types import ModuleType
from typing import NamedTuple

from regimes.errors import RegimesError

__all__ = ["EXTRAS", "Extra", "MissingExtraError", "available", "install_command", "require"]


class Extra(NamedTuple):
    package: str  # what pip calls it (scikit-learn for sklearn)
    extra: str  # the regimes extra that installs it: pip install -e '.[<extra>]' in the checkout


# Top-level module -> the package and the extra (pyproject.toml's optional-dependencies).
EXTRAS: dict[str, Extra] = {
    "matplotlib": Extra("matplotlib", "study"),
    "pyarrow": Extra("pyarrow", "study"),
    "tomli_w": Extra("tomli-w", "study"),
    "tqdm": Extra("tqdm", "study"),
    "sklearn": Extra("scikit-learn", "study"),
    "mnist1d": Extra("mnist1d", "study"),
    "datasets": Extra("datasets", "hub"),
    "PIL": Extra("pillow", "hub"),
    "transformers": Extra("transformers", "transformers"),
    "tokenizers": Extra("tokenizers", "transformers"),
    "ray": Extra("ray[tune]", "ray"),
    "pandas": Extra("pandas", "pandas"),
    "lightning": Extra("lightning", "lightning"),
    "accelerate": Extra("accelerate", "accelerate"),
    "mlflow": Extra("mlflow", "mlflow"),
    "tensorboard": Extra("tensorboard", "tensorboard"),
    "wandb": Extra("wandb", "wandb"),
}


class MissingExtraError(RegimesError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def install_command(module: str) -> str:
    """``pip install -e '.[<extra>]'`` for an optional module (dotted names: by their top level);
    the package installs from its checkout."""
    return f"pip install -e '.[{_extra(module).extra}]' (in the regimes checkout)"


def available(module: str) -> bool:
    """Whether ``module``'s package is installed (dotted names: their top level), without importing it."""
    top = module.split(".")[0]
    if top in sys.modules:  # imported already, or blocked with None (as the tests do)
        return sys.modules[top] is not None
    return _installed(top)


def require(module: str, purpose: str) -> ModuleType:
    """Import and return ``module`` (``"matplotlib.pyplot"``), or raise `MissingExtraError`:
    ``<purpose> needs <package>, which is not installed: pip install -e '.[<extra>]' ...``."""
    package = _extra(module).package
    if not available(module):
        raise MissingExtraError(f"{purpose} needs {package}, which is not installed: {install_command(module)}")
    try:
        return importlib.import_module(module)
    except ImportError as error:  # installed, but part of it (or of what it needs) is missing
        raise MissingExtraError(
            f"{purpose} needs {package}, which does not import ({error}): {install_command(module)}"
        ) from error


def _extra(module: str) -> Extra:
    top = module.split(".")[0]
    if top not in EXTRAS:  # our bug: every optional import goes through the table
        raise KeyError(f"{top!r} is not an optional dependency of regimes; add it to regimes.extras.EXTRAS")
    return EXTRAS[top]


@functools.cache
def _installed(module: str) -> bool:
    # find_spec looks on sys.path without running the module: cheap enough to ask often,
    # and cached because the answer does not change within a process.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
