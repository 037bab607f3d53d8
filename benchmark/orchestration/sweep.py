"""Sweeps: every method x task x seed, content-addressed and resumable; run by a launcher
(:mod:`~benchmark.orchestration.launchers`: a process pool on this machine, or a SLURM job array through submitit).

A sweep is a list of jobs, each one ``RunConfig``; a job's key is the run's content address (``RunConfig.digest``),
so the same config is never run twice and a finished job (its ``record.json`` exists) is skipped: running the same
command again resumes a sweep. Nothing else holds a sweep's state: there is no queue and no database. That a job never
runs twice at the same time (two workers, two sweep commands, a SLURM job and a local sweep, two machines sharing the
results folder) is the per-run lock's guarantee (``runner._RunLock``, ``flock``, released by the operating system
however its holder dies): a job whose lock another process holds is *running elsewhere*.

Order: seed 0 of every (task, method) first, then seed 1, ... so parallel workers train different generative
models at the same time. Each replicate trains its own model unless ``seeds.split`` and ``seeds.model`` are pinned;
then the jobs of one method differ only in their sampling and probe seeds and share one model
(:func:`model_group`): the first trains it, the others find it in the cache (``benchmark/training.py``; a process
that needs a model another process is training waits for it, and on SLURM they are submitted after it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmark.core.cache import pid_alive
from benchmark.core.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

WAIT_SECONDS = 5.0  # poll interval while another process holds a job's lock


class SweepError(RuntimeError):
    """The sweep cannot go on as asked (no SLURM here, a rejected submission, ...); the message says why."""


@dataclass(frozen=True)
class Job:
    order: int
    cfg: RunConfig
    key: str  # the run's content address (config + code version)
    run_dir: Path

    @property
    def name(self) -> str:
        return self.cfg.name


def parse_names(value: str, known: Sequence[str], what: str) -> list[str]:
    """``all`` or a comma-separated list of registered names (an unknown one is a ConfigError naming the choices)."""
    if value.strip() == "all":
        return list(known)
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ConfigError(f"--{what}: give 'all' or a comma-separated list; choose from: {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        from benchmark.core.registry import did_you_mean

        hints = "".join(did_you_mean(n, known) for n in unknown[:1])
        raise ConfigError(f"--{what}: unknown {', '.join(map(repr, unknown))}{hints}; choose from: {', '.join(known)}")
    return list(dict.fromkeys(names))


def parse_seeds(value: str) -> list[int]:
    """``3`` -> seeds 0, 1, 2; ``0,5,7`` -> those seeds."""
    try:
        if "," in value:
            seeds = [int(v) for v in value.split(",") if v.strip()]
        else:
            n = int(value)
            if n < 1:
                raise ValueError
            seeds = list(range(n))
    except ValueError:
        raise ConfigError(f"--seeds: a count (e.g. 3) or a list (e.g. 0,1,2), got {value!r}") from None
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds: seeds must be >= 0, got {value!r}")
    return list(dict.fromkeys(seeds))


def plan_jobs(
    methods: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    preset: str | None,
    device: str,
    overrides: list[str],
    results_dir: Path,
) -> list[Job]:
    """The sweep's jobs, seed-major (see the module docstring), without duplicates."""
    from benchmark.orchestration.runner import build_config, code_version, run_dir_for

    jobs: list[Job] = []
    seen: set[str] = set()
    for seed in seeds:
        for task in tasks:
            for method in methods:
                cfg = build_config(method, task, preset, seed, device, overrides)
                key = cfg.digest(code_version(cfg))
                if key in seen:
                    continue
                seen.add(key)
                jobs.append(Job(len(jobs), cfg, key, run_dir_for(cfg, results_dir)))
    return jobs


def is_finished(job: Job) -> bool:
    from benchmark.orchestration.runner import load_record

    return load_record(job.run_dir) is not None


def prepare(jobs: Sequence[Job], results_dir: Path) -> set[str]:
    """The keys of the finished jobs; a finished run missing from results.jsonl (a process killed just after its
    record) gets its line."""
    from benchmark.core import tracking
    from benchmark.orchestration.runner import load_record

    finished = set()
    for job in jobs:
        record = load_record(job.run_dir)
        if record is not None:
            tracking.append_record(results_dir, record, if_missing=True)
            finished.add(job.key)
    return finished


