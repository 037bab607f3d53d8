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
    """Maps explicit lowercase names to factories, each with a one-line description.

    A resolver (:meth:`add_resolver`) lets a reference that is not a name stand for an entry: the task registry's
    resolver reads a task file (``path/to/task.toml``), registers its task and answers with its name."""

    def __init__(self, kind: str, other_choices: str = ""):
        self.kind = kind
        self.other_choices = other_choices  # named after the choices in the unknown-name message
        self._entries: dict[str, tuple[T, str]] = {}
        self._resolvers: list[Callable[[str], str | None]] = []

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

    def add_resolver(self, resolver: Callable[[str], str | None]) -> None:
        """``resolver(reference)`` registers what a reference that is no registered name stands for and returns its
        name, or returns None when the reference is not its kind (it raises when it is, but is broken)."""
        if resolver not in self._resolvers:
            self._resolvers.append(resolver)

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for: itself, or what a resolver made of it (a task file -> its
        task's name); an unknown name is returned as it is."""
        if name in self._entries:
            return name
        for resolver in self._resolvers:
            found = resolver(name)
            if found is not None:
                return found
        return name

    def get(self, name: str) -> T:
        name = self.canonical(name)
        if name not in self._entries:
            hint = did_you_mean(name, self.names())
            other = f", {self.other_choices}" if self.other_choices else ""
            raise RegistryError(f"unknown {self.kind} {name!r}{hint}; choose from: {', '.join(self.names())}{other}")
        return self._entries[name][0]

    def description(self, name: str) -> str:
        name = self.canonical(name)
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


# The suite's three registries; the built-ins register themselves when methods/, tasks/ and evaluation.encoders
# import, installed packages through the entry-point groups medibench.methods, .tasks and .encoders. This module
# imports none of them: benchmark.plugins.load_plugins() (called by the commands, the runner and the reports) does.
METHODS: Registry = Registry("method")
TASKS: Registry = Registry("task", "or a task file (path/to/task.toml)")
ENCODERS: Registry = Registry("encoder")
