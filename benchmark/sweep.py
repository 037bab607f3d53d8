"""Sweeps: every method x task x seed, content-addressed, resumable, on several workers and several machines.

A sweep is a list of jobs, each one ``RunConfig``; a job's key is the run's content address (``RunConfig.digest``),
so the same config is never run twice and a finished job (its ``record.json`` exists) is skipped. Jobs are queued
in a table of a SQL database (SQLAlchemy; sqlite ``<out>/sweep.db`` by default, any shared database such as
PostgreSQL for several machines). A worker claims a job with one conditional ``UPDATE ... WHERE state='pending'``;
the database makes that atomic, so two workers, on one host or on many, never run the same job. Claims carry a
heartbeat: a claim whose worker died (its PID is gone on this host, or no heartbeat for ``stale_after`` seconds
elsewhere) goes back to pending. Ctrl-C releases the claims of unfinished jobs; the runner has already marked
their MLflow runs KILLED and written no record, so a rerun of the same command picks them up again.

Order: seed 0 of every (task, method) first, then seed 1, ... so parallel workers train different generative
models at the same time, and later seeds find the trained model in the cache (``benchmark/training.py``; a worker
that needs a model another worker is training waits for it instead of training it twice).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmark import interrupts, threads
from benchmark.cache import pid_alive
from benchmark.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

STATES = ("pending", "running", "done", "failed")


class SweepError(RuntimeError):
    """The sweep cannot go on as asked (unusable queue database, ...); the message says why."""


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
        from benchmark.registry import did_you_mean

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
    from benchmark.runner import build_config, code_version, run_dir_for

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
    from benchmark.runner import load_record

    return load_record(job.run_dir) is not None


# ---------------------------------------------------------------------------------------------------------------
# the shared queue


def default_queue_url(results_dir: Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'sweep.db'}"


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Queue:
    """The job table in a SQL database; every state change is one atomic conditional UPDATE."""

    def __init__(self, url: str, stale_after: float = 600.0):
        import sqlalchemy as sa

        self.url = url
        self.stale_after = stale_after
        try:
            kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
            if url.startswith("sqlite:///"):
                Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url, **kwargs)
            meta = sa.MetaData()
            self.jobs = sa.Table(
                "medibench_sweep_jobs",
                meta,
                sa.Column("key", sa.String(64), primary_key=True),
                sa.Column("ord", sa.Integer, nullable=False),
                sa.Column("name", sa.String(200), nullable=False),
                sa.Column("method", sa.String(100), nullable=False),
                sa.Column("task", sa.String(100), nullable=False),
                sa.Column("seed", sa.Integer, nullable=False),
                sa.Column("preset", sa.String(50), nullable=False),
                sa.Column("state", sa.String(16), nullable=False, default="pending"),
                sa.Column("owner", sa.String(300)),
                sa.Column("heartbeat", sa.Float),
                sa.Column("attempts", sa.Integer, nullable=False, default=0),
                sa.Column("finished", sa.Float),
                sa.Column("summary", sa.Text),  # JSON: a few metrics, run dir, duration, host
                sa.Column("error", sa.Text),
            )
            meta.create_all(self.engine)
        except Exception as exc:  # a bad URL, a missing driver, an unreachable server
            raise SweepError(f"sweep queue {url!r} is unusable: {type(exc).__name__}: {str(exc).splitlines()[0]}") \
                from None

    def _exec(self, stmt):
        with self.engine.begin() as conn:
            return conn.execute(stmt)

    def register(self, jobs: Sequence[Job]) -> None:
        """Add the jobs that are not in the table yet (another host may have added them already)."""
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            have = {r[0] for r in conn.execute(sa.select(self.jobs.c.key))}
            rows = [
                dict(key=j.key, ord=j.order, name=j.name, method=j.cfg.method, task=j.cfg.task, seed=j.cfg.seed,
                     preset=j.cfg.preset, state="pending", attempts=0)
                for j in jobs
                if j.key not in have
            ]
            if rows:
                try:
                    conn.execute(sa.insert(self.jobs), rows)
                except sa.exc.IntegrityError:  # a concurrent registration won; fine
                    pass

    def rows(self, keys: Sequence[str] | None = None) -> dict[str, dict]:
        import sqlalchemy as sa

        stmt = sa.select(self.jobs)
        if keys is not None:
            stmt = stmt.where(self.jobs.c.key.in_(list(keys)))
        with self.engine.connect() as conn:
            return {r.key: dict(r._mapping) for r in conn.execute(stmt)}

    def reset_failed(self, keys: Sequence[str]) -> int:
        """A new sweep command retries jobs that failed before."""
        import sqlalchemy as sa

        stmt = (sa.update(self.jobs).where(self.jobs.c.key.in_(list(keys)), self.jobs.c.state == "failed")
                .values(state="pending", owner=None, error=None))
        return self._exec(stmt).rowcount

    def recover_stale(self) -> int:
        """Claims whose worker is gone go back to pending: a dead PID on this host, or an old heartbeat."""
        import sqlalchemy as sa

        host = socket.gethostname()
        now = time.time()
        freed = 0
        for key, row in self.rows().items():
            if row["state"] != "running":
                continue
            owner_host, _, pid = (row["owner"] or "").rpartition(":")
            dead_here = owner_host == host and pid.isdigit() and not pid_alive(int(pid))
            silent = row["heartbeat"] is None or now - row["heartbeat"] > self.stale_after
            if dead_here or silent:
                stmt = (sa.update(self.jobs)
                        .where(self.jobs.c.key == key, self.jobs.c.state == "running",
                               self.jobs.c.owner == row["owner"])
                        .values(state="pending", owner=None))
                freed += self._exec(stmt).rowcount
        return freed

    def claim(self, keys: Sequence[str], worker: str) -> str | None:
        """Claim the first pending job among ``keys`` (in sweep order); None when none is left."""
        import sqlalchemy as sa

        candidates = sa.select(self.jobs.c.key).where(self.jobs.c.key.in_(list(keys)),
                                                      self.jobs.c.state == "pending").order_by(self.jobs.c.ord)
        with self.engine.connect() as conn:
            pending = [r[0] for r in conn.execute(candidates)]
        for key in pending:
            stmt = (sa.update(self.jobs)
                    .where(self.jobs.c.key == key, self.jobs.c.state == "pending")
                    .values(state="running", owner=worker, heartbeat=time.time(),
                            attempts=self.jobs.c.attempts + 1))
            if self._exec(stmt).rowcount == 1:
                return key
        return None

    def _set(self, key: str, worker: str, **values) -> bool:
        import sqlalchemy as sa

        stmt = (sa.update(self.jobs).where(self.jobs.c.key == key, self.jobs.c.owner == worker)
                .values(**values))
        return self._exec(stmt).rowcount == 1

    def heartbeat(self, key: str, worker: str) -> bool:
        return self._set(key, worker, heartbeat=time.time())

    def finish(self, key: str, worker: str, summary: dict) -> None:
        self._set(key, worker, state="done", finished=time.time(), summary=json.dumps(summary), error=None)

    def fail(self, key: str, worker: str, error: str) -> None:
        self._set(key, worker, state="failed", finished=time.time(), error=error[:2000])

    def release(self, key: str, worker: str) -> None:
        self._set(key, worker, state="pending", owner=None)

    def mark_done(self, key: str, summary: dict) -> None:
        """A job whose record already exists (finished by a plain `run` or an earlier sweep)."""
        import sqlalchemy as sa

        stmt = (sa.update(self.jobs).where(self.jobs.c.key == key, self.jobs.c.state != "done")
                .values(state="done", summary=json.dumps(summary), finished=time.time()))
        self._exec(stmt)


def summarize(record: dict) -> dict:
    m = record.get("metrics", {})
    return {
        "run_dir": record.get("run_dir"),
        "duration_s": record.get("duration_s"),
        "host": (record.get("host") or {}).get("hostname"),
        "test_unseen/balanced_accuracy": m.get("test_unseen/balanced_accuracy"),
        "test_unseen/worst_group_accuracy": m.get("test_unseen/worst_group_accuracy"),
    }


# ---------------------------------------------------------------------------------------------------------------
# workers


class _Heartbeat:
    """Refreshes a claim's heartbeat from a thread while the job runs."""

    def __init__(self, queue: Queue, key: str, worker: str, every: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(queue, key, worker, every), daemon=True)

    def _beat(self, queue: Queue, key: str, worker: str, every: float) -> None:
        while not self._stop.wait(every):
            try:
                queue.heartbeat(key, worker)
            except Exception as exc:  # a flaky database must not kill the job; the claim may go stale
                log.warning("heartbeat failed: %s", exc)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def work(
    jobs: Sequence[Job],
    queue: Queue,
    results_dir: Path,
    progress: bool,
    on_event: Callable[[str, Job, dict], None] | None = None,
    heartbeat_every: float = 30.0,
) -> dict[str, int]:
    """Claim and run jobs until none is pending; counts of done / failed jobs by this worker."""
    from benchmark.runner import run_one

    worker = _worker_id()
    by_key = {j.key: j for j in jobs}
    counts = {"done": 0, "failed": 0}
    while True:
        queue.recover_stale()
        key = queue.claim(list(by_key), worker)
        if key is None:
            return counts
        job = by_key[key]
        if on_event:
            on_event("start", job, {})
        try:
            with _Heartbeat(queue, key, worker, heartbeat_every):
                record = run_one(job.cfg, results_dir, progress=progress)
        except KeyboardInterrupt:
            queue.release(key, worker)
            raise
        except Exception as exc:  # one failed job does not stop the sweep; it is reported and retried next time
            log.debug("%s failed", job.name, exc_info=True)
            message = f"{type(exc).__name__}: {exc}"
            queue.fail(key, worker, message)
            counts["failed"] += 1
            log.error("%s failed: %s", job.name, message)
            if on_event:
                on_event("failed", job, {"error": message})
            continue
        summary = summarize(record)
        queue.finish(key, worker, summary)
        counts["done"] += 1
        if on_event:
            on_event("done", job, summary)


