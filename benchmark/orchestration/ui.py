"""``python -m benchmark ui``: the MLflow UI on 127.0.0.1 for the project's tracking store, with comparison links.

The UI runs as a child process (``python -m mlflow server``), so this module never imports mlflow; it talks to the
server over its REST API to print one comparison link per task (the latest finished run of each method).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from benchmark.core.tracking import TrackingError, check_reachable, tracking_uri

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 180.0
STOP_GRACE_S = 8.0  # the UI only reads the store: after this, its workers are killed


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _api(url: str, path: str, payload: dict | None = None, timeout: float = 10.0) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own local server
        return json.loads(resp.read().decode() or "{}")


def comparison_links(url: str) -> list[str]:
    """One line per experiment: its page, and per preset a Compare link of the latest finished run of each method."""
    lines = []
    experiments = _api(url, "/api/2.0/mlflow/experiments/search", {"max_results": 200}).get("experiments", [])
    for exp in sorted(experiments, key=lambda e: e.get("name", "")):
        if exp.get("name") == "Default":
            continue
        exp_id = exp["experiment_id"]
        runs = _api(url, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [exp_id], "filter": "attributes.status = 'FINISHED'", "max_results": 1000,
            "order_by": ["attributes.start_time DESC"],
        }).get("runs", [])
        latest: dict[str, dict[str, str]] = {}  # preset -> method -> the latest finished run
        for run in runs:
            tags = {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}
            latest.setdefault(tags.get("preset", "?"), {}).setdefault(tags.get("method", "?"), run["info"]["run_id"])
        methods = sorted({m for per in latest.values() for m in per})
        lines.append(f"  {exp['name']}: {url}/#/experiments/{exp_id}  ({len(runs)} finished runs, methods: "
                     f"{', '.join(methods) or 'none yet'})")
        for preset, per in sorted(latest.items()):
            if len(per) < 2:
                continue
            ids = [per[m] for m in sorted(per)]
            query = urllib.parse.urlencode({"runs": json.dumps(ids, separators=(",", ":")),
                                            "experiments": json.dumps([exp_id], separators=(",", ":"))})
            lines.append(f"    compare {' vs '.join(sorted(per))} (preset {preset}): {url}/#/compare-runs?{query}")
    return lines


def serve_ui(results_dir: Path | str, port: int = 5000) -> int:
    """Start the MLflow UI on 127.0.0.1:``port`` for the tracking store of ``results_dir``; block until Ctrl-C.

    With ``$MLFLOW_TRACKING_URI`` pointing at a server, that server already is the UI: its URL is printed instead.
    """
    results_dir = Path(results_dir)
    uri = tracking_uri(results_dir)
    # 1. a tracking server is its own UI
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
        print(f"MLflow UI (the tracking server in ${'MLFLOW_TRACKING_URI'}): {uri}", flush=True)
        return 0
    # 2. the local store must exist and the port must be free
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.is_file():
            raise TrackingError(f"no MLflow store at {db}: run something first (python -m benchmark run ... --out "
                                f"{results_dir}) or pass --results DIR")
    if not 0 < port < 65536:
        raise TrackingError(f"--port {port}: expected 1-65535")
    if not _port_free(port):
        raise TrackingError(f"port {port} on {HOST} is in use; choose another with --port")
    # 3. the server, in its own process group so it and its workers stop together
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", HOST, "--port",
           str(port), "--workers", "1", "--artifacts-destination", str((results_dir / "mlartifacts").resolve())]
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = results_dir / "mlflow-ui.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://{HOST}:{port}"
    print(f"starting the MLflow server for {uri} (the first start can take 15-45 s; log {log_path}) ...", flush=True)
    with open(log_path, "ab") as server_log:
        proc = subprocess.Popen(cmd, env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        # 4. wait until it answers, then print where to look
        started = time.time()
        deadline = started + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise TrackingError(f"the MLflow server exited with code {proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TrackingError(f"the MLflow server did not answer {url}/health within {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        print(f"MLflow UI: {url}  (ready after {time.time() - started:.0f} s)", flush=True)
        try:
            for line in comparison_links(url):
                print(line, flush=True)
        except (OSError, ValueError, KeyError, urllib.error.HTTPError) as exc:
            print(f"  (could not list experiments: {exc})", flush=True)
        print("Compare methods: open an experiment (one per task), tick runs of different methods, press Compare; "
              "metrics are named <split>/<metric>, e.g. test_unseen/balanced_accuracy, fid/<space>/mean. "
              "Ctrl-C stops the UI.", flush=True)
        proc.wait()
        return 0 if proc.returncode in (0, -signal.SIGTERM) else 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the server we started and its workers (its own process group, by its PID)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
