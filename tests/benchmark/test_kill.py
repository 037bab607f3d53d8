"""The kill test: a sweep killed with SIGKILL at random moments, restarted after each kill, ends exactly where an
uninterrupted sweep ends: one record and one results.jsonl line per job with the same numbers, no partial file, and
no MLflow run left RUNNING without a process.

The suite runs a small version (one fast method, 2 seeds); the full one (all methods, 2 seeds, >= 20 kills) is marked
``long`` and reproduced with::

    .venv/bin/python -m pytest -m long tests/benchmark/test_kill.py -s

which prints its figures (kills, restarts, where the kills landed, records compared, time) as one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

# record fields that differ between two runs of the same job by design: when and where it ran, and whether this
# attempt trained its model or found it in the cache (an earlier, killed attempt may have finished the training)
VOLATILE = {"started", "duration_s", "run_dir", "mlflow", "host", "reused", "git_commit"}
VOLATILE_REPORT = {"model_dir", "model_reused", "trained"}
VOLATILE_REPORT_PARTS = ("seconds", "images_per_s", "_time")


def _sweep_cmd(out: Path, grid: list[str]) -> list[str]:
    return [sys.executable, "-m", "benchmark", "sweep", *grid, "--preset", "smoke", "--out", str(out),
            "--no-progress"]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _records(out: Path) -> dict[str, dict]:
    found = {}
    for path in out.glob("runs/*/*/*/record.json"):
        record = json.loads(path.read_text())
        assert record["name"] not in found, f"two records for {record['name']}"
        found[record["name"]] = record
    return found


def _without_provenance(value):
    if isinstance(value, dict):
        return {k: _without_provenance(v) for k, v in value.items()
                if k not in VOLATILE_REPORT and not any(s in k for s in VOLATILE_REPORT_PARTS)}
    return value


def _deterministic(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["method_report"] = _without_provenance(out.get("method_report") or {})
    return out


def kill_and_restart(out: Path, grid: list[str], min_kills: int, base_delay: float, budget_s: float,
                     seed: int = 0, until_done: bool = True) -> dict:
    """SIGKILL the sweep's process group after a random delay, restart it, again; the delay's upper end grows by
    half after each restart that finished no job (so every job is eventually reached, whatever its length) and
    falls back when one did. Stops killing when the sweep is done (``until_done``; else after ``min_kills`` kills)
    or when the budget is spent; then runs the sweep to its end. Returns the figures."""
    rng = random.Random(seed)
    log = out.parent / f"{out.name}.log"
    started = time.monotonic()
    kills, restarts, stall, moments = 0, 0, 0, []
    while time.monotonic() - started < budget_s and (until_done or kills < min_kills):
        before = len(list(out.glob("runs/*/*/*/record.json")))
        # growing only when the sweep must be killed to its end; else the cap stays below one job's length
        delay = rng.uniform(0.5, base_delay * 1.5**stall if until_done else base_delay)
        mark = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as fh:
            proc = subprocess.Popen(_sweep_cmd(out, grid), cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            restarts += 1
            try:
                rc = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        if rc is not None:  # the sweep finished before its kill
            assert rc == 0, log.read_text()[-3000:]
            if kills >= min_kills:
                break
            out_done = True
        else:
            kills += 1
            out_done = False
            tail = log.read_bytes()[mark:].decode(errors="replace").strip().splitlines()
            jobs = [line for line in tail if line.startswith("[")]
            moments.append({"after_s": round(delay, 1), "job": jobs[-1][:80] if jobs else "(starting)",
                            "last_line": tail[-1][:120] if tail else "(starting)"})
        after = len(list(out.glob("runs/*/*/*/record.json")))
        stall = 0 if after > before else min(stall + 1, 8)
        if out_done:  # everything is done but too few kills: the grid is too short for this many
            break
    with open(log, "ab") as fh:
        final = subprocess.run(_sweep_cmd(out, grid), cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT)
    assert final.returncode == 0, log.read_text()[-3000:]
    return {"kills": kills, "restarts": restarts + 1, "seconds": round(time.monotonic() - started, 1),
            "moments": moments}


def check_against_uninterrupted(killed: Path, reference: Path) -> dict:
    """The assertions of the kill test; returns what was compared."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from benchmark.core.tracking import read_records

    ours, theirs = _records(killed), _records(reference)
    assert sorted(ours) == sorted(theirs)
    for name in theirs:  # the same numbers: training resumed from checkpoints is bit-exact, evaluation is seeded
        assert _deterministic(ours[name]) == _deterministic(theirs[name]), name
    # results.jsonl: whole lines only, exactly one per job
    lines = (killed / "results.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert sorted(r["name"] for r in read_records(killed)) == sorted(theirs)
    # no partial file anywhere (temporary files, half-written checkpoints, unreadable ones set aside)
    leftovers = [str(p) for p in killed.rglob("*") if p.name.endswith((".tmp", ".unreadable"))]
    assert leftovers == []
    # MLflow: no run RUNNING without a process; each job exactly one FINISHED run, the one its record names
    client = MlflowClient(tracking_uri=f"sqlite:///{killed / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=10_000)
    states: dict[str, int] = {}
    for run in runs:
        states[run.info.status] = states.get(run.info.status, 0) + 1
    assert set(states) <= {"FINISHED", "KILLED", "FAILED"}, states
    finished = sorted(r.info.run_id for r in runs if r.info.status == "FINISHED")
    assert finished == sorted(r["mlflow"]["run_id"] for r in ours.values())
    return {"jobs": len(theirs), "records_compared": len(theirs), "mlflow_runs": states}


def _kill_test(tmp_path: Path, grid: list[str], min_kills: int, base_delay: float, budget_s: float,
               until_done: bool = True) -> dict:
    t0 = time.monotonic()
    reference = subprocess.run(_sweep_cmd(tmp_path / "reference", grid), cwd=ROOT, env=_env(), capture_output=True,
                               text=True)
    assert reference.returncode == 0, reference.stderr[-3000:]
    reference_s = time.monotonic() - t0
    figures = kill_and_restart(tmp_path / "killed", grid, min_kills, base_delay, budget_s, until_done=until_done)
    figures.update(check_against_uninterrupted(tmp_path / "killed", tmp_path / "reference"))
    figures["uninterrupted_s"] = round(reference_s, 1)
    print(json.dumps(figures))
    assert figures["kills"] >= min_kills, figures
    return figures


def test_a_sweep_killed_again_and_again_ends_as_an_uninterrupted_one(tmp_path):
    _kill_test(tmp_path, ["--methods", "none", "--tasks", "nsclc", "--seeds", "2"], min_kills=3,
               base_delay=4.0, budget_s=240, until_done=False)


@pytest.mark.long
def test_the_full_kill_test(tmp_path):
    """All methods, one task, 2 seeds, at least 20 kills; a bound of 40 minutes on the killing."""
    _kill_test(tmp_path, ["--methods", "all", "--tasks", "nsclc", "--seeds", "2"], min_kills=20, base_delay=5.0,
               budget_s=2400)
