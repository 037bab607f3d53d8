"""Ctrl-C and SIGTERM as KeyboardInterrupt, remembered.

A library caught in the middle of a system call by the KeyboardInterrupt may fail while cleaning up and raise an
error of its own instead (seen: ``OSError: [Errno 9] Bad file descriptor`` from a Ctrl-C during a sweep job). The
handler records when a signal came, and :func:`as_interrupt` re-raises any failure after it as the interruption it
is; the runner wraps each run's work in it, so the MLflow run is marked KILLED rather than FAILED, the sweep job
goes back to pending rather than to failed, a tuning trial stops the study, and the CLI (which wraps each command
in it too) exits 130.

Training keeps its work: :func:`deferred` lets the current step finish before the KeyboardInterrupt is raised,
``benchmark.training.loop.train_loop`` then writes a checkpoint of that step and notes it here (:func:`note_kept`), and
the CLI's message says which step a rerun resumes from.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_received: float | None = None
_deferring = False  # inside deferred(): the first signal is held until the block ends
_held = False  # a signal arrived inside deferred() and is still to be raised


@dataclass(frozen=True)
class Kept:
    """Work an interruption did not lose: a training checkpoint written (or already there) when it came."""

    what: str  # "nsclc: training medi (fp32)"
    step: int  # the checkpoint's step: a resumed run starts here
    total: int  # the steps training runs to
    where: str  # the checkpoint file
    at: float  # time.monotonic() when it was noted


_kept: list[Kept] = []


def _interrupt(signum: int, frame: object) -> None:
    global _received, _held
    _received = time.monotonic()
    if _deferring and not _held:  # a second signal is not held: a stuck block still stops
        _held = True
        return
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, even when the parent started us with SIGINT ignored (a background
    job of a non-interactive shell, some CI runners). Main thread only."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def interrupted_since(start: float) -> bool:
    """Whether SIGINT or SIGTERM arrived at or after ``start`` (a ``time.monotonic()`` value)."""
    return _received is not None and _received >= start


@contextmanager
def as_interrupt() -> Iterator[None]:
    """An error raised in the block after SIGINT or SIGTERM arrived (during the block) becomes KeyboardInterrupt."""
    start = time.monotonic()
    try:
        yield
    except Exception as exc:
        if interrupted_since(start):
            raise KeyboardInterrupt from exc
        raise


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise KeyboardInterrupt: a training step interrupted this
    way finishes, so the checkpoint written for it is exact. A second signal raises at once. Takes effect with the
    handlers of :func:`install` only (the CLI's); elsewhere a signal interrupts the block as usual."""
    global _deferring, _held
    if _deferring:  # nested: the outer block decides
        yield
        return
    _deferring, _held = True, False
    try:
        yield
    finally:
        _deferring = False
    if _held:
        _held = False
        raise KeyboardInterrupt


def note_kept(what: str, step: int, total: int, where: str) -> None:
    """Record that an interruption left a training checkpoint at ``step`` (the CLI's message says so)."""
    _kept.append(Kept(what, step, total, where, time.monotonic()))


def kept_since(start: float) -> list[Kept]:
    """What interruptions kept at or after ``start`` (a ``time.monotonic()`` value), oldest first."""
    return [k for k in _kept if k.at >= start]
