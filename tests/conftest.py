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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
