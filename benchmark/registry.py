"""One small registry class; the three registries of the suite live where their entries are defined."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate name; the message names the value and the valid choices."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` closest to a mistyped ``name`` (difflib's ratio >= 0.6), or None."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'medi'?)`` for the choice closest to a mistyped ``name``, or ``""`` if none is close."""
    close = closest(name, choices)
    return f" (did you mean {close!r}?)" if close else ""


class Registry(Generic[T]):
    """Maps explicit lowercase names to factories, each with a one-line description."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[T, str]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("none", "no augmentation")``."""
        if name != name.lower() or not name or " " in name:
            raise ValueError(f"{self.kind} name must be a lowercase word without spaces, got {name!r}")

        def deco(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(f"duplicate {self.kind} name {name!r}: already registered")
            self._entries[name] = (obj, description)
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._entries:
            hint = did_you_mean(name, self.names())
            raise RegistryError(f"unknown {self.kind} {name!r}{hint}; choose from: {', '.join(self.names())}")
        return self._entries[name][0]

    def description(self, name: str) -> str:
        self.get(name)
        return self._entries[name][1]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


# The suite's three registries; the built-ins register themselves when methods/, tasks/ and benchmark.encoders
# import, installed packages through the entry-point groups medibench.methods, .tasks and .encoders (plugins.py).
METHODS: Registry = Registry("method")
TASKS: Registry = Registry("task")
ENCODERS: Registry = Registry("encoder")


def load_plugins() -> None:
    """Register the built-in methods, tasks and encoders and those of installed plug-in packages, once per process.

    Cheap: no heavy imports beyond the plug-ins' own modules. A plug-in that cannot be loaded is a one-line warning
    (benchmark.plugins)."""
    from benchmark.plugins import load_plugins as load

    load()
