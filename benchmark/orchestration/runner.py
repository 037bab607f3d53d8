"""The common runner: ``run_one(config)`` runs one method on one task, the same way for every method.

A run is content-addressed (hash of the resolved config and the code version); its directory holds the resolved
config, per-group tables, confusion matrices and predictions, and last ``record.json``, written atomically: a
directory without ``record.json`` is an unfinished run. A finished run is reused unless ``force``.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import resource
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmark import __version__
from benchmark.core import interrupts
from benchmark.core.cache import atomic_write_json, cached_array, remove_orphan_temps
from benchmark.core.config import PRESETS, ConfigError, RunConfig, default_preset, parse_overrides, resolve
from benchmark.core.data import Split
from benchmark.core.provenance import git_commit, run_code_hash
from benchmark.core.registry import ENCODERS, METHODS, TASKS
from benchmark.evaluation import metrics as M
from benchmark.evaluation import stats
from benchmark.evaluation.encoders import Encoder, build_encoder
from benchmark.plugins import load_plugins
from benchmark.protocols import EVAL_SPLITS, Context, Method, Task
from benchmark.training import distributed

log = logging.getLogger("benchmark")
# 2: replicate seeds, per-run patient-bootstrap intervals, groups counted in patients; 3: the cohort seed (a fresh
# embedded cohort per replicate) and the population the replicate speaks for
RECORD_SCHEMA = 3
# Written after the run's MLflow run is closed: a record without it belongs to a process killed in between.
MLFLOW_CLOSED = ".mlflow-closed"


class RunError(RuntimeError):
    """A run could not be done as asked (the message says why); nothing that looks finished was written."""


# ---------------------------------------------------------------------------------------------------------------
# resolving


def code_version(cfg: RunConfig) -> str:
    """What the run hash includes besides the config: the package version and the hash of the source that decides
    the run's numbers (core.provenance: the runner, the method's and the task's modules, and their imports)."""
    load_plugins()
    method_module = METHODS.get(cfg.method).__module__
    task_module = TASKS.get(cfg.task).__module__
    return f"{__version__}+{run_code_hash(method_module, task_module)}"


def resolve_device(requested: str) -> str:
    """auto -> cuda, then mps, then cpu; an unavailable explicit device is a ConfigError."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use --device auto or cpu)")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: no Apple MPS device is available here (use --device auto or cpu)")
    if requested not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {requested!r}; choose from: auto, cpu, cuda, mps")
    return requested


def build_config(
    method: str,
    task: str,
    preset: str | None = None,
    seed: int = 0,
    device: str = "auto",
    overrides: list[str] | dict[str, str] | None = None,
) -> RunConfig:
    """CLI-level arguments -> a complete RunConfig (unknown names are ConfigErrors listing the valid choices)."""
    load_plugins()
    method_cls = METHODS.get(method)
    TASKS.get(task)
    resolved_device = resolve_device(device)
    preset = preset or default_preset(resolved_device)
    overrides = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    params = method_cls.default_params(preset) if preset in PRESETS else None  # resolve() names a bad preset
    cfg = resolve(method, task, preset, seed, resolved_device, overrides, params)
    ENCODERS.get(cfg.probe.encoder.partition(":")[0])  # an unknown encoder is a RegistryError naming the choices
    return cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def run_dir_for(cfg: RunConfig, results_dir: Path) -> Path:
    return results_dir / "runs" / cfg.task / cfg.method / f"{cfg.name}-{cfg.digest(code_version(cfg))}"


def load_record(run_dir: Path) -> dict | None:
    """The finished record of a run directory, or None if the run is unfinished or its record unreadable."""
    import json

    path = run_dir / "record.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "metrics" not in record:
        log.warning("%s is not a run record (a JSON object with metrics); the run will be computed again", path)
        return None
    return record


# ---------------------------------------------------------------------------------------------------------------
# evaluation, the same for every method


def embed_split(encoder: Encoder, split: Split, cache_dir: Path | None, device: str, batch_size: int) -> np.ndarray:
    """Embeddings of a split's images, cached by encoder and image content (real and synthetic rows separately).
    A split of one kind (all real, the usual case) gets the cache file itself, read-only memory-mapped."""
    synthetic = split.metadata["is_synthetic"].to_numpy(dtype=bool)
    parts = []
    for mask in (~synthetic, synthetic):
        if not mask.any():
            continue
        part = split.subset(mask) if not mask.all() else split
        path = None
        if cache_dir is not None:
            path = cache_dir / "embeddings" / encoder.fingerprint().replace(":", "_") / f"{part.fingerprint()}.npy"

        def build(part: Split = part) -> np.ndarray:
            chunks = [encoder.embed(batch, device) for batch in part.batches(batch_size)]
            return np.concatenate(chunks).astype(np.float32)

        parts.append((mask, cached_array(path, build, (len(part), encoder.dim), np.float32, mmap=True)))
    if len(parts) == 1:
        return parts[0][1]
    out = np.zeros((len(split), encoder.dim), dtype=np.float32)
    for mask, values in parts:
        out[mask] = values
    return out


def fit_probe(x: np.ndarray, y: np.ndarray, cfg: RunConfig):
    """sklearn LogisticRegression(class_weight="balanced") on (optionally standardized) embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:
        raise RunError(f"the training split has a single class ({np.unique(y)}); the probe needs at least two")
    clf = LogisticRegression(
        C=cfg.probe.C, class_weight="balanced", max_iter=cfg.probe.max_iter, random_state=cfg.seed_for("probe")
    )
    model = make_pipeline(StandardScaler(), clf) if cfg.probe.standardize else clf
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model


