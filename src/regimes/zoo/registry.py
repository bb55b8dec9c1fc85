"""One registry for every model the experiments can build (timm-style).

A model family registers a factory function under a name; the runner, the CLI
and the presets only ever call ``create_model(name, **kwargs)``. Factories take
keyword arguments only, so a preset (plain data) can set any of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from regimes.errors import UsageError
from regimes.registry import Registry, suggestion


class ModelArgumentError(UsageError, TypeError):
    """A model argument the factory does not take, or one it needs and did not get (a user's
    mistake in a config: a ValueError to the CLI, a TypeError like a bad call in Python)."""


ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: ModelFactory
    description: str
    sites: tuple[str, ...] | None = None  # the sites the study tracks (globs); None: every activation


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str, *, description: str, sites: tuple[str, ...] | list[str] | None = None
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register ``factory`` under ``name`` with a one-line description.

    ``sites``: name globs of the activation sites the study tracks in this model
    (the Tracker's ``sites=`` filter), e.g. only the feed-forward ReLUs of a
    Transformer; None tracks every activation.
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        MODELS.register(name, ModelEntry(name, factory, description, None if sites is None else tuple(sites)))
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def describe_models() -> dict[str, str]:
    """``{name: one-line description}`` for every registered model, sorted by name."""
    return {name: MODELS.get(name).description for name in list_models()}


def model_sites(name: str) -> list[str] | None:
    """The site globs registered with model ``name`` (None: track every activation)."""
    sites = MODELS.get(name).sites
    return None if sites is None else list(sites)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name``, passing ``kwargs`` to its factory.

    Raises ValueError for an unknown name and TypeError for arguments the
    factory does not take (both list what is valid and suggest the nearest).
    """
    entry = MODELS.get(name)
    _check_arguments(entry, kwargs)
    return entry.factory(**kwargs)


def missing_arguments(name: str, kwargs: dict) -> list[str]:
    """The arguments model ``name`` needs (no default) that ``kwargs`` does not give."""
    parameters = inspect.signature(MODELS.get(name).factory).parameters
    return [
        key
        for key, p in parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and key not in kwargs
    ]


def check_arguments(name: str, kwargs: dict, *, complete: bool = True) -> None:
    """Raise ModelArgumentError for an argument model ``name`` does not take, and (``complete``)
    for one it needs that ``kwargs`` leaves out; nothing is built."""
    _check_arguments(MODELS.get(name), kwargs, complete)


def _check_arguments(entry: ModelEntry, kwargs: dict, complete: bool = True) -> None:
    # Checked before building so a typo in a preset gets a readable message
    # instead of a bare "unexpected keyword argument" from deep in a factory.
    parameters = inspect.signature(entry.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = [key for key in kwargs if key not in parameters]
    if unknown and not takes_any:
        raise ModelArgumentError(
            f"unknown argument {unknown[0]!r} for model {entry.name!r}"
            f"{suggestion(unknown[0], accepted)}; it takes: {', '.join(accepted)}"
        )
    missing = missing_arguments(entry.name, kwargs) if complete else []
    if missing:
        raise ModelArgumentError(f"model {entry.name!r} needs the argument(s): {', '.join(missing)}")
