"""Several processes of one run (``accelerate launch --num_processes N``): who is the main process and how the
processes agree.

Under a launcher (``accelerate launch`` or ``torchrun``) every process runs the same command. The main process
(rank 0) does everything a single process does; the others join it for the collective parts: training a generative
model (each takes its share of every global batch; gradients are averaged) and sampling (each makes its share of
the batches, all of them get the whole result). Only the main process writes checkpoints, models, records and
tracking runs. Without a launcher every function here is a no-op and the run is the single-process run it always was.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    """Processes in this run (the launcher's ``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's index among them (``RANK``; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """Several processes, joined together: between :func:`init` and :func:`finish`. Outside that stretch every
    collective here acts as in a single process."""
    if world_size() == 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init(device: str) -> None:
    """Join the launcher's process group (gloo on the CPU, nccl on CUDA) before the first collective."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState(cpu=device == "cpu")


def broadcast(value: T) -> T:
    """The main process's ``value`` in every process (a decision all must take together)."""
    if not active():
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def gather(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order, in every process."""
    if not active():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def shard(n: int) -> range:
    """The indices of ``n`` items (batches) this process takes: every ``world_size()``-th, from its rank."""
    return range(rank(), n, world_size()) if active() else range(n)


def finish() -> None:
    """End the shared part: wait for every process, then leave the process group, so that what the main process does
    alone afterwards (evaluation; torchmetrics would otherwise try to synchronize its FID) is single-process."""
    if active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
