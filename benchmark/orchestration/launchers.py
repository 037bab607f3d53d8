"""Launchers: where a sweep's unfinished jobs run (``sweep --launcher local|slurm``), and where tune's workers run.

``local``: a process pool on this machine (``concurrent.futures``, spawned workers), the cores divided between the
workers (:mod:`core.threads`); one worker runs the jobs in this process. Workers take the jobs in sweep order.
A job whose lock another process holds (another sweep, a SLURM job, another machine on a shared file system) is
skipped and reported as running elsewhere; once every other job is through, the sweep waits for it and reuses its
record (or runs it, if that process stopped without one), so a sweep that ends with 0 has a record for every job.

``slurm``: the unfinished jobs go to SLURM as a job array through submitit (``SlurmExecutor.map_array``), with the
resources of :class:`SlurmOptions`, at most ``parallel`` array tasks at once, one log file per job
(``<out>/slurm/<array>_<task>/<array>_<task>_0_log.out``). Jobs that reuse a model another job of the sweep trains
(:func:`~benchmark.orchestration.sweep.model_waits`) go into a second array that depends (``afterany``) on the array
tasks training them. What was submitted (SLURM job id, log path, dependency, per run key) is kept in
``<out>/slurm/jobs.json``: the same command (and ``--status``) finds it; a job still queued or running there is not
submitted again. Job states come from ``squeue`` (SLURM keeps a finished job there for MinJobAge, 5 minutes by default;
``sacct`` needs accounting,
which many clusters and the test cluster lack), then from what the job left: its record (done), submitit's result
file (the job's error, or an interruption), else "ended without a result" with its log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit

from benchmark.core import interrupts, threads
from benchmark.core.cache import atomic_write_json
from benchmark.core.config import ConfigError
from benchmark.orchestration.sweep import (
    Job,
    SweepError,
    fmt_summary,
    holder_is_here,
    is_finished,
    lock_holder,
    model_waits,
    run_job,
    summarize,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0  # how often a waiting sweep asks squeue
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
STATE_FILE = "jobs.json"
ROW_STATES = ("done", "running", "queued", "failed", "cancelled", "pending")  # a job in sweep --status


# ---------------------------------------------------------------------------------------------------------------
# local: a process pool


_stopping = False  # a pool worker was told to stop while it had no job


def _stop_when_idle(signum: int, frame: object) -> None:
    global _stopping
    _stopping = True


def _init_worker(n_threads: int, level: int) -> None:
    """A pool worker: its share of the cores; stopped by the sweep (one SIGTERM), not by the terminal's Ctrl-C."""
    threads.limit(n_threads)
    logging.basicConfig(level=level, format=f"%(levelname)s worker {os.getpid()}: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_when_idle)


def _worker_job(job: Job, results_dir: str, wait: bool) -> dict:
    """One job in a pool worker; a stop (SIGTERM) before or during it: ``{"state": "interrupted"}``, and the worker
    starts no other job."""
    global _stopping
    interrupts.install()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if _stopping:
            return {"state": "interrupted"}
        return run_job(job, Path(results_dir), wait=wait)
    except KeyboardInterrupt:
        _stopping = True
        return {"state": "interrupted"}
    finally:
        signal.signal(signal.SIGTERM, _stop_when_idle)


def _stop_workers(pool) -> None:
    """SIGTERM to every pool worker (a running job stops as a Ctrl-C stops it: checkpoint, MLflow run KILLED; queued
    jobs are not started), again every 15 s to a worker still running (a signal that reaches Python inside a finalizer
    is lost there: "Exception ignored in ..."), until all have exited."""
    import multiprocessing as mp

    pool.shutdown(wait=False, cancel_futures=True)
    children = mp.active_children()
    while children:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(c.is_alive() for c in children):
            time.sleep(0.2)
        children = [c for c in children if c.is_alive()]


def run_local(
    jobs: Sequence[Job],
    results_dir: Path,
    workers: int = 1,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, list]:
    """Run the unfinished jobs with ``workers`` processes; ``{"done": [Job], "failed": [(Job, error)]}``.

    Jobs whose lock another process holds are run last, waiting for that process (see the module docstring)."""
    todo = [j for j in jobs if not is_finished(j)]
    result: dict[str, list] = {"done": [], "failed": []}
    total, before = len(jobs), len(jobs) - len(todo)
    if not todo:
        return result
    if workers <= 1:
        _run_here(todo, results_dir, progress, echo, total, before, result)
    else:
        _run_pool(todo, results_dir, workers, progress, total, before, result)
    return result


def _run_here(todo: list[Job], results_dir: Path, progress: bool, echo: Callable[[str], None], total: int,
              before: int, result: dict[str, list]) -> None:
    position = before
    busy = []
    for patient, batch in ((False, todo), (True, busy)):
        for job in batch:
            echo(f"[{position + 1}/{total}] {job.name} ({job.cfg.preset}) ...")
            outcome = run_job(job, results_dir, progress=progress, wait=patient, echo=echo)
            if outcome["state"] == "busy":
                echo(f"[-/{total}] {job.name}: running elsewhere ({lock_holder(job.run_dir) or '?'}); "
                     "waiting for it once the other jobs are through")
                busy.append(job)
            elif outcome["state"] == "done":
                position += 1
                result["done"].append(job)
                echo(f"[{position}/{total}] {job.name}: done, {fmt_summary(outcome['summary'])}")
            else:
                result["failed"].append((job, outcome["error"]))
                echo(f"[-/{total}] {job.name}: FAILED: {outcome['error']}")


def _run_pool(todo: list[Job], results_dir: Path, workers: int, progress: bool, total: int, before: int,
              result: dict[str, list]) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
    from concurrent.futures import wait as wait_for

    from tqdm import tqdm

    started = time.monotonic()
    level = logging.getLogger().getEffectiveLevel()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads.share(workers), max(level, logging.WARNING)))
    bar = tqdm(total=total, initial=before, desc="sweep", unit="job", disable=not progress, dynamic_ncols=True)
    write = tqdm.write if progress else print
    try:
        busy: list[Job] = []
        for patient, batch in ((False, todo), (True, busy)):
            futures = {pool.submit(_worker_job, job, str(results_dir), patient): job for job in batch}
            if patient and batch:
                write(f"waiting for {len(batch)} job(s) running elsewhere: {', '.join(j.name for j in batch)}")
            pending = set(futures)
            while pending:
                finished, pending = wait_for(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                # a Ctrl-C that reached Python inside a finalizer is lost there ("Exception ignored in ..."): the
                # signal handler has noted it, so the sweep stops all the same
                if interrupts.interrupted_since(started):
                    raise KeyboardInterrupt
                for future in finished:
                    _pool_outcome(futures[future], future, result, busy, bar, write)
    except KeyboardInterrupt:
        _stop_workers(pool)
        raise
    finally:
        bar.close()
        pool.shutdown(wait=True)


def _pool_outcome(job: Job, future, result: dict[str, list], busy: list[Job], bar, write: Callable[[str], None]) \
        -> None:
    try:
        outcome = future.result()
    except Exception as exc:  # the worker died (killed, out of memory): the pool is broken
        outcome = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
    if outcome["state"] == "interrupted":  # the worker was stopped by someone else's SIGTERM
        raise KeyboardInterrupt
    if outcome["state"] == "busy":
        write(f"{job.name}: running elsewhere ({lock_holder(job.run_dir) or '?'}); waiting for it once the other "
              "jobs are through")
        busy.append(job)
    elif outcome["state"] == "done":
        result["done"].append(job)
        bar.update(1)
        write(f"{job.name}: done, {fmt_summary(outcome['summary'])}")
    else:
        result["failed"].append((job, outcome["error"]))
        write(f"{job.name}: FAILED: {outcome['error']}")


# ---------------------------------------------------------------------------------------------------------------
# slurm: a job array through submitit


@dataclass(frozen=True)
class SlurmOptions:
    """What each SLURM job asks for (``sweep``/``tune --slurm-*``); None leaves it to the cluster's defaults."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus: int | None = None  # GPUs per job
    cpus: int | None = None  # CPUs per job (the job's torch / BLAS threads follow it)
    mem_gb: float | None = None  # memory per job
    time_min: int = 240  # time limit per job, minutes
    parallel: int | None = None  # array tasks running at once
    options: tuple[str, ...] = ()  # more sbatch options, KEY=VALUE (e.g. constraint=a100, exclusive=)
    setup: tuple[str, ...] = ()  # shell lines run before the job (e.g. "module load cuda")

    def check(self) -> None:
        for name in ("gpus", "cpus", "time_min", "parallel"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "gpus" else 1):
                raise ConfigError(f"--slurm-{name.replace('_min', '')}: must be >= {0 if name == 'gpus' else 1}, "
                                  f"got {value}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ConfigError(f"--slurm-mem: GB, > 0, got {self.mem_gb}")
        for item in self.options:
            if "=" not in item or not item.partition("=")[0].strip():
                raise ConfigError(f"--slurm-option: KEY=VALUE (an sbatch long option without its dashes, e.g. "
                                  f"constraint=a100), got {item!r}")

    def parameters(self) -> dict:
        """submitit SlurmExecutor parameters."""
        self.check()
        params: dict = {"job_name": "medibench", "time": self.time_min, "stderr_to_stdout": True}
        for key, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                           ("gpus_per_node", self.gpus), ("cpus_per_task", self.cpus),
                           ("array_parallelism", self.parallel)):
            if value is not None:
                params[key] = value
        if self.mem_gb is not None:
            params["mem"] = f"{int(round(self.mem_gb * 1024))}M"
        extra = {}
        for item in self.options:
            key, _, value = item.partition("=")
            extra[key.strip().lstrip("-")] = value.strip() if value.strip() else True
        if extra:
            params["additional_parameters"] = extra
        if self.setup:
            params["setup"] = list(self.setup)
        return params


def _job_threads() -> int:
    """Threads for a job on a SLURM node: the CPUs SLURM gave it, within this process's affinity."""
    given = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    usable = threads.usable_cores()
    return max(1, min(usable, int(given))) if given and given.isdigit() else usable


class SlurmRun(submitit.helpers.Checkpointable):
    """The function a SLURM job runs: one sweep job (``run_one``). A job at its time limit is requeued by submitit
    (up to three times) and resumes from its training checkpoint; ``scancel`` stops it as a Ctrl-C does."""

    def __call__(self, job: Job, results_dir: str, cwd: str) -> dict:
        # SIGTERM (scancel, preemption) -> KeyboardInterrupt from here on (submitit's own handler ignores it): the
        # run's MLflow run is marked KILLED and training keeps a checkpoint
        interrupts.install()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("submitit").propagate = False  # it has its own handler: its lines once, not twice
        try:
            return self._run(job, results_dir, cwd)
        except KeyboardInterrupt:
            log.warning("interrupted: no record written; the same sweep command submits the job again")
            return {"state": "interrupted"}

    @staticmethod
    def _run(job: Job, results_dir: str, cwd: str) -> dict:
        from benchmark.orchestration.runner import RunBusy, run_dir_for, run_one

        os.chdir(cwd)  # relative paths (the results folder, data roots) as on the submitting side
        n_threads = _job_threads()
        threads.limit(n_threads)
        log.info("medibench sweep job %s (run %s), %d thread(s)", job.name, job.key, n_threads)
        if run_dir_for(job.cfg, Path(results_dir)) != job.run_dir:
            log.warning("the code changed since this job was submitted: its run goes to %s, not %s",
                        run_dir_for(job.cfg, Path(results_dir)), job.run_dir)
        try:
            record = run_one(job.cfg, results_dir, progress=False)
        except RunBusy as busy:
            log.warning("%s; not run here", busy)
            return {"state": "busy", "error": str(busy)}
        log.info("done: %s", record["run_dir"])
        return {"state": "done", "summary": summarize(record), "reused": bool(record.get("reused"))}


class SlurmState:
    """``<out>/slurm/jobs.json``: per run key, the SLURM job that was last submitted for it (written atomically;
    :meth:`lock` serializes the sweep commands that submit)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / STATE_FILE

    def load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SweepError(f"{self.path} is unreadable ({exc}); move it away to start the SLURM bookkeeping "
                             "afresh (finished runs keep their records)") from None
        return dict(data.get("jobs", {}))

    def save(self, jobs: dict[str, dict]) -> None:
        atomic_write_json(self.path, {"version": 1, "jobs": jobs})

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{STATE_FILE}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def slurm_folder(results_dir: Path) -> Path:
    return Path(results_dir) / "slurm"


def squeue_states(ids: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """SLURM job id (``123`` or ``123_4``) -> (state, reason) for the jobs squeue still knows (running, queued, or
    finished less than MinJobAge ago); None when squeue fails (the controller unreachable)."""
    arrays = sorted({i.split("_")[0] for i in ids if i})
    if not arrays:
        return {}
    cmd = ["squeue", "--noheader", "--states=all", "--array", "--format=%i|%T|%r", f"--jobs={','.join(arrays)}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("squeue failed: %s", exc)
        return None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # every one of them has left squeue
            return {}
        log.warning("squeue failed: %s", proc.stderr.strip() or proc.returncode)
        return None
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return states


def _result(entry: dict) -> tuple[str, object] | None:
    """submitit's result file of a SLURM job: ("success", outcome dict) or ("error", traceback), or None."""
    path = Path(entry["folder"]) / f"{entry['slurm_id']}_0_result.pkl"
    if not path.is_file():
        return None
    try:
        return submitit.core.utils.pickle_load(path)
    except Exception:  # half-written or foreign: as if absent
        return None


def _last_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "?"


def shown(path: str | Path) -> str:
    """A path relative to the working directory when it is under it (shorter in tables)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def slurm_rows(jobs: Sequence[Job], results_dir: Path, states: dict | None = None) -> list[dict]:
    """One row per job: ``state`` (done, queued, running, failed, cancelled, pending), the SLURM job and its state
    (squeue's, or what the job left once squeue forgot it), ``where`` (the error, the lock's holder) and ``log``."""
    entries = SlurmState(slurm_folder(results_dir)).load()
    if states is None:
        ids = [entries[j.key]["slurm_id"] for j in jobs if j.key in entries]
        states = squeue_states(ids) or {}
    rows = []
    for job in jobs:
        entry = entries.get(job.key)
        row = {"job": job, "state": "pending", "slurm_id": "", "slurm_state": "", "where": "", "log": ""}
        if entry is not None:
            row["slurm_id"], row["log"] = entry["slurm_id"], entry.get("log", "")
            slurm_state, reason = states.get(entry["slurm_id"], ("", ""))
            row["slurm_state"] = slurm_state
            if slurm_state == "PENDING" and reason not in ("", "None"):
                row["where"] = f"waiting: {reason}"
        if is_finished(job):
            row["state"], row["where"] = "done", "record here"
            rows.append(row)
            continue
        if entry is None:
            holder = lock_holder(job.run_dir)
            if holder:
                row["state"], row["where"] = "running", f"lock held by {holder}"
            rows.append(row)
            continue
        if row["slurm_state"] in ACTIVE:
            row["state"] = "queued" if row["slurm_state"] == "PENDING" else "running"
            rows.append(row)
            continue
        if holder_is_here(holder := lock_holder(job.run_dir)):
            row["state"], row["where"] = "running", f"lock held by {holder}"
            rows.append(row)
            continue
        result = _result(entry)
        if result is not None and result[0] == "error":
            row["state"], row["where"] = "failed", _last_line(result[1])
        elif result is not None and isinstance(result[1], dict) and result[1].get("state") == "busy":
            row["state"], row["where"] = "running", f"elsewhere: {result[1].get('error', '')}"
        elif result is not None and isinstance(result[1], dict) and result[1].get("state") == "interrupted":
            row["state"], row["where"] = "cancelled", "interrupted (scancel or a signal); no record"
        elif result is not None:
            row["state"], row["where"] = "failed", "the job ended without this run's record (the code changed?)"
        elif row["slurm_state"] in ("CANCELLED", "PREEMPTED", "DEADLINE"):
            row["state"], row["where"] = "cancelled", f"{row['slurm_state'].lower()}; no record"
        else:
            known = row["slurm_state"] or "left squeue"
            row["state"], row["where"] = "failed", f"ended without a result ({known}): cancelled, killed or lost"
        rows.append(row)
    return rows


def _prepare_executor(results_dir: Path, options: SlurmOptions) -> submitit.SlurmExecutor:
    try:
        executor = submitit.SlurmExecutor(folder=slurm_folder(results_dir).resolve() / "%j")
    except RuntimeError:
        raise SweepError("--launcher slurm: no SLURM here (srun is not on PATH); run it on a cluster's login node, "
                         "or use --launcher local") from None
    try:
        executor.update_parameters(**options.parameters())
    except ValueError as exc:
        raise ConfigError(f"--slurm-*: {_last_line(exc)}") from None
    return executor


def _map_array(executor: submitit.SlurmExecutor, fn: Callable, *args: list) -> list:
    """``executor.map_array``; sbatch's refusal (an unknown partition or account, a limit) as one SweepError line."""
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's stderr too; we say it once
            return executor.map_array(fn, *args)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line] or lines[-1:] or ["?"]
        raise SweepError(f"sbatch refused the array: {'; '.join(dict.fromkeys(errors))}") from None


