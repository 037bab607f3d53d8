"""``python -m benchmark sweep``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli.common import EXIT_FAILED, add_grid, add_launcher, plan_grid, slurm_options

SWEEP_EPILOG = """\
examples:
  python -m benchmark sweep --preset smoke --dry-run
  python -m benchmark sweep --methods all --tasks all --seeds 3 --preset cpu
  python -m benchmark sweep --methods none,medi --tasks nsclc --seeds 0,1,2 --workers 2
  # a SLURM cluster: one array job per sweep, one GPU per job, at most 8 at once; wait with a progress bar
  python -m benchmark sweep --preset gpu --launcher slurm --slurm-partition gpu --slurm-gpus 1 \\
      --slurm-cpus 8 --slurm-mem 32 --slurm-time 600 --slurm-parallel 8
  python -m benchmark sweep --preset gpu --launcher slurm ... --no-wait   # submit and return
  python -m benchmark sweep --preset gpu --status     # each job: record, SLURM job and state, log of a failed one"""


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``sweep`` subcommand's arguments."""
    sw = sub.add_parser(
        "sweep",
        help="run every method x task x seed (resumable, parallel, several machines)",
        description="Run a grid of methods x tasks x seeds through the same runner as `run`. Jobs are "
        "content-addressed: a finished run (its record exists) is skipped, so an interrupted sweep is resumed by "
        "running the same command again; a job whose run another process is computing (another sweep, a SLURM "
        "job, another machine on a shared file system: the run's lock says so) is not run twice. --launcher local "
        "(default): --workers processes on this machine, the cores divided between them. --launcher slurm: the "
        "unfinished jobs go to SLURM as a job array through submitit, with the --slurm-* resources, one log file per "
        "job under <out>/slurm/; jobs that reuse a model another job trains (seeds.cohort, seeds.split and "
        "seeds.model pinned) start after it. Seed 0 of every method and task comes first, so parallel workers train "
        "different generative models.",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_grid(sw, "config overrides applied to every job (keys: `list --keys`)")  # --tasks may list task files
    add_launcher(sw, "jobs")
    sw.add_argument("--status", action="store_true",
                    help="each job's state: its record, its SLURM job and SLURM state, the log of a failed one")
    sw.add_argument("--dry-run", action="store_true", help="list the jobs and which are done; run nothing")
    sw.add_argument("--out", type=Path, default=Path("results"), help="results folder (default ./results)")
    sw.add_argument("--endpoints", type=Path, default=None,
                    help="the protocol file (TOML) the report will test, declared into --out before the first job "
                    "(default benchmark/endpoints.toml); a results folder keeps the protocol it started with")
    sw.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in logs)")
    sw.add_argument("--from-frozen", type=Path, default=None, metavar="FOLDER",
                    help="first take the finished runs of this grid from a frozen folder (`freeze --finished-only` "
                    "keeps a long sweep's progress there) into --out, then run the rest")
    return sw


def command(args: argparse.Namespace) -> int:
    from benchmark.core.config import ConfigError
    from benchmark.orchestration import launchers, sweep

    options = slurm_options(args)
    if args.launcher == "slurm" and args.workers != 1:
        raise ConfigError("--workers is for --launcher local; on SLURM, --slurm-parallel N caps the jobs running "
                          "at once")
    from benchmark.evaluation import endpoints

    methods, tasks, seeds, jobs = plan_grid(args, args.out)
    if args.from_frozen is not None and not (args.status or args.dry_run):
        from benchmark.orchestration.freeze import thaw

        print(f"took {thaw(jobs, args.from_frozen)} finished run(s) of this grid from {args.from_frozen}")
    try:
        protocol = endpoints.load(args.endpoints)
        if not (args.status or args.dry_run):
            endpoints.declare(args.out, protocol)
    except endpoints.EndpointsError as exc:
        raise ConfigError(str(exc)) from None
    absent = [m for m in protocol.methods() if m not in methods]
    if absent:
        print(f"note: the declared endpoints compare {', '.join(absent)}, which this sweep does not run; their "
              "endpoints stay untested until a sweep into the same folder does")
    sweep.prepare(jobs, args.out)
    rows = launchers.slurm_rows(jobs, args.out)
    counts = {s: sum(r["state"] == s for r in rows) for s in launchers.ROW_STATES}
    to_run = counts["pending"] + counts["failed"] + counts["cancelled"]
    preset = jobs[0].cfg.preset if jobs else args.preset
    print(f"sweep: {len(methods)} method(s) x {len(tasks)} task(s) x {len(seeds)} seed(s) = {len(jobs)} jobs "
          f"(preset {preset}); done {counts['done']}, running {counts['running']}, queued {counts['queued']}, "
          f"to run {to_run}" + "".join(f", of them {counts[s]} {s} before" for s in ("failed", "cancelled")
                                       if counts[s]))
    if args.status or args.dry_run:
        print("\n".join(launchers.status_table(rows)))
        if args.dry_run:
            print(f"dry run: nothing was run; {to_run} job(s) would run (--launcher {args.launcher})")
        return 0
    # 1. local: a process pool here
    if args.launcher == "local":
        result = launchers.run_local(jobs, args.out, args.workers, progress=not args.no_progress)
        done = sum(sweep.is_finished(j) for j in jobs)
        failed = result["failed"]
        print(f"sweep finished: {done}/{len(jobs)} jobs done" + (f", {len(failed)} failed:" if failed else ""))
        for job, error in failed:
            print(f"  {job.name}: {error}")
        if failed:
            print("rerun the same command to retry the failed jobs")
        return EXIT_FAILED if failed else 0
    # 2. slurm: a job array (two when later jobs reuse a model an earlier one trains)
    submitted = launchers.submit(jobs, args.out, options)
    if submitted["kept"]:
        print(f"{len(submitted['kept'])} job(s) still queued or running on SLURM from before: not submitted again")
    for job in submitted["elsewhere"]:
        print(f"{job.name}: being computed by a process of this host ({sweep.lock_holder(job.run_dir)}): "
              "not submitted")
    if submitted["submitted"]:
        print(f"logs: {launchers.slurm_folder(args.out)}/<job id>/<job id>_0_log.out (job ids and logs per run in "
              f"{launchers.slurm_folder(args.out) / launchers.STATE_FILE})")
    status = launchers.command_line([a for a in sys.argv[1:] if a != "--no-wait"] + ["--status"])
    if args.no_wait:
        print(f"not waiting; the jobs' states: {status}")
        return 0
    rows = launchers.wait(jobs, args.out, progress=not args.no_progress)
    done = sum(r["state"] == "done" for r in rows)
    failed = [r for r in rows if r["state"] in ("failed", "cancelled")]
    print(f"sweep finished: {done}/{len(jobs)} jobs done" + (f", {len(failed)} failed or cancelled:" if failed
                                                             else ""))
    for r in failed:
        log = f" (log: {launchers.shown(r['log'])})" if r["log"] and Path(r["log"]).is_file() else ""
        print(f"  {r['job'].name}: {r['state']}: {r['where']}{log}")
    for r in rows:
        if r["state"] not in ("done", "failed", "cancelled"):
            print(f"  {r['job'].name}: {r['state']} {r['where']}".rstrip())
    if failed:
        print("rerun the same command to submit the failed and cancelled jobs again")
    return EXIT_FAILED if failed else 0