def _worker_main(spec: dict) -> dict[str, int]:
    """Entry point of a worker process (spawned): rebuild the jobs from their configs and work."""
    threads.limit(spec["threads"])
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s worker {os.getpid()}: %(message)s")
    interrupts.install()
    jobs = plan_jobs(spec["methods"], spec["tasks"], spec["seeds"], spec["preset"], spec["device"],
                     spec["overrides"], Path(spec["results_dir"]))
    keys = set(spec["keys"])
    jobs = [j for j in jobs if j.key in keys]
    queue = Queue(spec["queue_url"], spec["stale_after"])
    try:
        return work(jobs, queue, Path(spec["results_dir"]), progress=False)
    except KeyboardInterrupt:
        return {"done": 0, "failed": 0, "interrupted": 1}


# ---------------------------------------------------------------------------------------------------------------
# the sweep command


def status_rows(jobs: Sequence[Job], queue: Queue) -> list[dict]:
    """One row per job: what is done (here or on another host), running (where), failed or pending."""
    rows = queue.rows([j.key for j in jobs])
    out = []
    for job in jobs:
        row = rows.get(job.key, {})
        state = row.get("state", "pending")
        where = ""
        if is_finished(job):
            state, where = "done", "record here"
        elif state == "done":
            where = "on " + str((json.loads(row.get("summary") or "{}")).get("host") or "another host")
        elif state == "running":
            where = str(row.get("owner") or "")
        elif state == "failed":
            where = str(row.get("error") or "")[:80]
        out.append({"job": job, "state": state, "where": where})
    return out