def _submit_array(executor: submitit.SlurmExecutor, batch: list[Job], results_dir: Path) -> list:
    cwd = str(Path.cwd())
    return _map_array(executor, SlurmRun(), batch, [str(results_dir)] * len(batch), [cwd] * len(batch))


def submit(jobs: Sequence[Job], results_dir: Path, options: SlurmOptions,
           echo: Callable[[str], None] = print) -> dict[str, list[Job]]:
    """Submit the jobs that have no record and are not queued or running on SLURM already; returns ``{"submitted",
    "kept" (still queued or running from before), "elsewhere" (a process of this host computes it)}``."""
    from benchmark.orchestration.sweep import prepare

    finished = prepare(jobs, results_dir)
    state = SlurmState(slurm_folder(results_dir))
    with state.lock():  # two sweep commands at once: the second sees what the first submitted
        entries = state.load()
        states = squeue_states([entries[j.key]["slurm_id"] for j in jobs if j.key in entries])
        if states is None:
            raise SweepError("squeue failed, so the jobs queued before cannot be told apart from the ones to "
                             "submit; try again when the SLURM controller answers")
        todo, kept, elsewhere = [], [], []
        for job in jobs:
            if job.key in finished:
                continue
            entry = entries.get(job.key)
            if entry is not None and states.get(entry["slurm_id"], ("",))[0] in ACTIVE:
                kept.append(job)
            elif holder_is_here(lock_holder(job.run_dir)):
                elsewhere.append(job)
            else:
                todo.append(job)
        # 1. waves: a job reusing a model that a job submitted now (or still queued) trains starts after that job
        waits = model_waits(jobs, finished)
        trainers = {j.key: entries[j.key]["slurm_id"] for j in kept}
        later = [j for j in todo if waits.get(j.key) in trainers or waits.get(j.key) in {t.key for t in todo}]
        first = [j for j in todo if j not in later]
        executor = _prepare_executor(results_dir, options) if todo else None
        for batch in (first, later):
            if not batch:
                continue
            dependency = ""
            if batch is later:
                dependency = "afterany:" + ":".join(sorted({trainers[waits[j.key]] for j in batch}))
                executor.update_parameters(dependency=dependency)
            # 2. submit and write down at once (a signal meanwhile is held until both are done)
            with interrupts.deferred():
                slurm_jobs = _submit_array(executor, batch, results_dir)
                now = datetime.now(timezone.utc).isoformat(timespec="seconds")
                for job, sj in zip(batch, slurm_jobs, strict=True):
                    trainers[job.key] = sj.job_id
                    entries[job.key] = {
                        "name": job.name, "slurm_id": sj.job_id, "array": sj.job_id.split("_")[0],
                        "folder": str(sj.paths.folder), "log": str(sj.paths.stdout), "submitted": now,
                        "dependency": dependency,
                        "submissions": int(entries.get(job.key, {}).get("submissions", 0)) + 1,
                    }
                state.save(entries)
            how = f", after {dependency.split(':', 1)[1]} (the jobs training their models)" if dependency else ""
            what = "array" if len(batch) > 1 else "job"
            echo(f"submitted {what} {slurm_jobs[0].job_id.split('_')[0]}: {len(batch)} job(s){how}")
    return {"submitted": todo, "kept": kept, "elsewhere": elsewhere}


