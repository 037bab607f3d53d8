"""The benchmark's command line as the processes of ``accelerate launch`` run it in test_multiprocess.py, with what
the test must see noted in ``$MP_NOTES`` (one JSON line per event): every checkpoint and final model file written (by
which rank), and the sampling batches each rank took. With ``$MP_KILL_AFTER=N`` the whole launch is SIGKILLed
right after checkpoint N is written (a machine that dies mid-training)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from benchmark.cli import main
from benchmark.training import distributed
from benchmark.training import loop as training


def note(**event) -> None:
    with open(os.environ["MP_NOTES"], "a") as handle:
        handle.write(json.dumps({"rank": distributed.rank(), **event}) + "\n")


write, shard = training.atomic_write_bytes, distributed.shard


def noted_write(path, data):
    """The file write under every checkpoint and final model (``Checkpoints.save``/``save_final``): noted only
    when it really happens, so the test sees which processes write, not which ones call."""
    path = Path(path)
    write(path, data)
    if path.name.startswith("ckpt-"):
        step = int(path.stem.split("-")[1])
        note(event="checkpoint", step=step)
        if os.environ.get("MP_KILL_AFTER") == str(step):
            kill_the_launch()
    elif path.name == training.Checkpoints.FINAL:
        note(event="final")


def kill_the_launch() -> None:
    """SIGKILL the launcher and every rank (torch's launcher starts each rank in a session of its own)."""
    launcher = os.getppid()
    ranks = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in [*ranks, str(launcher)]:
        if int(pid) != os.getpid():
            os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
    os.killpg(os.getpgid(0), signal.SIGKILL)


def noted_shard(n):
    taken = shard(n)
    note(event="sampling", batches=list(taken), of=n)
    return taken


training.atomic_write_bytes = noted_write
distributed.shard = noted_shard

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
