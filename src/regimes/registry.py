"""Name-to-thing tables (models, data sets, tasks, presets, grids, engines, activations).

Every table a user names things from is a `Registry`, so an unknown name
always reads the same way, whatever the kind:

    unknown model 'mlpp' (did you mean 'mlp'?); known: alexnet, ..., mlp, ...

`suggestion` is the one "did you mean" for code that checks names outside a
registry (config keys, optimizer names).

>>> colours = Registry("colour")
>>> colours.register("red", "#f00")
'#f00'
>>> colours.get("red")
'#f00'
>>> colours.get("rde")
Traceback (most recent call last):
    ...
regimes.registry.UnknownNameError: unknown colour 'rde' (did you mean 'red'?); known: red
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from regimes.errors import UsageError

__all__ = ["Registry", "UnknownNameError", "suggestion", "unknown_name_message"]

T = TypeVar("T")
_NOTHING = object()  # register(name) without a value: used as a decorator


class UnknownNameError(UsageError):
    """A name that is not registered; the message suggests the nearest and lists the known ones."""


def suggestion(word, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the choice nearest to ``word``, or ``""`` when none is near."""
    nearest = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {nearest[0]!r}?)" if nearest else ""


def unknown_name_message(kind: str, name, known: Iterable[str], advice: str = "") -> str:
    """``unknown <kind> '<name>' (did you mean '<x>'?); known: <sorted names>[; <advice>]``."""
    known = sorted(known)
    message = f"unknown {kind} {name!r}{suggestion(name, known)}; known: {', '.join(known)}"
    return f"{message}; {advice}" if advice else message


class Registry(Generic[T]):
    """Things of one ``kind`` by name. Iteration and `items` keep the order of
    registration (a preset list reads in the study's order); `names` is sorted.

    ``advice`` ends the unknown-name message (e.g. "or give a TOML grid file");
    ``error`` is the `UnknownNameError` subclass to raise, for callers whose
    users expect a more specific error type as well.
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T] | None = None,
        *,
        advice: str = "",
        error: type[UnknownNameError] = UnknownNameError,
    ) -> None:
        if not issubclass(error, UnknownNameError):
            raise TypeError(f"error must be a subclass of UnknownNameError, got {error!r}")
        self.kind = kind
        self.advice = advice
        self.error = error
        self._entries: dict[str, T] = {}
        for name, value in (entries or {}).items():
            self.register(name, value)

    def register(self, name: str, value=_NOTHING):
        """Register ``value`` under ``name`` and return it; without ``value``, a decorator.

        A name is registered once: a second registration is a bug, not an override.
        """
        if value is _NOTHING:

            def decorate(thing: T) -> T:
                return self.register(name, thing)

            return decorate
        if name in self._entries:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = value
        return value

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name raises ``self.error``."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name is unknown too
            raise self.error(unknown_name_message(self.kind, name, self._entries, self.advice)) from None

    __getitem__ = get

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``[(name, entry)]`` in the order of registration."""
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
