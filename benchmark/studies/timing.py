"""Throughput measured as a ratio against a reference in the same run (the perf stages and the scale study)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def rate(fn: Callable[[], Any], items: int, rounds: int = 3, warmup: int = 1) -> float:
    """Items per second of ``fn`` (which handles ``items`` each call) over ``rounds`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return rounds * items / (time.perf_counter() - start)


def alternate(ours: Callable[[], float], ref: Callable[[], float], rounds: int = 1) -> tuple[float, float]:
    """(ours, reference), measured ref, ours, ref, ... with ``rounds`` measurements of ours between ``rounds`` + 1
    of the reference, so that a drift of the machine's speed (another process, the clock) falls on both; each
    figure is the mean of its measurements."""
    refs, mine = [ref()], []
    for _ in range(rounds):
        mine.append(ours())
        refs.append(ref())
    return sum(mine) / len(mine), sum(refs) / len(refs)
