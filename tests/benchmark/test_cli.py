"""The command line as a user meets it: errors are one line with exit code 2, a run prints its table."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--method", "nosuch", "--task", "nsclc"], "unknown method 'nosuch'; choose from: "),
        (["run", "--method", "none", "--task", "lungs"], "unknown task 'lungs'; choose from: heldout, nsclc"),
        (["run", "--method", "none", "--task", "nsclc", "--preset", "huge"], "unknown preset 'huge'; choose from: "),
        (["run", "--method", "none", "--task", "nsclc", "--set", "data.colour=red"], "unknown --set key 'data.colour"),
        (["run", "--method", "none", "--task", "nsclc", "--set", "probe.encoder=resnet"], "unknown encoder 'resnet'"),
        (["run", "--method", "none", "--task", "nsclc", "--device", "tpu"], "unknown device 'tpu'"),
        (["run", "--method", "none", "--task", "nsclc", "--device", "cuda"], "no CUDA device"),
    ],
)
def test_bad_names_give_one_line_and_exit_2(args, needle, tmp_path):
    proc = run_cli(*args, "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_list_names_every_registered_entry():
    proc = run_cli("list", "--keys")
    assert proc.returncode == 0, proc.stderr
    for name in ("none", "nsclc", "uterine", "heldout", "fbank", "uni", "timm", "smoke", "cpu", "gpu", "paper"):
        assert f"  {name} " in proc.stdout
    assert "data.image_size" in proc.stdout and "probe.C" in proc.stdout


@pytest.mark.parametrize("sub", [[], ["run"], ["list"]])
def test_help_explains(sub):
    proc = run_cli(*sub, "--help")
    assert proc.returncode == 0
    assert "usage:" in proc.stdout
    if sub == ["run"]:
        for option in ("--method", "--task", "--preset", "--seed", "--device", "--set", "--out", "--force"):
            assert option in proc.stdout


def test_none_run_end_to_end_then_reused(tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "results"
    proc = run_cli("run", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--out", str(out),
                   "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "test_unseen" in proc.stdout and "worst group" in proc.stdout and "shortcut gap" in proc.stdout
    assert "run directory:" in proc.stdout and "MLflow run id:" in proc.stdout
    assert "smoke preset:" in proc.stdout and "not results" in proc.stdout  # a smoke run says what it is
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1
    rec = records[0]
    run_dir = Path(rec["run_dir"])
    if not run_dir.is_absolute():
        run_dir = tmp_path / run_dir
    assert run_dir.parent == out / "runs" / "nsclc" / "none"
    for name in ("record.json", "config.json", "groups_test_unseen.csv", "confusion_val.csv", "predictions.csv.gz"):
        assert (run_dir / name).is_file(), name
    assert 0.0 <= rec["metrics"]["test_unseen/balanced_accuracy"] <= 1.0
    assert rec["metrics"]["train/n_synthetic"] == 0
    # the MLflow run carries tags, params and metrics
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(rec["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "none-nsclc-s0"
    assert run.data.tags["method"] == "none" and run.data.tags["preset"] == "smoke"
    assert run.data.params["data.image_size"] == "32"
    assert run.data.metrics["test_unseen/balanced_accuracy"] == pytest.approx(
        rec["metrics"]["test_unseen/balanced_accuracy"]
    )
    # second invocation: reused, nothing recomputed, no second record
    again = run_cli("run", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0 and "reused finished run" in again.stdout
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


def test_sigterm_stops_a_run_cleanly(tmp_path):
    """A killed run leaves no record (so the next invocation recomputes it) and its MLflow run is marked KILLED."""
    import os
    import signal
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from tests.conftest import ROOT

    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", "--method", "medi", "--task", "nsclc", "--preset", "smoke",
         "--out", str(out), "--no-progress"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    for line in proc.stderr:  # wait until the run has started working (splits made, tracking open)
        if "splits:" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (out / "results.jsonl").exists()
    assert not list(out.glob("runs/*/*/*/record.json"))
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("medibench-nsclc")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_the_run_table_keeps_columns_apart_at_their_widest():
    from benchmark.cli.run import results_table

    metrics = {}
    for split in ("val", "test_seen", "test_unseen"):
        metrics[f"{split}/n"] = 10
        for key in ("balanced_accuracy", "worst_group_accuracy", "worst20_group_accuracy", "shortcut_gap"):
            metrics.update({f"{split}/{key}": -0.167, f"{split}/{key}/ci_low": -0.428,
                            f"{split}/{key}/ci_high": -0.147})
    row = results_table({"metrics": metrics}).splitlines()[3]
    assert row.split("  ")[-1] == "-0.167 [-0.428, -0.147]" and row.count("]  -0.167") == 3