class Probe:
    """The downstream classifier every method is judged by: frozen encoder + linear probe on its embeddings."""

    def __init__(self, cfg: RunConfig, cache_dir: Path | None):
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.encoder = build_encoder(cfg.probe)
        self.model = None

    def embed(self, split: Split) -> np.ndarray:
        return embed_split(self.encoder, split, self.cache_dir, self.cfg.device, self.cfg.probe.batch_size)

    def fit(self, train: Split, x: np.ndarray | None = None) -> Probe:
        """Fit on ``train`` (``x``: its embeddings, when the caller has them already)."""
        self.model = fit_probe(self.embed(train) if x is None else x, train.labels, self.cfg)
        return self

    def predict_proba(self, split: Split, n_classes: int, x: np.ndarray | None = None) -> np.ndarray:
        if len(split) == 0:
            return np.zeros((0, n_classes))
        return self.model.predict_proba(self.embed(split) if x is None else x)


# ---------------------------------------------------------------------------------------------------------------
# the run


class RunBusy(RunError):
    """Another process holds the run's lock: it is computing this very run."""


class _RunLock:
    """An exclusive claim on a run directory: ``flock`` on ``<run_dir>/.lock``.

    The operating system releases the lock when its holder dies, however it dies (and the file server does for a
    dead host, on file systems whose locks work across hosts, NFSv4 among them), so a crashed run never blocks the
    next attempt, a reused PID cannot pass for the owner, and there is no stale lock to remove and no race in
    removing it. The file's text names the holder (host and PID) for the message."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.handle = None

    def __enter__(self) -> _RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (held until __exit__)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise RunBusy(f"run {self.path.parent} is being computed by another process ({owner})") from None
        handle.truncate(0)
        handle.write(f"{socket.gethostname()} {os.getpid()}")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        if self.handle is not None:
            self.handle.truncate(0)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def run_one(
    cfg: RunConfig,
    results_dir: Path | str = "results",
    force: bool = False,
    progress: bool = True,
    tags: dict[str, str] | None = None,
) -> dict | None:
    """Run ``cfg`` (or reuse its finished record) and return the record. ``tags``: extra MLflow run tags (e.g.
    ``optuna_trial``); a reused run is not logged again, so it keeps the tags it was made with. Under ``accelerate
    launch`` with several processes the main process returns the record and the others None."""
    from benchmark.plugins import ensure_task

    ensure_task(cfg)  # a config sent to a worker or a cluster job: its task (maybe from a file) known here too
    results_dir = Path(results_dir)
    run_dir = run_dir_for(cfg, results_dir)
    if distributed.world_size() > 1:
        return _run_multi_process(cfg, results_dir, run_dir, force, progress, tags)
    # 1. reuse a finished run
    if not force and (record := _reuse(run_dir, results_dir)) is not None:
        return record
    # 2. fail early: the tracking store must be reachable before any work starts
    return run_one_locked(cfg, results_dir, run_dir, force, progress, tags)


def run_one_locked(cfg: RunConfig, results_dir: Path, run_dir: Path, force: bool, progress: bool,
                   tags: dict[str, str] | None) -> dict:
    """Check the tracking store, take the run's lock, run it (unless another process finished it meanwhile)."""
    from benchmark.core import tracking

    uri = tracking.tracking_uri(results_dir)
    tracking.check_reachable(uri)
    with _RunLock(run_dir):
        # another process may have finished this run between the check above and the lock
        if not force and (record := _reuse(run_dir, results_dir)) is not None:
            return record
        (run_dir / "record.json").unlink(missing_ok=True)
        (run_dir / MLFLOW_CLOSED).unlink(missing_ok=True)
        for path in remove_orphan_temps(results_dir):  # files half-written by killed processes
            log.info("removed %s, left by a killed process", path)
        return _run_locked(cfg, results_dir, run_dir, progress, tags)


