"""``python -m benchmark tune``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli.common import EXIT_FAILED, add_launcher, add_overrides, slurm_options


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``tune`` subcommand's arguments."""
    tune = sub.add_parser(
        "tune",
        help="search a method's hyperparameters with optuna (validation worst-group accuracy)",
        description="Search the tunable hyperparameters of a method (declared with their ranges in the config "
        "dataclasses; --set fixes one) with optuna's TPE sampler. A trial runs --seeds run seeds through the same "
        "runner as `run` and scores the mean validation worst-group accuracy (validation balanced accuracy when no "
        "group is large enough); a median pruner stops poor trials after a seed. Test splits are never used for "
        "choosing. The study lives in --storage (sqlite in the results folder by default; any SQLAlchemy URL): "
        "--trials N runs until the study has N finished trials, so the same command resumes it, and several "
        "workers can share one study. --best re-runs the best trial with fresh seeds (1000, ...) and prints val "
        "and test metrics.",
        epilog="examples:\n"
        "  python -m benchmark tune --method none --task nsclc --preset smoke --trials 10\n"
        "  python -m benchmark tune --method medi --task nsclc --trials 30 --storage postgresql://user@db/optuna\n"
        "  python -m benchmark tune --method medi --task nsclc --best",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tune.add_argument("--method", required=True, help="augmentation method (see `list`)")
    tune.add_argument("--task", required=True, help="task (see `list`), or a task file FILE.toml")
    tune.add_argument("--trials", type=int, default=None, help="run until the study has N finished trials")
    tune.add_argument("--preset", default=None, help="smoke, cpu (default without a GPU), gpu or paper")
    tune.add_argument("--storage", default=None, metavar="URL",
                      help="optuna storage, any SQLAlchemy URL (default sqlite:///<out>/optuna.db)")
    tune.add_argument("--study", default=None, metavar="NAME", help="study name (default <method>-<task>-<preset>)")
    tune.add_argument("--seeds", type=int, default=2, help="run seeds per trial, 0..K-1 (default 2)")
    tune.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed (default 0)")
    tune.add_argument("--best", action="store_true", help="re-run the best trial with fresh seeds and print metrics")
    tune.add_argument("--best-seeds", type=int, default=3, help="fresh seeds for --best: 1000.. (default 3)")
    add_overrides(tune, "fixed config overrides (a tunable key given here is not searched)")
    tune.add_argument("--out", type=Path, default=Path("results"), help="results folder (default ./results)")
    tune.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_launcher(tune, "tune workers (each runs trials on the shared study until it has --trials)")
    return tune


def command(args: argparse.Namespace) -> int:
    from benchmark.orchestration.tune import TuneError, cli

    options = slurm_options(args)
    try:
        return cli(args, options)
    except TuneError as exc:  # an unusable storage, nothing to evaluate
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