def prepare(jobs: Sequence[Job], queue: Queue, results_dir: Path) -> dict[str, int]:
    """Register the jobs, mark those with a record as done, retry failed ones, free claims of dead workers."""
    from benchmark import tracking
    from benchmark.runner import load_record

    queue.register(jobs)
    skipped = 0
    for job in jobs:
        record = load_record(job.run_dir)
        if record is not None:
            tracking.append_record(results_dir, record, if_missing=True)  # a run interrupted just after its record
            queue.mark_done(job.key, summarize(record))
            skipped += 1
    retried = queue.reset_failed([j.key for j in jobs])
    freed = queue.recover_stale()
    return {"skipped": skipped, "retried": retried, "freed": freed}


def _fmt_summary(summary: dict) -> str:
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


def run_sweep(
    jobs: Sequence[Job],
    queue: Queue,
    results_dir: Path,
    workers: int,
    spec: dict,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    poll: float = 2.0,
) -> dict[str, int]:
    """Run every pending job with ``workers`` local workers; other hosts may work on the same queue meanwhile."""
    keys = [j.key for j in jobs]
    total = len(jobs)

    def counts() -> dict[str, int]:
        c = {s: 0 for s in STATES}
        for r in status_rows(jobs, queue):
            c[r["state"]] += 1
        return c

    if workers <= 1:
        done_before = counts()["done"]
        position = [done_before]

        def on_event(kind: str, job: Job, info: dict) -> None:
            if kind == "start":
                echo(f"[{position[0] + 1}/{total}] {job.name} ({job.cfg.preset}) ...")
            elif kind == "done":
                position[0] += 1
                echo(f"[{position[0]}/{total}] {job.name}: done, {_fmt_summary(info)}")
            else:
                echo(f"[-/{total}] {job.name}: FAILED: {info.get('error')}")

        return work(jobs, queue, results_dir, progress, on_event)

    import multiprocessing as mp

    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    spec = dict(spec, keys=keys, threads=threads.share(workers), queue_url=queue.url,
                results_dir=str(results_dir))
    procs = [ctx.Process(target=_worker_main, args=(spec,), daemon=False) for _ in range(workers)]
    for p in procs:
        p.start()
    seen: dict[str, str] = {}
    bar = tqdm(total=total, desc="sweep", unit="job", disable=not progress, dynamic_ncols=True)
    try:
        while True:
            rows = status_rows(jobs, queue)
            for r in rows:
                job, state = r["job"], r["state"]
                if seen.get(job.key) != state:
                    if state == "done" and job.key in seen:
                        info = queue.rows([job.key]).get(job.key, {})
                        tqdm.write(f"{job.name}: done, {_fmt_summary(json.loads(info.get('summary') or '{}'))}")
                    elif state == "failed":
                        tqdm.write(f"{job.name}: FAILED: {r['where']}")
                    elif state == "running":
                        tqdm.write(f"{job.name}: started by {r['where']}")
                    seen[job.key] = state
            n_done = sum(r["state"] == "done" for r in rows)
            running = [r["job"].name for r in rows if r["state"] == "running"]
            bar.n = n_done
            bar.set_postfix_str(f"running: {', '.join(running) or '-'}", refresh=True)
            if not any(p.is_alive() for p in procs):
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        for p in procs:  # the workers got the same SIGINT; give them time to release claims and mark MLflow
            p.join(timeout=30)
        raise
    finally:
        bar.close()
    for p in procs:
        p.join()
    final = counts()
    return {"done": final["done"], "failed": final["failed"]}
