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
from typing import TypeVar

import numpy as np

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


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over the processes, in place (one all-reduce): each process's loss is
    the mean over its equal share of the global batch, so the average is the gradient of the global mean."""
    if not active():
        return
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean(values):
    """The mean over the processes of a 1-d tensor of per-process values (the same tensor in one process)."""
    if not active():
        return values
    import torch.distributed as dist

    out = values.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def concat(tensor):
    """Every process's ``tensor`` joined along the first dimension, in rank order (the global batch from its
    shares); the tensor itself in one process."""
    if not active():
        return tensor
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def share(n: int) -> slice:
    """This process's equal share of a global batch of ``n`` (all of it in one process); ``n`` must divide."""
    if not active():
        return slice(0, n)
    if n % world_size():
        from benchmark.core.config import ConfigError

        raise ConfigError(f"a batch of {n} cannot be shared out equally over {world_size()} processes: set the "
                          f"method's batch_size to a multiple of {world_size()}")
    return slice(rank() * n // world_size(), (rank() + 1) * n // world_size())


def batch_starts(n: int, batch_size: int, shard_it: bool = True) -> list[int]:
    """The first index of each batch of ``batch_size`` out of ``n`` items that this process makes: every batch in
    one process (or with ``shard_it`` False), its :func:`shard` of them among several."""
    starts = list(range(0, n, batch_size))
    return [starts[i] for i in shard(len(starts))] if shard_it else starts


def fill_batches(out, batch_size: int, make, shard_it: bool = True) -> None:
    """Fill the array ``out`` batch by batch: ``out[start:stop] = make(start, stop)``. In one process (or with
    ``shard_it`` False) every batch here. Among several, each process makes its :func:`shard` of the batches and
    every batch goes to the main process as soon as it is made (one tensor gather per round, a batch from each
    process), so the main process holds the whole result while the others hold only the batch in hand: they leave
    their ``out`` unwritten (its pages never become resident), as they stop after the shared part. The result does
    not depend on the number of processes as long as ``make`` depends on its rows only."""
    n = len(out)
    if not (shard_it and active()):
        for start in batch_starts(n, batch_size, shard_it=False):
            stop = min(n, start + batch_size)
            out[start:stop] = make(start, stop)
        return
    import torch
    import torch.distributed as dist

    mine = batch_starts(n, batch_size)
    rounds = -(-len(range(0, n, batch_size)) // world_size())
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buffer = torch.zeros((batch_size, *out.shape[1:]), dtype=torch.from_numpy(out[:0]).dtype, device=device)
    where = torch.zeros(2, dtype=torch.long, device=device)  # (start, rows) of the batch in the buffer
    parts = [torch.empty_like(buffer) for _ in range(world_size())] if is_main() else None
    places = [torch.empty_like(where) for _ in range(world_size())] if is_main() else None
    for r in range(rounds):
        where.zero_()
        if r < len(mine):  # the last round may have no batch for some processes
            start = mine[r]
            stop = min(n, start + batch_size)
            block = make(start, stop)
            buffer[: stop - start] = torch.from_numpy(np.ascontiguousarray(block)).to(device)
            where[0], where[1] = start, stop - start
        dist.gather(where, places, dst=0)
        dist.gather(buffer, parts, dst=0)
        if is_main():
            for (start, rows), part in zip(places, parts, strict=True):
                out[int(start) : int(start) + int(rows)] = part[: int(rows)].cpu().numpy()

