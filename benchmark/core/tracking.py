"""Experiment tracking: the ONLY module that imports mlflow; also appends the self-describing results.jsonl.

Default store: ``sqlite:///<results>/mlflow.db`` with artifacts under ``<results>/mlartifacts`` (no server).
``MLFLOW_TRACKING_URI`` selects a tracking server instead; it is checked before any training starts.
One experiment per task, run name ``<method>-<task>-s<seed>``, metrics named ``<split>/<metric>``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written; raised before any work starts."""


def tracking_uri(results_dir: Path) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the local sqlite store under ``results_dir``."""
    env = os.environ.get(TRACKING_ENV, "").strip()
    if env:
        return env
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingError when a tracking server does not answer or a local store cannot be written."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the user's own server
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix ${TRACKING_ENV}, "
                f"or unset it to use the local store"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the MLflow store folder {folder}: {exc}") from None
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"the MLflow store folder {folder} is not writable")


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # mlflow sets its loggers' level from this when it is imported ("Creating initial MLflow database tables...")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # it logs a database error with its traceback and then raises it; the raised error is what the user is told
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _client(uri: str, results_dir: Path):
    """An MlflowClient; a local sqlite store is created (its schema migrated) by one process at a time, since
    parallel workers creating it at once collide in alembic's migrations."""
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / ".mlflow-init.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            database = Path(uri[len("sqlite:///") :])
            if not database.is_file():
                _create_store(database)
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # creates and migrates the store if needed
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


def _create_store(database: Path) -> None:
    """A new sqlite store, its tables created under a temporary name and renamed into place: a process killed
    during MLflow's migrations (they are not one transaction in SQLite) leaves a temporary file, never a store that
    every later run fails on (``table _alembic_tmp_... already exists``)."""
    from mlflow.tracking import MlflowClient

    from benchmark.core.cache import atomic_path

    with atomic_path(database) as tmp:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)


class Tracker:
    """One MLflow run, driven through MlflowClient (no global active run, so parallel workers do not collide)."""

    def __init__(self, results_dir: Path, experiment: str, run_name: str, tags: dict[str, str], params: dict):
        _quiet_mlflow()
        self.uri = tracking_uri(results_dir)
        self.client = _client(self.uri, results_dir)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (results_dir / "mlartifacts").resolve().as_uri()
            try:
                exp_id = self.client.create_experiment(experiment, artifact_location=location)
            except Exception:  # created concurrently by another worker
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        self.experiment = experiment
        self.experiment_id = exp_id
        if tags.get("run_dir"):
            self._close_orphans(tags["run_hash"], tags["run_dir"])
        self.run = self.client.create_run(exp_id, run_name=run_name, tags=tags)
        self.run_id = self.run.info.run_id
        self.log_params(params)

    def _close_orphans(self, run_hash: str, run_dir: str) -> None:
        """Mark KILLED the MLflow runs of this run directory still RUNNING: their process was killed (SIGKILL, a
        dead machine) before it could say so. Only called while holding the run's lock, so none of them is alive."""
        from mlflow.entities import ViewType

        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.run_hash = '{run_hash}' and attributes.status = 'RUNNING'",
            run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
        )
        for run in found:
            if run.data.tags.get("run_dir") == run_dir:
                self.client.set_terminated(run.info.run_id, status="KILLED")
                log.info("MLflow run %s of %s was left RUNNING by a killed process; marked KILLED",
                         run.info.run_id, Path(run_dir).name)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # NaN is logged as NaN (an empty group, say), so every run carries the same metric names for comparison
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)


def append_record(results_dir: Path, record: dict, if_missing: bool = False) -> Path:
    """Append one JSON line to ``results_dir/results.jsonl`` (locked, fsynced; safe with parallel workers).

    A torn last line (a writer killed mid-line: it held the lock, so it is dead) is cut off first, so every line
    stays a whole record. ``if_missing``: only if no line has the same ``run_id`` and ``started`` (a run
    interrupted between writing its record.json and this line is completed when it is next reused)."""
    path = results_dir / "results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")
    with open(path, "ab+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            size = fh.seek(0, os.SEEK_END)
            torn = size > 0 and os.pread(fh.fileno(), 1, size - 1) != b"\n"
            content = os.pread(fh.fileno(), size, 0) if torn or if_missing else b""  # the whole file only if needed
            if torn:
                keep = content.rfind(b"\n") + 1
                log.warning("%s: cut off a torn last line (%d bytes) left by a killed writer", path, size - keep)
                os.ftruncate(fh.fileno(), keep)
                content = content[:keep]
            if if_missing:
                ident = (record.get("run_id"), record.get("started"))
                for existing in content.splitlines():
                    try:
                        rec = json.loads(existing)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(rec, dict) and (rec.get("run_id"), rec.get("started")) == ident:
                        return path
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return path


def read_records(results_dir: Path) -> list[dict]:
    """Every record of results.jsonl. A torn last line (a crash while appending) is skipped quietly; any other line
    that is not a JSON object is skipped with a warning naming the file and line (the run's own ``record.json``
    still holds it)."""
    path = results_dir / "results.jsonl"
    if not path.is_file():
        return []
    out = []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            out.append(record)
        elif not (number == len(lines) and not text.endswith("\n")):  # a torn last line is expected after a crash
            log.warning("%s line %d is not a run record; skipped (its run directory's record.json is the source)",
                        path, number)
    return out


def close_recorded_run(uri: str, run_id: str, record_path: Path) -> None:
    """Finish the MLflow run of a finished record whose process was killed after writing the record and before
    closing its MLflow run: attach the record and mark the run FINISHED (nothing is done if it is not RUNNING)."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        log.warning("MLflow run %s of %s not found at %s (%s); left as it is", run_id, record_path, uri, exc)
        return
    if run.info.status == "RUNNING":
        client.log_artifact(run_id, str(record_path))
        client.set_terminated(run_id, status="FINISHED")
        log.info("MLflow run %s (%s) closed: its process was killed after writing the record", run_id,
                 record_path.parent.name)


def attach_artifact(uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Add a file to an existing (possibly finished) MLflow run, e.g. a figure drawn after the run."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).log_artifact(run_id, str(path), artifact_path)
    except Exception as exc:
        raise TrackingError(f"could not attach {path} to MLflow run {run_id} at {uri}: {exc}") from None