def wait(jobs: Sequence[Job], results_dir: Path, progress: bool = True, echo: Callable[[str], None] = print,
         poll: float = POLL_SECONDS) -> list[dict]:
    """Follow the sweep's SLURM jobs until none is queued or running; a line per job that ends; the final rows."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="sweep (slurm)", unit="job", disable=not progress, dynamic_ncols=True)
    write = tqdm.write if progress else echo
    seen: dict[str, str] = {}
    failures = 0
    started = time.monotonic()
    try:
        while True:
            if interrupts.interrupted_since(started):  # a Ctrl-C lost in a finalizer (see _run_pool)
                raise KeyboardInterrupt
            states = squeue_states(_ids(results_dir, jobs))
            if states is None:
                failures += 1
                if failures == 1:
                    write("squeue failed; still waiting (Ctrl-C stops waiting, the jobs go on)")
                time.sleep(poll)
                continue
            failures = 0
            rows = slurm_rows(jobs, results_dir, states)
            for row in rows:
                job, now = row["job"], row["state"]
                before = seen.get(job.key)
                if before is not None and before != now:
                    if now == "done":
                        write(f"{job.name}: done, {_summary_text(job)}")
                    elif now == "running" and before == "queued":
                        write(f"{job.name}: running ({row['slurm_id']})")
                    elif now in ("failed", "cancelled"):
                        log = f" (log: {shown(row['log'])})" if Path(row["log"]).is_file() else ""
                        write(f"{job.name}: {now.upper()}: {row['where']}{log}")
                seen[job.key] = now
            bar.n = sum(r["state"] == "done" for r in rows)
            active = [r for r in rows if r["slurm_state"] in ACTIVE and r["state"] != "done"]
            running = sum(r["state"] == "running" for r in active)
            bar.set_postfix_str(f"running {running}, queued {len(active) - running}", refresh=True)
            if not active:
                return rows
            time.sleep(poll)
    except KeyboardInterrupt:
        arrays = sorted({e["array"] for k, e in SlurmState(slurm_folder(results_dir)).load().items()
                         if k in {j.key for j in jobs}})
        write(f"stopped waiting; the SLURM jobs go on (the same command waits for them and submits only what is "
              f"not queued; `scancel {' '.join(arrays)}` cancels them)")
        raise
    finally:
        bar.close()


def _ids(results_dir: Path, jobs: Sequence[Job]) -> list[str]:
    entries = SlurmState(slurm_folder(results_dir)).load()
    return [entries[j.key]["slurm_id"] for j in jobs if j.key in entries]


def _summary_text(job: Job) -> str:
    from benchmark.orchestration.runner import load_record

    record = load_record(job.run_dir)
    return fmt_summary(summarize(record)) if record else ""


def status_table(rows: list[dict]) -> list[str]:
    """The ``sweep --status`` / ``--dry-run`` table: job, run hash, state, SLURM job and state, detail (log path of a
    failed job)."""
    slurm = any(r.get("slurm_id") for r in rows)
    head = f"{'#':>4}  {'job':<28} {'run hash':<13} {'state':<10}"
    lines = [head + (f"{'slurm job':<12} {'slurm state':<12} " if slurm else "") + "detail"]
    for i, r in enumerate(rows, 1):
        job = r["job"]
        line = f"{i:>4}  {job.name:<28} {job.key:<13} {r['state']:<10}"
        if slurm:
            gone = "gone" if r.get("slurm_id") else "-"  # gone: squeue no longer lists it (after MinJobAge)
            line += f"{r.get('slurm_id') or '-':<12} {r.get('slurm_state') or gone:<12} "
        detail = r.get("where", "")
        if r["state"] in ("failed", "cancelled") and r.get("log") and Path(r["log"]).is_file():
            detail += f" (log: {shown(r['log'])})"
        lines.append((line + detail).rstrip())
    return lines


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "benchmark", *argv])


# ---------------------------------------------------------------------------------------------------------------
# tune workers


def _tune_worker(target: Callable[..., Any], kwargs: dict) -> None:
    """One tune worker (a pool process, or a SLURM job): ``target(**kwargs)`` (``tune.tune``: trials until the study
    has enough; Optuna's storage shares the study between workers); its lines go to its output (the SLURM job's log).
    The caller passes ``target``, so this module never imports ``tune`` (which imports it)."""
    interrupts.install()  # SIGTERM (scancel, the pool's stop): the current trial is marked FAIL
    kwargs = dict(kwargs)
    if kwargs.pop("in_pool", False):  # stopped by the parent's SIGTERM, not by the terminal's Ctrl-C
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "cwd" in kwargs:
        os.chdir(kwargs.pop("cwd"))
    threads.limit(kwargs.pop("threads", None) or _job_threads())
    try:
        target(**kwargs)
    except KeyboardInterrupt:
        print("interrupted: the current trial is marked FAIL, finished trials are kept", flush=True)


def run_tune_workers(launcher: str, target: Callable[..., Any], kwargs: list[dict], results_dir: Path,
                     slurm: SlurmOptions | None = None, wait: bool = True, echo: Callable[[str], None] = print) -> int:
    """Start one tune worker ``target(**k)`` per ``k`` in ``kwargs`` (``tune.tune`` and its arguments) here
    (``local``: a process pool) or as a SLURM job array; returns how many ended with an error (waiting for them
    unless ``wait`` is False, SLURM only)."""
    if launcher == "local":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        n = threads.share(len(kwargs))
        pool = ProcessPoolExecutor(max_workers=len(kwargs), mp_context=mp.get_context("spawn"),
                                   initializer=_init_worker, initargs=(n, logging.WARNING))
        try:
            futures = [pool.submit(_tune_worker, target, dict(k, threads=n, in_pool=True)) for k in kwargs]
            errors = 0
            for future in futures:
                try:
                    future.result()
                except Exception as exc:
                    errors += 1
                    echo(f"a tune worker failed: {type(exc).__name__}: {exc}")
            return errors
        except KeyboardInterrupt:
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True)
    executor = _prepare_executor(results_dir, slurm or SlurmOptions())
    executor.update_parameters(job_name="medibench-tune")
    cwd = str(Path.cwd())
    slurm_jobs = _map_array(executor, _tune_worker, [target] * len(kwargs), [dict(k, cwd=cwd) for k in kwargs])
    array = slurm_jobs[0].job_id.split("_")[0]
    echo(f"submitted array {array}: {len(slurm_jobs)} tune worker(s); logs: "
         f"{', '.join(shown(sj.paths.stdout) for sj in slurm_jobs)}")
    if not wait:
        return 0
    ids = [sj.job_id for sj in slurm_jobs]
    entries = {sj.job_id: {"slurm_id": sj.job_id, "folder": str(sj.paths.folder)} for sj in slurm_jobs}
    try:
        while True:
            states = squeue_states(ids)
            if states is not None and not any(states.get(i, ("",))[0] in ACTIVE for i in ids):
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        echo(f"stopped waiting; the tune workers go on (`scancel {array}` cancels them)")
        raise
    errors = 0
    for sj in slurm_jobs:
        result = _result(entries[sj.job_id])
        if result is None or result[0] == "error":
            errors += 1
            why = _last_line(result[1]) if result else "ended without a result"
            echo(f"tune worker {sj.job_id} failed: {why} (log: {shown(sj.paths.stdout)})")
    return errors