def lock_holder(run_dir: Path) -> str | None:
    """Who computes the run now, as its lock file names it (``host pid``), or None. The name stays in the file when
    its holder is killed (the lock itself is released): a holder on this host whose process is gone is None; one on
    another host is shown as named."""
    try:
        text = (run_dir / ".lock").read_text().strip()
    except OSError:
        return None
    if not text:
        return None
    host, _, pid = text.rpartition(" ")
    if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
        return None
    return text


def holder_is_here(holder: str | None) -> bool:
    """Whether a lock holder (``host pid``) is a live process of this host."""
    return bool(holder) and holder.rpartition(" ")[0] == socket.gethostname()


def model_group(cfg: RunConfig) -> str | None:
    """The generative model a job trains or reuses: jobs with the same group share one model (they differ only in the
    sampling and probe seeds and in the probe's settings, which the model does not see); None for a method that
    trains no generative model."""
    from benchmark.core.registry import METHODS

    if not METHODS.get(cfg.method)(cfg.method_params).generative:
        return None
    payload = cfg.to_dict()
    for key in ("seed", "seeds", "probe"):
        payload.pop(key, None)
    payload["model_seeds"] = {source: cfg.seed_for(source) for source in ("cohort", "split", "model")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def model_waits(jobs: Sequence[Job], finished: set[str]) -> dict[str, str]:
    """job key -> the key of the job that trains its model (the first unfinished job of its group, in sweep order),
    for the group's later unfinished jobs. A group with a finished job has its model already: nobody waits."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        group = model_group(job.cfg)
        if group is not None:
            groups.setdefault(group, []).append(job)
    waits = {}
    for members in groups.values():
        if any(m.key in finished for m in members):
            continue
        trainer, *later = members
        waits.update({m.key: trainer.key for m in later})
    return waits


def summarize(record: dict) -> dict:
    m = record.get("metrics", {})
    return {
        "run_dir": record.get("run_dir"),
        "duration_s": record.get("duration_s"),
        "host": (record.get("host") or {}).get("hostname"),
        "test_unseen/balanced_accuracy": m.get("test_unseen/balanced_accuracy"),
        "test_unseen/worst_group_accuracy": m.get("test_unseen/worst_group_accuracy"),
    }


def fmt_summary(summary: dict) -> str:
    bal = summary.get("test_unseen/balanced_accuracy")
    worst = summary.get("test_unseen/worst_group_accuracy")
    dur = summary.get("duration_s")
    parts = []
    if dur is not None:
        parts.append(f"{dur / 60:.1f} min")
    if bal is not None:
        parts.append(f"test_unseen bal.acc {bal:.3f}")
    if worst is not None:
        parts.append(f"worst-grp {worst:.3f}")
    return ", ".join(parts)


def run_job(job: Job, results_dir: Path, progress: bool = False, wait: bool = False,
            echo: Callable[[str], None] | None = None) -> dict:
    """Run one job (``run_one``; a finished run is reused). Returns ``{"state": "done", "summary"}``, ``{"state":
    "failed", "error"}`` (one failed job does not stop the sweep), or ``{"state": "busy", "error"}`` when another
    process holds the job's lock; with ``wait``, wait for that process instead and then reuse its record (or run the
    job if it stopped without one). KeyboardInterrupt propagates."""
    from benchmark.orchestration.runner import RunBusy, run_one

    said = False
    while True:
        try:
            record = run_one(job.cfg, results_dir, progress=progress)
        except RunBusy as busy:
            if not wait:
                return {"state": "busy", "error": str(busy)}
            if echo is not None and not said:
                echo(f"{job.name}: running elsewhere ({lock_holder(job.run_dir) or '?'}); waiting for it")
                said = True
            time.sleep(WAIT_SECONDS)
            continue
        except Exception as exc:
            log.debug("%s failed", job.name, exc_info=True)
            return {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        return {"state": "done", "summary": summarize(record), "reused": bool(record.get("reused"))}


def local_rows(jobs: Sequence[Job]) -> list[dict]:
    """One row per job: done (its record), running (its lock's holder: this or another host), or pending."""
    out = []
    for job in jobs:
        if is_finished(job):
            state, where = "done", "record here"
        elif (holder := lock_holder(job.run_dir)) is not None:
            state, where = "running", f"lock held by {holder}"
        else:
            state, where = "pending", ""
        out.append({"job": job, "state": state, "where": where})
    return out
