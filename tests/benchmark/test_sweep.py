"""Sweeps on this machine: content-addressed jobs, accurate --dry-run, resume after an interruption, workers, the
per-run lock (a job running elsewhere is not run twice)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.core import threads
from benchmark.orchestration import sweep
from tests.conftest import ROOT, ctrl_c_when, run_cli

SMOKE = ["--preset", "smoke", "--no-progress"]


def _records(out: Path) -> dict[str, float]:
    """record.json path -> mtime of every finished run under ``out``."""
    return {str(p): p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/*/record.json")}


def _dry_states(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """job name -> state from the --dry-run table."""
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit():
            states[parts[1]] = parts[3]
    return states


def test_plan_is_seed_major_and_content_addressed(tmp_path):
    jobs = sweep.plan_jobs(["none", "medi"], ["nsclc"], [0, 1], "smoke", "cpu", [], tmp_path)
    assert [j.name for j in jobs] == ["none-nsclc-s0", "medi-nsclc-s0", "none-nsclc-s1", "medi-nsclc-s1"]
    assert len({j.key for j in jobs}) == 4
    # the same job asked twice is one job; the key is the run directory's hash
    again = sweep.plan_jobs(["none", "none"], ["nsclc"], [0, 0], "smoke", "cpu", [], tmp_path)
    assert len(again) == 1 and again[0].key == jobs[0].key and again[0].run_dir.name.endswith(jobs[0].key)
    # an override is part of the address
    other = sweep.plan_jobs(["none"], ["nsclc"], [0], "smoke", "cpu", ["probe.C=0.5"], tmp_path)
    assert other[0].key != jobs[0].key


def test_parse_errors_name_the_value():
    with pytest.raises(sweep.ConfigError, match="unknown 'bogus'; choose from: a, b"):
        sweep.parse_names("a,bogus", ["a", "b"], "methods")
    assert sweep.parse_seeds("3") == [0, 1, 2] and sweep.parse_seeds("4,2,4") == [4, 2]
    for bad in ("0", "x", "-1,2"):
        with pytest.raises(sweep.ConfigError, match="--seeds"):
            sweep.parse_seeds(bad)


def test_bad_arguments_are_one_line(tmp_path):
    proc = run_cli("sweep", "--methods", "none,nosuch", *SMOKE, "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown 'nosuch'" in proc.stderr
    proc = run_cli("sweep", "--methods", "none", *SMOKE, "--out", str(tmp_path), "--no-wait", cwd=tmp_path)
    assert proc.returncode == 2 and "--no-wait is for --launcher slurm" in proc.stderr
    proc = run_cli("sweep", "--methods", "none", *SMOKE, "--out", str(tmp_path), "--launcher", "slurm",
                   "--slurm-option", "nokeyvalue", cwd=tmp_path)
    assert proc.returncode == 2 and "--slurm-option: KEY=VALUE" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_interrupted_sweep_resumes_without_redoing_finished_jobs(tmp_path):
    out = tmp_path / "results"
    args = ["sweep", "--methods", "none,stain_norm", "--tasks", "nsclc", "--seeds", "2", *SMOKE, "--out", str(out)]
    dry = run_cli(*args, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "= 4 jobs" in dry.stdout and set(_dry_states(dry).values()) == {"pending"}
    assert not (out / "runs").exists()  # a dry run runs nothing

    # start the sweep and interrupt it (Ctrl-C) once the first job has finished
    proc, stdout, stderr = ctrl_c_when(args, lambda: _records(out), tmp_path)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    finished = _records(out)
    assert 1 <= len(finished) < 4

    # --dry-run is accurate: finished jobs done, the rest pending, nothing left running
    dry = run_cli(*args, "--dry-run", cwd=tmp_path)
    states = _dry_states(dry)
    assert list(states.values()).count("done") == len(finished)
    assert "running" not in states.values()

    # the same command again finishes the sweep and does not touch finished runs
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "sweep finished: 4/4 jobs done" in again.stdout
    after = _records(out)
    assert len(after) == 4
    assert all(after[p] == mtime for p, mtime in finished.items())
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4  # every job ran exactly once
    # and once more: nothing to do
    last = run_cli(*args, cwd=tmp_path)
    assert "to run 0" in last.stdout and _records(out) == after


_CLEANUP_FAILS = """
import errno, sys, time
from pathlib import Path
from benchmark.protocols import Method
from benchmark.core.registry import METHODS

@METHODS.register("cleanupfails", "fails with its own error while unwinding a Ctrl-C, as some libraries do")
class CleanupFails(Method):
    name = "cleanupfails"

    def fit(self, train, ctx):
        Path(sys.argv[1]).touch()
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            raise OSError(errno.EBADF, "Bad file descriptor") from None

