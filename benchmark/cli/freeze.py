"""``python -m benchmark freeze``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.common import add_grid, plan_grid


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``freeze`` subcommand's arguments."""
    fz = sub.add_parser(
        "freeze",
        help="copy a finished sweep's records into results/<date>_<commit>/ (for the repository)",
        description="Take the same grid as `sweep` (the same content-addressed jobs), check every job has finished, "
        "and copy each run's small files (record, config, per-group and confusion tables, predictions; a cut-down "
        "samples.npz for the lowest seed) with results.jsonl and a MANIFEST.json (command, commits, host, run "
        "durations, model training times, SHA-256 of every file) into a new folder. `report --results <folder>` "
        "renders the leaderboard from it alone. An existing folder is never overwritten.",
        epilog="example:\n  python -m benchmark freeze --methods all --tasks all --seeds 3 --preset cpu\n"
        "  python -m benchmark report --results results/2026-11-22_0123456789",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_grid(fz, "the overrides the sweep ran with, if any")
    fz.add_argument("--results", type=Path, default=Path("results"), help="results folder (default ./results)")
    fz.add_argument("--dest", type=Path, default=None,
                    help="new folder (default <results>/<UTC date>_<commit>)")
    fz.add_argument("--allow-dirty", action="store_true",
                    help="freeze records of uncommitted or mixed code too (marked in the manifest); by default "
                    "frozen results must come from one clean commit")
    fz.add_argument("--finished-only", action="store_true",
                    help="freeze the jobs that have finished and list the others in the manifest (\"complete\": "
                    "false): to keep a long sweep's progress; `sweep --from-frozen <folder>` resumes from it")
    return fz


def command(args: argparse.Namespace) -> int:
    from benchmark.core.provenance import git_commit
    from benchmark.orchestration import freeze

    jobs = plan_grid(args, args.results)[3]
    commit = git_commit() or "unknown"
    dest = args.dest or freeze.default_destination(args.results, commit)
    preset = jobs[0].cfg.preset if jobs else args.preset
    grid = f"--methods {args.methods} --tasks {args.tasks} --seeds {args.seeds} --preset {preset}" + (
        " --set " + " ".join(args.overrides) if args.overrides else "")
    command = f"python -m benchmark sweep {grid} && python -m benchmark freeze {grid}"
    manifest = freeze.freeze(jobs, dest, command, commit, allow_dirty=args.allow_dirty,
                             finished_only=args.finished_only)
    hours = manifest["sum_of_run_durations_s"] / 3600
    print(f"froze {manifest['runs']} runs into {dest} (run durations {hours:.2f} h; records from "
          f"{', '.join(manifest['record_commits'])})")
    if not manifest["complete"]:
        print(f"{len(manifest['unfinished'])} of {len(jobs)} jobs not finished (listed in the manifest); resume "
              f"them: python -m benchmark sweep {grid} --from-frozen {dest}")
    print(f"render it: python -m benchmark report --results {dest}")
    return 0
