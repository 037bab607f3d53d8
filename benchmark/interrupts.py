"""Ctrl-C and SIGTERM as KeyboardInterrupt, remembered.

A library caught in the middle of a system call by the KeyboardInterrupt may fail while cleaning up and raise an
error of its own instead (seen: ``OSError: [Errno 9] Bad file descriptor`` from a Ctrl-C during a sweep job). The
handler records when a signal came, and :func:`as_interrupt` re-raises any failure after it as the interruption it
is; the runner wraps each run's work in it, so the MLflow run is marked KILLED rather than FAILED, the sweep job
goes back to pending rather than to failed, a tuning trial stops the study, and the CLI (which wraps each command
in it too) exits 130.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

_received: float | None = None


def _interrupt(signum: int, frame: object) -> None:
    global _received
    _received = time.monotonic()
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
