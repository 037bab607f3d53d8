"""The command line: ``python -m benchmark COMMAND ...`` (also ``medibench``), one module per subcommand.

Only argument parsing and printing live here; the work is in the packages below. Heavy libraries are imported
inside the commands, so ``--help`` and ``list`` stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from benchmark.cli import freeze, guidance, listing, perf, report, run, samples, sweep, tune, ui
from benchmark.cli.common import ENVIRONMENT_ERRNOS, EXIT_FAILED, EXIT_USAGE

DESCRIPTION = """\
MeDiBench: how well do augmentation strategies protect histopathology classifiers from shortcut learning
on hospital (tissue source site) and demographic metadata?

Every run trains nothing but the method's own model; the downstream evaluation (frozen encoder + linear probe,
balanced / worst-group / site-averaged accuracy on val, test_seen and test_unseen) is the same for all methods.
Without --set data.root=... (TCGA-UT) or data.manifest=... (a CSV of your own cohort), runs use the embedded
TCGA-like generator: no download needed. A task may be a TOML file: --task path/to/task.toml."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the final output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the final output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(*args, **kwargs):  # every subcommand accepts -q as well
        kwargs.setdefault("parents", [common])
        return _add_parser(*args, **kwargs)

    sub.add_parser = add_parser
    sub.required = True

    run.add_parser(sub)
    listing.add_parser(sub)
    report.add_parser(sub)
    sweep.add_parser(sub)
    tune.add_parser(sub)
    samples.add_parser(sub)
    guidance.add_parser(sub)
    freeze.add_parser(sub)
    perf.add_parser(sub)
    ui.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from benchmark.core import interrupts

    # Ctrl-C, or SIGTERM from a scheduler or `kill`: finished runs are kept, the unfinished one is marked KILLED
    interrupts.install()
    parser = build_parser()
    args = parser.parse_args(argv)
    from benchmark.training import distributed

    quiet = args.quiet or not distributed.is_main()  # the other processes of ``accelerate launch``: warnings only
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from benchmark.core.config import ConfigError
    from benchmark.core.registry import RegistryError

    commands = {"run": run.command, "list": listing.command, "report": report.command, "sweep": sweep.command,
                "tune": tune.command, "samples": samples.command, "guidance": guidance.command,
                "freeze": freeze.command, "perf": perf.command, "ui": ui.command}
    started = time.monotonic()
    if distributed.world_size() > 1 and args.command != "run":
        if distributed.is_main():
            print(f"error: `{args.command}` runs as one process; under `accelerate launch` only `run` shares its "
                  f"work out (a sweep spreads its jobs with --workers or --launcher slurm)", file=sys.stderr)
        return EXIT_USAGE
    try:
        with interrupts.as_interrupt():  # a library failing while it unwinds a Ctrl-C: still an interruption
            return commands[args.command](args)
    except (ConfigError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(interrupted_message(args.command, interrupts.kept_since(started)), file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot write{where}: {exc.strerror or exc}; what finished before is kept (a run without its "
              "record.json is redone by the same command)", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a user-facing failure: data, tracking, run
        if _is_user_error(exc):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if "database or disk is full" in str(exc):  # sqlite (the MLflow store) on a full disk, through SQLAlchemy
            from benchmark.core import tracking

            store = tracking.tracking_uri(Path(getattr(args, "out", "results") or "results"))
            print(f"error: cannot write the MLflow store {store}: the disk is full; what finished before is kept (a "
                  "run without its record.json is redone by the same command)", file=sys.stderr)
            return EXIT_FAILED
        raise


def interrupted_message(command: str, kept: list) -> str:
    """What an interrupted command kept and how to go on; ``kept``: the training checkpoints it left
    (:class:`benchmark.core.interrupts.Kept`)."""
    where = "; ".join(f"{k.what}: step {k.step} of {k.total} ({k.where})" for k in kept)
    if command == "run":
        if kept:
            k = kept[-1]
            return (f"interrupted: the generative model's training was checkpointed at step {k.step} of {k.total} "
                    f"({k.where}); run the same command again to resume from there; this run has no record yet")
        return ("interrupted: this run has no record yet; run the same command again to redo it (a generative model "
                "that finished training is reused from the cache)")
    if command in ("sweep", "tune"):
        text = "interrupted: finished runs are kept; unfinished ones have no record and are redone by the same command"
        if kept:
            return text + f"; training checkpointed here, resumed from there: {where}"
        return text + " (a generative model resumes from its newest checkpoint)"
    return "interrupted" + (f"; training checkpointed: {where}" if kept else "")


def _is_user_error(exc: BaseException) -> bool:
    """Errors whose message is the whole story (bad data, unreachable server); anything else keeps its traceback."""
    names = {"DataError", "SplitError", "RunError", "TrackingError", "TrainingError", "ReportError", "SweepError",
             "CompareError", "FreezeError", "GuidanceError"}
    return any(cls.__name__ in names for cls in type(exc).__mro__)