def _run_multi_process(cfg: RunConfig, results_dir: Path, run_dir: Path, force: bool, progress: bool,
                       tags: dict[str, str] | None) -> dict | None:
    """One run in several processes (``accelerate launch --num_processes N``): the main process runs it as one
    process would (reuse, lock, tracking, evaluation, record); the others join it for the method's training and
    sampling when the method shares them out (``Method.multi_process``), then stop. Returns None in the others."""
    distributed.init(cfg.device)
    record = None
    if distributed.is_main():
        record = None if force else _reuse(run_dir, results_dir)
    if distributed.broadcast(record is not None):
        distributed.finish()
        return record
    shared = getattr(METHODS.get(cfg.method), "multi_process", False)
    if not shared:  # the main process runs the method alone
        log.info("%s runs in the main process only", cfg.method)
        distributed.finish()
    if distributed.is_main():
        return run_one_locked(cfg, results_dir, run_dir, force, progress, tags)  # _execute calls finish()
    if shared:
        _fit_and_augment(cfg, run_dir, results_dir / "cache", _NoTracker(), progress=False)
        distributed.finish()
    return None


class _NoTracker:
    """What a follower process of a multi-process run logs to: nothing (the main process tracks the run)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass


def _reuse(run_dir: Path, results_dir: Path) -> dict | None:
    """The finished record of ``run_dir`` marked ``reused`` (and listed in results.jsonl if it was not), or None."""
    from benchmark.core import tracking

    record = load_record(run_dir)
    if record is None:
        return None
    tracking.append_record(results_dir, record, if_missing=True)
    mlflow_run = record.get("mlflow") or {}
    closed = run_dir / MLFLOW_CLOSED
    if not closed.is_file() and mlflow_run.get("tracking_uri") == tracking.tracking_uri(results_dir):
        try:
            tracking.close_recorded_run(mlflow_run["tracking_uri"], mlflow_run["run_id"], run_dir / "record.json")
        except Exception as exc:  # the record is the result; the tracking store is a view of it
            log.warning("could not close MLflow run %s of %s: %s", mlflow_run.get("run_id"), run_dir.name, exc)
        closed.touch()
    record["reused"] = True
    return record


def _run_locked(
    cfg: RunConfig, results_dir: Path, run_dir: Path, progress: bool, extra_tags: dict[str, str] | None = None
) -> dict:
    from benchmark.core import tracking

    started = time.time()
    cache_dir = results_dir / "cache"
    commit = git_commit()
    tags = {
        **{k: str(v) for k, v in (extra_tags or {}).items()},  # the runner's own tags below take precedence
        "method": cfg.method,
        "task": cfg.task,
        "preset": cfg.preset,
        "seed": str(cfg.seed),
        "encoder": cfg.probe.encoder,
        "device": cfg.device,
        "code_version": code_version(cfg),
        "git_commit": commit,
        "run_hash": run_dir.name.rsplit("-", 1)[-1],
        "data_source": cfg.data.source,
        "run_dir": str(run_dir.resolve()),
    }
    tracker = tracking.Tracker(results_dir, f"medibench-{cfg.task}", cfg.name, tags, cfg.flat())
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    tracker.log_artifact(run_dir / "config.json")
    try:
        with interrupts.as_interrupt():  # a library failing while it unwinds a Ctrl-C: still an interruption
            record = _execute(cfg, run_dir, cache_dir, tracker, progress)
    except KeyboardInterrupt:
        _close_quietly(tracker, "KILLED")
        raise
    except BaseException:
        _close_quietly(tracker, "FAILED")
        raise
    # 7. the record, written last and atomically; then the append-only results.jsonl
    record.update(
        schema=RECORD_SCHEMA,
        run_id=run_dir.name.rsplit("-", 1)[-1],
        name=cfg.name,
        method=cfg.method,
        task=cfg.task,
        preset=cfg.preset,
        seed=cfg.seed,
        replicate=cfg.replicate(),
        device=cfg.device,
        encoder=cfg.probe.encoder,
        config=cfg.to_dict(),
        code_version=code_version(cfg),
        git_commit=commit,
        started=datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        duration_s=round(time.time() - started, 2),
        run_dir=str(run_dir),
        mlflow={"tracking_uri": tracker.uri, "experiment": tracker.experiment, "run_id": tracker.run_id},
        host={
            "hostname": socket.gethostname(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            # the process's peak resident memory so far (a sweep worker's covers its earlier jobs too)
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    )
    tracker.log_metrics({"duration_s": record["duration_s"]})
    atomic_write_json(run_dir / "record.json", record)
    tracking.append_record(results_dir, record)
    tracker.log_artifact(run_dir / "record.json")
    tracker.finish("FINISHED")
    (run_dir / MLFLOW_CLOSED).touch()
    record["reused"] = False
    return record


def _close_quietly(tracker, status: str) -> None:
    """Mark the MLflow run ``status`` while another error propagates; a failure here (the disk that just filled up
    holds the MLflow store too) is a warning, so the user sees the error that stopped the run."""
    try:
        tracker.finish(status)
    except Exception as exc:
        log.warning("could not mark MLflow run %s %s: %s", tracker.run_id, status, str(exc).splitlines()[0])


def _fit_and_augment(cfg: RunConfig, run_dir: Path, cache_dir: Path, tracker, progress: bool):
    """Steps 1-4 of a run: seeds, splits, the method's fit and the augmented training set (the part the processes of
    a multi-process run share). Returns (task, splits, method, context, augmented training split)."""
    # 1. seed everything (global generators: the sampling seed; each source has its own seed, RunConfig.seed_for)
    seed_everything(cfg.seed_for("sampling"))
    # 2. the task's splits
    task: Task = TASKS.get(cfg.task)(cfg.task_data(), cfg.split, cache_dir, progress)
    splits = task.splits(cfg.seed_for("split"))
    log.info("splits: %s", {k: len(v) for k, v in splits.items()})
    # 3. the method learns from the training split
    method: Method = METHODS.get(cfg.method)(cfg.method_params)
    ctx = Context(
        device=cfg.device,
        preset=cfg.preset,
        seed=cfg.seed_for("sampling"),
        model_seed=cfg.seed_for("model"),
        task=task,
        run_dir=run_dir,
        cache_dir=cache_dir,
        progress=progress,
        log_metrics=tracker.log_metrics,
        log_artifact=tracker.log_artifact,
    )
    method.fit(splits["train"], ctx)
    # 4. augmented training set; evaluation splits as the method wants them seen
    train = method.augment(splits["train"], ctx)
    if "group" not in train.metadata.columns or train.metadata["group"].isna().any():
        meta = train.metadata.copy()
        meta["group"] = task.groups(meta)
        train = Split(train.images, meta, "train", train.info)
    return task, splits, method, ctx, train


def _execute(cfg: RunConfig, run_dir: Path, cache_dir: Path, tracker, progress: bool) -> dict:
    task, splits, method, ctx, train = _fit_and_augment(cfg, run_dir, cache_dir, tracker, progress)
    distributed.finish()  # several processes: the others stop here; the rest is the main process's alone
    data_info = dict(splits["train"].info)
    data_info["cohort"] = cfg.replicate()["population"]
    if cfg.data.source == "embedded":  # the world the cohort was drawn from: patients are (world, patient id)
        data_info["cohort_world"] = cfg.task_data().generator_seed
    evals = {name: method.transform_eval(splits[name], ctx) for name in EVAL_SPLITS}
    # 5. frozen encoder -> embeddings (cached) -> linear probe
    probe = Probe(cfg, cache_dir)
    embedded = {"train": probe.embed(train), **{name: probe.embed(split) for name, split in evals.items()}}
    probe.fit(train, embedded["train"])
    # 6. metrics on every evaluation split
    metrics: dict[str, float] = {
        "train/n_real": float((~train.metadata["is_synthetic"].astype(bool)).sum()),
        "train/n_synthetic": float(train.metadata["is_synthetic"].astype(bool).sum()),
    }
    # 5b. PathoROB's robustness index (croma) in the encoder's space: of the training set the probe learns from
    # (a method's synthetic patches change it) and of test_unseen (a method's evaluation transform changes it)
    for name, split in (("train", train), ("test_unseen", evals["test_unseen"])):
        meta = split.metadata
        synthetic = meta["is_synthetic"].astype(bool).to_numpy()
        patients = np.where(synthetic, [f"synthetic-{i}" for i in range(len(meta))],
                            meta["patient_id"].astype(str).to_numpy())
        index = M.robustness_index(embedded[name], split.labels, meta["tissue_source_site"].to_numpy(), patients)
        metrics.update({f"{name}/{k}": v for k, v in index.items()})
    groups: dict[str, list[dict]] = {}
    predictions = []
    real_train = splits["train"].metadata
    for name, split in evals.items():
        y = split.labels
        prob = probe.predict_proba(split, len(task.classes), embedded[name])
        pred = prob.argmax(axis=1)
        sites = split.metadata["tissue_source_site"].to_numpy()
        alignment = M.site_alignment(real_train["tissue_source_site"], real_train["label"], sites, y)
        patients = split.metadata["patient_id"].astype(str).to_numpy()
        values, table, cm = M.evaluate(
            y, pred, split.metadata["group"], sites, len(task.classes), cfg.probe.min_group_size, alignment,
            patients, cfg.probe.min_group_patients, cfg.probe.min_shortcut_patients,
        )
        metrics.update({f"{name}/{k}": v for k, v in values.items()})
        groups[name] = table.to_dict(orient="records")
        table.to_csv(run_dir / f"groups_{name}.csv", index=False)
        cm_frame = pd.DataFrame(
            cm, index=[f"true_{c}" for c in task.classes], columns=[f"pred_{c}" for c in task.classes]
        )
        cm_frame.to_csv(run_dir / f"confusion_{name}.csv")
        frame = split.metadata[["patient_id", "tissue_source_site", "race", "group", "label"]].copy()
        frame.insert(0, "split", name)
        frame["alignment"] = alignment
        frame["pred"] = pred
        for i, c in enumerate(task.classes):
            frame[f"p_{c}"] = prob[:, i] if len(split) else []
        predictions.append(frame)
        # 95% intervals of this run's metrics: a bootstrap over patients (benchmark.evaluation.stats)
        if cfg.probe.bootstrap and len(split):
            intervals = stats.patient_intervals(
                frame, stats.INTERVAL_METRICS, cfg.probe.min_group_size, cfg.probe.min_group_patients,
                cfg.probe.bootstrap, seed=cfg.seed_for("probe"), min_shortcut_patients=cfg.probe.min_shortcut_patients,
            )
            for metric, (low, high) in intervals.items():
                metrics[f"{name}/{metric}/ci_low"], metrics[f"{name}/{metric}/ci_high"] = low, high
    pd.concat(predictions, ignore_index=True).to_csv(run_dir / "predictions.csv.gz", index=False)
    # 6b. FID of images synthesized for the held-out rows vs the real ones (per cancer type, named feature spaces)
    if method.generative:
        from benchmark.evaluation import fid

        metrics.update(fid.evaluate_method(method, splits["test_unseen"], cfg.probe, ctx, encoder=probe.encoder))
        # 6b'. on the embedded data: its patches of the combinations the training split lacks vs true patches
        from benchmark.evaluation import counterfactual

        metrics.update(counterfactual.evaluate(method, splits["train"], ctx, cfg.probe, probe.encoder))
    # 6c. samples.npz (training images as the method returns them) and per-run figures, for reports and the UI
    from benchmark import report as reporting

    reporting.run_figures(
        train, groups, run_dir, cfg.name, method.generative, cfg.seed, task.group_columns, task.classes,
        tracker.log_artifact,
    )
    tracker.set_tags({"generative": str(method.generative).lower()})
    # 7. tracking: metrics and artifacts
    tracker.log_metrics(metrics)
    for name in EVAL_SPLITS:
        tracker.log_artifact(run_dir / f"groups_{name}.csv", "groups")
        tracker.log_artifact(run_dir / f"confusion_{name}.csv", "confusion")
    return {
        "metrics": {k: M.finite_or_none(v) for k, v in metrics.items()},
        "groups": groups,
        "classes": list(task.classes),
        "group_columns": list(task.group_columns),
        "data": data_info,
        "method_report": ctx.report,
    }

