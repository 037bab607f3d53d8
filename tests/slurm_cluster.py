"""A real one-node SLURM cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd from Debian's ``munge`` and
``slurm-wlm``, each with its files (config, state, spool, pid files, logs, munge socket) in one temporary folder and
non-default ports, so it never touches a system cluster and is stopped by the pids in its pid files.

Used by the ``slurm_cluster`` fixture (tests/conftest.py); also by hand::

    .venv/bin/python tests/slurm_cluster.py start /tmp/medibench-slurm   # prints the SLURM_CONF line to export
    .venv/bin/python tests/slurm_cluster.py stop /tmp/medibench-slurm
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmark.core.cache import pid_alive
from benchmark.core.threads import usable_cores

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "srun", "sinfo")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def ensure_installed() -> str | None:
    """None when the SLURM and munge programs are here (installing them with apt-get as root when they are not);
    otherwise why not."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (f"SLURM tests need {', '.join(missing_binaries())} (Debian's {' and '.join(PACKAGES)}); as root: "
                f"apt-get install -y --no-install-recommends {' '.join(PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:  # a stale package index: update it once
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or missing_binaries():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return f"SLURM tests: could not install {' '.join(PACKAGES)} with apt-get ({tail[0]})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _whole_session_cores() -> None:
    """preexec_fn of the daemons: the cores the test session started with (tests/conftest.CORES_ENV), not the
    share an xdist worker is pinned to, so that slurmd finds the CPUs its node is configured with."""
    cores = os.environ.get("MEDIBENCH_TEST_CORES")
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, [int(c) for c in cores.split(",")])


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class SlurmCluster:
    """One node (this host, 127.0.0.1) in one partition ``debug``; ``env`` is what clients need (SLURM_CONF)."""

    def __init__(self, folder: Path | str, cpus: int | None = None, memory_mb: int = 2000):
        self.folder = Path(folder).resolve()
        self.host = socket.gethostname().split(".")[0]
        cores = os.environ.get("MEDIBENCH_TEST_CORES")
        self.cpus = cpus or (len(cores.split(",")) if cores else usable_cores())
        self.memory_mb = memory_mb
        self.conf = self.folder / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _pid_files(self) -> dict[str, Path]:
        return {"slurmd": self.folder / "slurmd.pid", "slurmctld": self.folder / "slurmctld.pid",
                "munged": self.folder / "munge" / "munged.pid"}

    def _write_conf(self) -> None:
        f = self.folder
        ctld_port, d_port = _free_port(), _free_port()
        while d_port == ctld_port:
            d_port = _free_port()
        lines = [
            "ClusterName=medibench-test",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmUser=root",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "KillWait=5",  # scancel: SIGTERM, then SIGKILL after this many seconds (default 30)
            "SchedulerParameters=sched_interval=2",  # dependent jobs start within seconds of their dependency
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Start munged, slurmctld and slurmd; return once the node is idle (RuntimeError naming the log if not)."""
        reason = ensure_installed()
        if reason:
            raise RuntimeError(reason)
        for sub in ("state", "spool", "munge"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._write_conf()
        m = self.folder / "munge"
        subprocess.run([_which("munged"), "--force", f"--socket={self.munge_socket}", f"--pid-file={m / 'munged.pid'}",
                        f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"],
                       check=True, capture_output=True, timeout=30, preexec_fn=_whole_session_cores)
        env = dict(os.environ, **self.env)
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.run([_which(daemon), "-f", str(self.conf)], env=env, capture_output=True, text=True,
                                  timeout=60, preexec_fn=_whole_session_cores)
            if proc.returncode != 0:
                self.stop()
                raise RuntimeError(f"{daemon} did not start: {proc.stderr.strip()} (log: {self.folder})")
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True)
            state = out.stdout.strip()
            if out.returncode == 0 and state.startswith("idle"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the test SLURM node is not idle after {timeout:.0f} s (sinfo: {state!r}); logs in "
                           f"{self.folder}")

    def cancel_all(self, timeout: float = 20) -> None:
        """Cancel every job of the cluster and wait until none runs (a job's processes outlive a stopped slurmd)."""
        env = dict(os.environ, **self.env)
        squeue = [_which("squeue"), "--noheader", "--format=%i"]
        jobs = subprocess.run(squeue, env=env, capture_output=True, text=True, timeout=30).stdout.split()
        if not jobs:
            return
        subprocess.run([_which("scancel"), *jobs], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = subprocess.run([*squeue, "--states=RUNNING,COMPLETING"], env=env, capture_output=True, text=True,
                                  timeout=30).stdout.split()
            if not left:
                return
            time.sleep(0.5)

    def stop(self, timeout: float = 20) -> None:
        """Cancel the jobs left, then stop the daemons by the pids in their pid files (slurmd, slurmctld, munged)."""
        ctld = _read_pid(self._pid_files()["slurmctld"])
        if ctld is not None and pid_alive(ctld):
            try:
                self.cancel_all()
            except (OSError, subprocess.SubprocessError):
                pass
        daemons = [pid for pid in (_read_pid(self._pid_files()[n]) for n in ("slurmd", "slurmctld")) if pid]
        munged = _read_pid(self._pid_files()["munged"])
        for group in (daemons, [munged] if munged else []):  # munged last: the SLURM daemons use it to the end
            group = [pid for pid in group if pid_alive(pid)]
            for pid in group:
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while any(pid_alive(pid) for pid in group) and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in group:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: slurm_cluster.py start|stop FOLDER", file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[1])
    if argv[0] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
