"""sweep --launcher slurm on a real one-node SLURM cluster (the ``slurm_cluster`` fixture: munged, slurmctld and slurmd
on 127.0.0.1): the jobs run as an array and their records land; --status shows each job's SLURM state; scancel in the
middle, then the same command submits only what has no record; a failed job is reported with its log; jobs that reuse
a model another job trains wait for it; tune's workers as SLURM jobs on one study. The bookkeeping (no cluster): states
once squeue has forgotten a job, which jobs wait for which."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from benchmark.orchestration import launchers, sweep
from tests.conftest import run_cli

GRID = ["--methods", "none,stain_norm", "--tasks", "nsclc", "--seeds", "2", "--preset", "smoke", "--no-progress"]


def _records(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/*/record.json")}


def _book(out: Path) -> dict[str, dict]:
    return json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]


def _table(stdout: str) -> dict[str, list[str]]:
    """job name -> the columns after it (run hash, state, slurm job, slurm state, detail...) of a --status table."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit():
            rows[parts[1]] = parts[2:]
    return rows


def _squeue(env: dict, *args: str) -> str:
    return subprocess.run(["squeue", "--noheader", *args], env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=30).stdout


def test_a_slurm_sweep_runs_is_cancelled_resumes_and_reports_a_failed_job_with_its_log(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    out = tmp_path / "results"
    args = ["sweep", *GRID, "--out", str(out), "--launcher", "slurm", "--slurm-cpus", "1"]
    # a deliberately broken job: its run folder is a file, so the run cannot start (FileExistsError on the node)
    jobs = sweep.plan_jobs(["none", "stain_norm"], ["nsclc"], [0, 1], "smoke", "auto", [], out)
    broken = jobs[-1]
    broken.run_dir.parent.mkdir(parents=True)
    broken.run_dir.write_text("not a folder")

    # 1. submit one job at a time and return; cancel the array once the first record has landed
    first = run_cli(*args, "--slurm-parallel", "1", "--no-wait", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "submitted array" in first.stdout and "--status" in first.stdout
    book = _book(out)
    assert sorted(e["name"] for e in book.values()) == sorted(j.name for j in jobs)
    array = {e["array"] for e in book.values()}.pop()
    deadline = time.monotonic() + 150
    while not _records(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    subprocess.run(["scancel", array], env=dict(os.environ, **env), check=True)
    finished = _records(out)
    assert len(finished) >= 1
    while _squeue(env, "--states=RUNNING,PENDING,COMPLETING") and time.monotonic() < deadline:
        time.sleep(0.5)

    # 2. --status: each job's record state next to its SLURM job and state
    status = run_cli(*args, "--status", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    rows = _table(status.stdout)
    assert sum(r[1] == "done" for r in rows.values()) == len(finished)
    for name, r in rows.items():
        entry = next(e for e in book.values() if e["name"] == name)
        assert r[2] == entry["slurm_id"]
        assert r[1] in ("done", "cancelled"), status.stdout
        # a job cancelled just after writing its record is done: the record is the done marker
        assert r[3] in (("COMPLETED", "CANCELLED") if r[1] == "done" else ("CANCELLED",)), status.stdout

    # 3. the same command again: only the jobs without a record are submitted; the broken one fails, with its log
    again = run_cli(*args, cwd=tmp_path, env=env)
    assert again.returncode == 1, again.stdout + again.stderr
    assert f": {4 - len(finished)} job(s)" in again.stdout  # only the jobs without a record
    assert "sweep finished: 3/4 jobs done, 1 failed or cancelled:" in again.stdout
    failed_line = next(line for line in again.stdout.splitlines() if line.startswith(f"  {broken.name}: failed"))
    assert "FileExistsError" in failed_line
    log_path = _book(out)[broken.key]["log"]
    assert f"(log: {Path(log_path).relative_to(tmp_path)})" in failed_line
    assert "FileExistsError" in Path(log_path).read_text()
    after = _records(out)
    assert len(after) == 3 and all(after[p] == mtime for p, mtime in finished.items())  # finished ones untouched
    assert len((out / "results.jsonl").read_text().splitlines()) == 3  # every job ran exactly once

    # 4. --status after the resume: done, and the failed job with its error and log
    status = run_cli(*args, "--status", cwd=tmp_path, env=env)
    rows = _table(status.stdout)
    assert [r[1] for r in rows.values()].count("done") == 3
    assert rows[broken.name][1:4] == ["failed", _book(out)[broken.key]["slurm_id"], "FAILED"]
    assert "FileExistsError" in status.stdout and str(Path(log_path).relative_to(tmp_path)) in status.stdout


def test_jobs_that_reuse_a_model_wait_for_the_job_that_trains_it(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    out = tmp_path / "results"
    pinned = ["--set", "seeds.cohort=0", "seeds.split=0", "seeds.model=0"]  # replicates over sampling and probe
    proc = run_cli("sweep", "--methods", "cyclegan", "--tasks", "nsclc", "--seeds", "2", "--preset", "smoke",
                   "--no-progress", "--out", str(out), "--launcher", "slurm", "--no-wait", *pinned, cwd=tmp_path,
                   env=env)
    try:
        assert proc.returncode == 0, proc.stderr
        book = {e["name"]: e for e in _book(out).values()}
        trainer, later = book["cyclegan-nsclc-s0"], book["cyclegan-nsclc-s1"]
        assert later["array"] != trainer["array"] and later["dependency"] == f"afterany:{trainer['slurm_id']}"
        assert f"after {trainer['slurm_id']}" in proc.stdout
        shown = subprocess.run(["scontrol", "show", "job", later["slurm_id"]], env=dict(os.environ, **env),
                               capture_output=True, text=True).stdout
        assert f"Dependency=afterany:{trainer['slurm_id']}" in shown
    finally:
        slurm_cluster.cancel_all()


def test_a_refused_submission_is_one_line(slurm_cluster, tmp_path):
    proc = run_cli("sweep", "--methods", "none", "--tasks", "nsclc", "--seeds", "1", "--preset", "smoke",
                   "--out", str(tmp_path / "r"), "--launcher", "slurm", "--slurm-partition", "nosuch", cwd=tmp_path,
                   env=slurm_cluster.env)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: sbatch refused the array:") and "nosuch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tune_workers_run_as_slurm_jobs_on_one_study(slurm_cluster, tmp_path):
    import optuna

    out = tmp_path / "results"
    proc = run_cli("tune", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--seeds", "1", "--trials", "2",
                   "--out", str(out), "--launcher", "slurm", "--workers", "2", "--slurm-cpus", "1", cwd=tmp_path,
                   env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted array" in proc.stdout and "best: trial" in proc.stdout
    study = optuna.load_study(study_name="none-nsclc-smoke", storage=f"sqlite:///{out / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 2  # each worker stops once the study has 2 (one may finish its trial meanwhile)
    logs = sorted((out / "slurm").glob("*/*_0_log.out"))
    texts = [log.read_text() for log in logs]
    assert len(texts) == 2 and all("study none-nsclc-smoke" in t for t in texts)  # both workers opened the study
    assert sum(t.count(" COMPLETE ") for t in texts) == len(complete)  # and ran its trials between them


# ---------------------------------------------------------------------------------------------------------------
# no cluster needed


def test_states_once_squeue_has_forgotten_a_job(tmp_path):
    """Accounting (sacct) may be off: a job squeue no longer lists is judged by what it left."""
    from submitit.core.utils import cloudpickle_dump

    out = tmp_path / "results"
    jobs = sweep.plan_jobs(["none"], ["nsclc"], [0, 1, 2, 3], "smoke", "cpu", [], out)
    left = {0: ("error", "Traceback ...\nValueError: bad thing"), 1: ("success", {"state": "interrupted"}), 2: None}
    book = {}
    for i, job in enumerate(jobs[:3]):
        folder = out / "slurm" / f"9_{i}"
        folder.mkdir(parents=True)
        if left[i] is not None:
            cloudpickle_dump(left[i], folder / f"9_{i}_0_result.pkl")
            (folder / f"9_{i}_0_log.out").write_text("the job's output\n")
        book[job.key] = {"name": job.name, "slurm_id": f"9_{i}", "array": "9", "folder": str(folder),
                         "log": str(folder / f"9_{i}_0_log.out")}
    launchers.SlurmState(out / "slurm").save(book)
    rows = launchers.slurm_rows(jobs, out, states={})
    assert [r["state"] for r in rows] == ["failed", "cancelled", "failed", "pending"]
    assert rows[0]["where"] == "ValueError: bad thing" and rows[0]["log"].endswith("9_0_0_log.out")
    assert "ended without a result" in rows[2]["where"]
    table = "\n".join(launchers.status_table(rows))
    assert "gone" in table and "(log: " in table
    # a job squeue still lists is queued or running, whatever it left
    rows = launchers.slurm_rows(jobs, out, states={"9_2": ("PENDING", "Dependency")})
    assert rows[2]["state"] == "queued" and rows[2]["where"] == "waiting: Dependency"


def test_model_waits_follow_the_shared_model(tmp_path):
    plain = sweep.plan_jobs(["none", "cyclegan"], ["nsclc"], [0, 1], "smoke", "cpu", [], tmp_path)
    assert sweep.model_waits(plain, set()) == {}  # each replicate trains its own model
    pinned = sweep.plan_jobs(["none", "cyclegan"], ["nsclc"], [0, 1, 2], "smoke", "cpu",
                             ["seeds.cohort=0", "seeds.split=0", "seeds.model=0"], tmp_path)
    by_name = {j.name: j.key for j in pinned}
    trainer = by_name["cyclegan-nsclc-s0"]
    assert sweep.model_waits(pinned, set()) == {by_name["cyclegan-nsclc-s1"]: trainer,
                                                by_name["cyclegan-nsclc-s2"]: trainer}
    assert sweep.model_waits(pinned, {by_name["cyclegan-nsclc-s2"]}) == {}  # a finished job: the model exists


def test_no_slurm_here_is_a_clear_error(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(sweep.SweepError, match="no SLURM here"):
        launchers._prepare_executor(tmp_path, launchers.SlurmOptions())