from benchmark.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_ctrl_c_that_a_library_turns_into_another_error_is_still_an_interruption(tmp_path):
    """A library interrupted in a system call may raise its own error while cleaning up (seen in a sweep:
    OSError EBADF instead of KeyboardInterrupt); the job must go back to pending, not be recorded as failed,
    its MLflow run must be KILLED and the sweep must stop with 130 instead of going on with the next job."""
    from mlflow.tracking import MlflowClient

    script, marker, out = tmp_path / "plugin_main.py", tmp_path / "fitting", tmp_path / "results"
    script.write_text(_CLEANUP_FAILS)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["sweep", "--methods", "cleanupfails", "--tasks", "nsclc", "--seeds", "2", *SMOKE, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, str(script), str(marker), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not marker.exists() and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:  # without the fix the sweep goes on to the next job, whose fit never ends
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "failed" not in stderr.lower()
    assert "cleanupfails-nsclc-s1" not in stdout  # the sweep stopped; it did not go on with the next seed
    assert not list(out.glob("runs/*/*/*/record.json"))  # no record: the same command runs both jobs again
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_two_workers_run_each_job_once(tmp_path):
    out = tmp_path / "results"
    proc = run_cli("sweep", "--methods", "none", "--tasks", "nsclc,uterine", "--seeds", "2", *SMOKE,
                   "--out", str(out), "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sweep finished: 4/4 jobs done" in proc.stdout
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in records) == sorted(  # one line per job: each ran exactly once
        ["none-nsclc-s0", "none-nsclc-s1", "none-uterine-s0", "none-uterine-s1"])
    assert {r["host"]["threads"] for r in records} == {threads.share(2)}  # the cores divided between the workers
    assert not (out / "sweep.db").exists()


def test_ctrl_c_stops_every_worker_of_a_pool(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group): the pool's workers ignore it and are stopped by the sweep,
    one SIGTERM each, so a running job stops as a Ctrl-C stops it and no queued job starts; the sweep exits 130."""
    out = tmp_path / "results"
    proc, _, stderr = ctrl_c_when(["sweep", "--methods", "none,stain_norm", "--tasks", "nsclc", "--seeds", "2",
                                   *SMOKE, "--out", str(out), "--workers", "2"], lambda: _records(out), tmp_path,
                                  wait=60)
    assert proc.returncode == 130, stderr
    assert "interrupted: finished runs are kept" in stderr
    left = time.time() + 10  # no worker left behind (an exited one may stay a zombie for a moment)
    with pytest.raises(ProcessLookupError):
        while time.time() < left:
            os.killpg(proc.pid, 0)
            time.sleep(0.2)
    assert len(_records(out)) < 4


def test_a_job_running_elsewhere_is_not_run_twice_and_the_sweep_waits_for_it(tmp_path):
    """The run's lock, held by another process (another sweep, a SLURM job, another host), keeps the job from running
    twice; the sweep runs the other jobs, then waits for that one and reuses its record."""
    from benchmark.orchestration.runner import _RunLock

    out = tmp_path / "results"
    jobs = sweep.plan_jobs(["none"], ["nsclc"], [0, 1], "smoke", "auto", [], out)
    held = jobs[0]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    with _RunLock(held.run_dir):
        proc = subprocess.Popen([sys.executable, "-m", "benchmark", "sweep", "--methods", "none", "--tasks", "nsclc",
                                 "--seeds", "2", *SMOKE, "--out", str(out)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "waiting for it" in line and held.name in line and "none-nsclc-s1: done" in "".join(lines):
                break
        assert proc.poll() is None, "".join(lines)
        status = run_cli("sweep", "--methods", "none", "--tasks", "nsclc", "--seeds", "2", *SMOKE, "--out", str(out),
                         "--status", cwd=tmp_path)
        assert f"lock held by {socket.gethostname()} {os.getpid()}" in status.stdout
    rest, _ = proc.communicate(timeout=300)  # the lock is free: the sweep runs the job itself
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    assert "running elsewhere" in text and "sweep finished: 2/2 jobs done" in text
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_a_second_process_waits_for_the_model_being_trained(tmp_path):
    """Sweep workers running two seeds of one method share its model: the second waits, it does not retrain."""
    from benchmark.training.loop import Checkpoints

    code = ("import sys; from benchmark.training.loop import Checkpoints\n"
            f"with Checkpoints({str(tmp_path)!r}).exclusive():\n    print('got it', flush=True)\n")
    with Checkpoints(tmp_path).exclusive():
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)  # blocked while this process trains
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "got it" in out


def test_a_record_missing_from_results_jsonl_is_added_once(tmp_path):
    """A run interrupted after record.json but before its results.jsonl line is completed on reuse, once."""
    from benchmark.core.tracking import append_record, read_records

    rec = {"run_id": "abc", "started": "2026-01-01T00:00:00+00:00", "metrics": {}}
    append_record(tmp_path, rec, if_missing=True)
    append_record(tmp_path, rec, if_missing=True)
    assert len(read_records(tmp_path)) == 1
    append_record(tmp_path, dict(rec, started="2026-01-02T00:00:00+00:00"), if_missing=True)  # a --force rerun
    assert len(read_records(tmp_path)) == 2


def test_atomic_files_are_readable_by_others(tmp_path):
    """Results and figures written atomically get the usual permissions, not mkstemp's 0600."""
    import importlib

    import benchmark.core.cache as cache

    old = os.umask(0o022)
    try:
        importlib.reload(cache)  # the mode is derived from the umask at import
        with cache.atomic_file(tmp_path / "x.json") as fh:
            fh.write(b"{}")
    finally:
        os.umask(old)
        importlib.reload(cache)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
