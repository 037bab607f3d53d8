"""Freeze a sweep's results: copy its run records into ``results/<date>_<commit>/`` for the repository.

``python -m benchmark freeze --methods all --tasks all --seeds 3 --preset cpu`` takes the same grid as ``sweep``
(the same content-addressed jobs), checks that every job has finished, and copies each run's small files into a
self-contained results folder that ``python -m benchmark report --results <folder>`` renders without the original
runs, checkpoints or MLflow store:

- ``runs/<task>/<method>/<run>/``: ``record.json`` (its ``run_dir`` made relative), ``config.json``, the
  per-group and confusion CSVs and ``predictions.csv.gz`` (a reader can recompute any metric), and, for the
  lowest seed of each (task, method), ``samples.npz`` cut down to the largest sites (the leaderboard's sample grid);
- ``results.jsonl``: one line per record, in job order;
- ``endpoints.toml``: the protocol the sweep declared before its first job (when it declared one);
- ``MANIFEST.json``: the command, the commit of the tree and of each record, the host, the sum of the runs'
  durations, the trained generative models' training times, and a SHA-256 of every copied file.

Nothing is half-written: the folder is assembled next to its destination and renamed into place; an existing
destination is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.core.config import ConfigError

SMALL_FILES = ("config.json", "groups_val.csv", "groups_test_seen.csv", "groups_test_unseen.csv",
               "confusion_val.csv", "confusion_test_seen.csv", "confusion_test_unseen.csv", "predictions.csv.gz")
SAMPLE_SITES = 6  # sites kept in a frozen samples.npz (the leaderboard's grid shows at most six)


class FreezeError(RuntimeError):
    """The results cannot be frozen as asked (unfinished jobs, destination exists); the message says what to do."""


def default_destination(results_dir: Path, commit: str, today: dt.date | None = None) -> Path:
    today = today or dt.datetime.now(dt.timezone.utc).date()
    return results_dir / f"{today.isoformat()}_{commit.split('-')[0]}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cut_samples(src: Path, dst: Path, max_sites: int = SAMPLE_SITES) -> int:
    """Copy ``src`` (a run's samples.npz) to ``dst`` keeping the ``max_sites`` sites with most images (and the
    class-only ``Unknown`` column); the number of images kept."""
    from benchmark.core.data import UNKNOWN
    from benchmark.core.images import load_samples

    images, meta = load_samples(src)
    counts = meta["tissue_source_site"].value_counts()
    keep_sites = [s for s in sorted(counts.index, key=lambda s: (-counts[s], s)) if s != UNKNOWN][:max_sites]
    mask = meta["tissue_source_site"].isin([*keep_sites, UNKNOWN]).to_numpy()
    kept = meta[mask].reset_index(drop=True)
    np.savez_compressed(dst, images=images[mask], metadata=np.array(kept.to_json(orient="records")))
    return int(mask.sum())


def freeze(jobs: Sequence, dest: Path, command: str, commit: str, allow_dirty: bool = False,
           finished_only: bool = False) -> dict:
    """Copy the finished ``jobs`` (``orchestration.sweep.Job``) into ``dest``; the manifest (``commit``: the tree's).

    Raises FreezeError naming the unfinished jobs (unless ``finished_only``: then the finished ones are frozen and
    the manifest says ``"complete": false`` and lists the rest, so a long sweep's progress can be kept in the
    repository and resumed elsewhere with ``sweep --from-frozen``), when ``dest`` exists, or (unless
    ``allow_dirty``) when the records do not all come from one clean commit: published results must name the code
    that made them."""
    from benchmark.orchestration.runner import load_record

    dest = Path(dest)
    if dest.exists():
        raise FreezeError(f"{dest} exists: frozen results are never overwritten; pass another --dest or remove it")
    if not jobs:
        raise ConfigError("nothing to freeze: the grid has no jobs")
    records = [(job, load_record(job.run_dir)) for job in jobs]
    missing = [job.name for job, rec in records if rec is None]
    if finished_only:
        records = [(job, rec) for job, rec in records if rec is not None]
        if not records:
            raise FreezeError(f"none of the {len(jobs)} jobs has a finished record: nothing to freeze")
    elif missing:
        raise FreezeError(
            f"{len(missing)} of {len(jobs)} jobs have no finished record ({', '.join(missing[:8])}"
            f"{', ...' if len(missing) > 8 else ''}): run the same grid with `python -m benchmark sweep` first"
        )
    commits = sorted({str(rec.get("git_commit") or "unknown") for _, rec in records})
    if not allow_dirty and (len(commits) > 1 or commits[0].endswith("-dirty") or commits[0] == "unknown"):
        raise FreezeError(
            f"the records come from {len(commits)} commit(s) ({', '.join(commits)}): frozen results must come from "
            "one clean commit; commit, re-run the sweep (runs of other code are not reused), then freeze "
            "(--allow-dirty freezes anyway, marked in the manifest)"
        )
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        files: dict[str, str] = {}
        lines, entries = [], []
        lowest_seed: dict[tuple[str, str], int] = {}
        for job, _ in records:
            key = (job.cfg.task, job.cfg.method)
            lowest_seed[key] = min(lowest_seed.get(key, job.cfg.seed), job.cfg.seed)
        models: dict[str, float] = {}
        for job, rec in records:
            rel = Path("runs") / job.cfg.task / job.cfg.method / job.run_dir.name
            out = tmp / rel
            out.mkdir(parents=True)
            for name in SMALL_FILES:
                if (job.run_dir / name).is_file():
                    shutil.copy2(job.run_dir / name, out / name)
            samples = job.run_dir / "samples.npz"
            if job.cfg.seed == lowest_seed[(job.cfg.task, job.cfg.method)] and samples.is_file():
                cut_samples(samples, out / "samples.npz")
            rec = dict(rec)
            rec["run_dir"] = str(rel)  # relative: the report finds it under the frozen folder
            (out / "record.json").write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            lines.append(json.dumps(rec, sort_keys=True))
            for path in sorted(out.iterdir()):
                files[str(rel / path.name)] = _sha256(path)
            report = rec.get("method_report") or {}
            if "train_seconds" in report:
                models[f"{job.cfg.task}/{job.cfg.method}"] = float(report["train_seconds"])
            entries.append({"name": rec.get("name"), "run_id": rec.get("run_id"), "git_commit": rec.get("git_commit"),
                            "duration_s": rec.get("duration_s"), "started": rec.get("started")})
        (tmp / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        # the protocol the sweep declared before its first job travels with its records (report tests that one)
        from benchmark.evaluation.endpoints import DECLARED_NAME

        declared = sorted({job.run_dir.parents[3] / DECLARED_NAME for job, _ in records
                           if (job.run_dir.parents[3] / DECLARED_NAME).is_file()})
        if len(declared) > 1:
            raise FreezeError(f"the runs come from results folders with different declared protocols: "
                              f"{', '.join(map(str, declared))}")
        if declared:
            shutil.copy2(declared[0], tmp / DECLARED_NAME)
            files[DECLARED_NAME] = _sha256(tmp / DECLARED_NAME)
        hosts = sorted({json.dumps(r.get("host", {}).get("threads")) + " threads, torch "
                        + str(r.get("host", {}).get("torch")) for _, r in records})
        manifest = {
            "frozen": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit,
            "command": command,
            "grid": {"methods": sorted({j.cfg.method for j in jobs}), "tasks": sorted({j.cfg.task for j in jobs}),
                     "seeds": sorted({j.cfg.seed for j in jobs}), "presets": sorted({j.cfg.preset for j in jobs})},
            "runs": len(records),
            "complete": not missing,
            "unfinished": missing,
            "record_commits": commits,
            "one_clean_commit": len(commits) == 1 and not commits[0].endswith("-dirty") and commits[0] != "unknown",
            "hosts": hosts,
            "sum_of_run_durations_s": round(sum(float(r.get("duration_s") or 0) for _, r in records), 1),
            "model_training_s": models,
            "records": entries,
            "sha256": files,
        }
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def thaw(jobs: Sequence, frozen: Path) -> int:
    """Copy into each unfinished job's run directory the run of the same content address that ``frozen`` (a folder
    made by :func:`freeze`) holds, and its declared protocol into the results folder; how many runs were copied.
    ``sweep --from-frozen`` uses it to resume a grid from a (partial) frozen record on a machine that lost the
    sweep's own folder: those runs are then done, the rest are run."""
    from benchmark.evaluation.endpoints import DECLARED_NAME
    from benchmark.orchestration.runner import load_record

    frozen = Path(frozen)
    if not (frozen / "MANIFEST.json").is_file():
        raise FreezeError(f"{frozen} is not a frozen results folder (no MANIFEST.json)")
    copied = 0
    for job in jobs:
        src = frozen / "runs" / job.cfg.task / job.cfg.method / job.run_dir.name
        if load_record(job.run_dir) is not None or load_record(src) is None:
            continue
        job.run_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = job.run_dir.with_name(f".{job.run_dir.name}.thaw")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        if job.run_dir.exists():  # an unfinished attempt: the frozen run replaces it
            shutil.rmtree(job.run_dir)
        tmp.rename(job.run_dir)
        copied += 1
    if jobs and (frozen / DECLARED_NAME).is_file():
        results = jobs[0].run_dir.parents[3]
        if not (results / DECLARED_NAME).is_file():
            results.mkdir(parents=True, exist_ok=True)
            shutil.copy2(frozen / DECLARED_NAME, results / DECLARED_NAME)
    return copied
