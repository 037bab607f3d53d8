"""Sweeps: content-addressed jobs, accurate --dry-run, resume after an interruption, atomic claims, workers."""

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

from benchmark import sweep
from tests.conftest import ROOT, run_cli

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


def test_claims_are_exclusive_and_dead_claims_are_freed(tmp_path):
    jobs = sweep.plan_jobs(["none"], ["nsclc", "uterine"], [0], "smoke", "cpu", [], tmp_path)
    url = sweep.default_queue_url(tmp_path)
    a, b = sweep.Queue(url), sweep.Queue(url, stale_after=0.5)
    a.register(jobs)
    b.register(jobs)  # idempotent: a second host registering the same sweep adds nothing
    assert len(a.rows()) == 2
    keys = [j.key for j in jobs]
    first = a.claim(keys, "hostA:1")
    second = b.claim(keys, "hostB:2")
    assert {first, second} == set(keys)  # each job claimed exactly once
    assert a.claim(keys, "hostA:1") is None
    # a claim held by a dead process on this host goes back to pending at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    a.release(first, "hostA:1")
    mine = f"{socket.gethostname()}:{pid}"
    assert a.claim(keys, mine) == first
    assert a.recover_stale() >= 1
    assert a.rows([first])[first]["state"] == "pending"
    # a claim from another host without a heartbeat for stale_after seconds is taken over
    time.sleep(0.7)
    assert b.recover_stale() == 1
    assert b.rows([second])[second]["state"] == "pending"
    # finishing needs the claim: a worker that lost it cannot overwrite the new owner's state
    taken = a.claim(keys, "hostC:3")
    a.finish(taken, "hostB:2", {"x": 1})
    row = a.rows([taken])[taken]
    assert row["state"] == "running" and row["owner"] == "hostC:3"
    a.finish(taken, "hostC:3", {"x": 1})
    assert a.rows([taken])[taken]["state"] == "done"


def test_bad_queue_url_is_one_line(tmp_path):
    proc = run_cli("sweep", "--methods", "none", "--tasks", "nsclc", "--seeds", "1", *SMOKE, "--out", str(tmp_path),
                   "--queue", "nosuchdb://x/y", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().startswith("error: sweep queue 'nosuchdb://x/y' is unusable")
    assert "Traceback" not in proc.stderr
    proc = run_cli("sweep", "--methods", "none,nosuch", *SMOKE, "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown 'nosuch'" in proc.stderr


def test_interrupted_sweep_resumes_without_redoing_finished_jobs(tmp_path):
    out = tmp_path / "results"
    args = ["sweep", "--methods", "none,stain_norm", "--tasks", "nsclc", "--seeds", "2", *SMOKE, "--out", str(out)]
    dry = run_cli(*args, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "= 4 jobs" in dry.stdout and set(_dry_states(dry).values()) == {"pending"}
    assert not (out / "runs").exists()  # a dry run runs nothing

    # start the sweep and interrupt it (Ctrl-C) once the first job has finished
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not _records(out) and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
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
from benchmark.registry import METHODS

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

from benchmark.__main__ import main
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
    rows = sweep.Queue(sweep.default_queue_url(out)).rows()
    assert sorted(r["state"] for r in rows.values()) == ["pending", "pending"]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_two_workers_run_each_job_once(tmp_path):
    out = tmp_path / "results"
    proc = run_cli("sweep", "--methods", "none", "--tasks", "nsclc,uterine", "--seeds", "2", *SMOKE,
                   "--out", str(out), "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sweep finished: 4/4 jobs done" in proc.stdout
    rows = sweep.Queue(sweep.default_queue_url(out)).rows()
    assert len(rows) == 4
    assert all(r["state"] == "done" and r["attempts"] == 1 for r in rows.values())
    owners = {r["owner"] for r in rows.values()}
    assert len(owners) >= 1 and all(":" in o for o in owners)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in records) == sorted(
        ["none-nsclc-s0", "none-nsclc-s1", "none-uterine-s0", "none-uterine-s1"])


def test_a_second_process_waits_for_the_model_being_trained(tmp_path):
    """Sweep workers running two seeds of one method share its model: the second waits, it does not retrain."""
    from benchmark.training import Checkpoints

    code = ("import sys; from benchmark.training import Checkpoints\n"
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
    from benchmark.tracking import append_record, read_records

    rec = {"run_id": "abc", "started": "2026-01-01T00:00:00+00:00", "metrics": {}}
    append_record(tmp_path, rec, if_missing=True)
    append_record(tmp_path, rec, if_missing=True)
    assert len(read_records(tmp_path)) == 1
    append_record(tmp_path, dict(rec, started="2026-01-02T00:00:00+00:00"), if_missing=True)  # a --force rerun
    assert len(read_records(tmp_path)) == 2


def test_atomic_files_are_readable_by_others(tmp_path):
    """Results and figures written atomically get the usual permissions, not mkstemp's 0600."""
    import importlib

    import benchmark.cache as cache

    old = os.umask(0o022)
    try:
        importlib.reload(cache)  # the mode is derived from the umask at import
        with cache.atomic_file(tmp_path / "x.json") as fh:
            fh.write(b"{}")
    finally:
        os.umask(old)
        importlib.reload(cache)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
