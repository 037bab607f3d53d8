"""Shared fixtures: running the CLI as a user would (a subprocess), free ports for real servers, and a real SLURM
cluster on this machine (tests/slurm_cluster.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The cores the test session started with (comma-separated), before an xdist worker is pinned to its share.
CORES_ENV = "MEDIBENCH_TEST_CORES"


def _pin_xdist_worker() -> None:
    """Under pytest-xdist (``-n N``), worker k runs on every N-th core from k, it and every process it starts (the
    CLI in a subprocess sizes its threads by its CPU affinity: benchmark.core.threads): N workers whose torch
    threads each took all the cores would run N times the busy threads the machine has, which slowed runs 7-20x."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault(CORES_ENV, ",".join(map(str, cores)))
    mine = cores[int(worker[2:]) % len(cores) :: count] if len(cores) >= count else cores
    if mine:
        os.sched_setaffinity(0, mine)
        os.environ["OMP_NUM_THREADS"] = str(len(mine))


_pin_xdist_worker()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """``python -m benchmark ARGS`` in a subprocess; returns the CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.pop("MLFLOW_TRACKING_URI", None)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_process_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """Stop a server started with ``start_new_session=True``: SIGTERM to its group, SIGKILL if it lingers."""
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def ctrl_c_when(args: list[str], ready, cwd: Path, timeout: float = 240, env: dict | None = None, poll: float = 0.2,
                wait: float = 120) -> tuple[subprocess.Popen, str, str]:
    """``python -m benchmark ARGS`` in its own process group; once ``ready()`` is true (within ``timeout`` seconds,
    the process still running), SIGINT to the group as a terminal's Ctrl-C sends it. Returns (process, stdout,
    stderr) after it exits; the group is SIGKILLed if anything fails on the way."""
    import signal
    import time

    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    full_env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", *args], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while not ready() and proc.poll() is None:
            assert time.time() < deadline, f"not ready after {timeout} s: {' '.join(args)}"
            time.sleep(poll)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=wait)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, stdout, stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def smoke_nsclc():
    """(task, splits) of nsclc on the smoke preset's embedded data."""
    from benchmark.core.config import PRESETS
    from benchmark.core.registry import TASKS
    from benchmark.plugins import load_plugins

    load_plugins()
    preset = PRESETS["smoke"]
    task = TASKS.get("nsclc")(preset.data, preset.split, None)
    return task, task.splits(0)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster (munged, slurmctld, slurmd on 127.0.0.1, its own ports and files) for the session;
    skipped with the reason when Debian's slurm-wlm and munge are missing and cannot be installed."""
    from tests.slurm_cluster import SlurmCluster, ensure_installed

    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
