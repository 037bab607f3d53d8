"""Against a real MLflow tracking server started here on 127.0.0.1 (free port, bounded wait, stopped by PID)."""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, run_cli, stop_process_group


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    log = open(store / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(store / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("mlflow server did not answer /health within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(proc)  # the server and its workers, by our own PID's group
        log.close()


def test_run_logged_to_a_real_tracking_server(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "results"
    proc = run_cli(
        "run", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--seed", "2", "--out", str(out),
        "--no-progress", env={"MLFLOW_TRACKING_URI": mlflow_server}, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("medibench-nsclc")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], filter_string="tags.method = 'none'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "none-nsclc-s2" and run.info.status == "FINISHED"
    for tag in ("method", "task", "preset", "seed", "encoder", "device", "code_version"):
        assert tag in run.data.tags, tag
    assert run.data.tags["seed"] == "2"
    assert run.data.params["probe.encoder"] == "fbank"
    for split in ("val", "test_seen", "test_unseen"):
        for metric in ("balanced_accuracy", "worst_group_accuracy", "site_balanced_accuracy", "mcc"):
            assert f"{split}/{metric}" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "record.json", "groups", "confusion"} <= artifacts
    assert not (out / "mlflow.db").exists()  # the server got it, not the local store


def test_unreachable_server_fails_before_any_work(tmp_path):
    port = free_port()  # nothing listens here
    start = time.time()
    proc = run_cli(
        "run", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--out", str(tmp_path / "r"),
        env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "unreachable" in proc.stderr and str(port) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.time() - start < 60
    assert not Path(tmp_path / "r" / "cache").exists()  # no data rendered, nothing trained
