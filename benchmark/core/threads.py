"""Thread budgets: processes that run side by side share the cores instead of each taking all of them.

torch (intra-op OpenMP) and the BLAS/OpenMP pools of numpy, scipy and scikit-learn each start one thread per core by
default. Two sweep workers on a 2-core machine then run four or more busy threads on two cores, and measured runs
slowed 7-20x. Every parallel process therefore calls :func:`limit` with its share, :func:`share`, of the cores this
process may run on (the CPU affinity mask, not the host's count, which containers and SLURM restrict).
"""

from __future__ import annotations

import os

_limits = []  # keeps threadpoolctl's limiter alive for the life of the process


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def share(processes: int) -> int:
    """Threads per process when ``processes`` run at once: the usable cores split evenly, at least one."""
    return max(1, usable_cores() // max(1, processes))


def limit(threads: int) -> None:
    """Cap this process at ``threads`` for torch and for every BLAS / OpenMP pool threadpoolctl finds."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    _limits.append(threadpool_limits(limits=threads))
