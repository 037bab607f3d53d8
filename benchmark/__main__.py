"""Command line: ``python -m benchmark {run,list,report,ui} ...`` (also installed as ``medibench``).

Only argument parsing and printing live here; the work is in runner.py and friends. Heavy libraries are imported
inside the commands, so ``--help`` and ``list`` stay fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

EXIT_USAGE = 2  # a bad name, preset, device or --set key
EXIT_FAILED = 1  # bad data, an unreachable tracking server, a failed run

DESCRIPTION = """\
MeDiBench: how well do augmentation strategies protect histopathology classifiers from shortcut learning
on hospital (tissue source site) and demographic metadata?

Every run trains nothing but the method's own model; the downstream evaluation (frozen encoder + linear probe,
balanced / worst-group / site-averaged accuracy on val, test_seen and test_unseen) is the same for all methods.
Without --set data.root=..., runs use the embedded TCGA-like generator: no download needed."""

RUN_EPILOG = """\
examples:
  python -m benchmark run --method none --task nsclc --preset smoke
  python -m benchmark run --method medi --task nsclc --seed 1
  python -m benchmark run --method none --task uterine --set data.shortcut_strength=0 probe.C=0.1
  python -m benchmark run --method none --task nsclc --set data.root=/data/TCGA-UT data.metadata=clinical.csv

results: <out>/runs/<task>/<method>/<method>-<task>-s<seed>-<hash>/record.json, one line per finished run in
<out>/results.jsonl, and an MLflow run (local store <out>/mlflow.db, or $MLFLOW_TRACKING_URI)."""


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

    run = sub.add_parser(
        "run",
        help="run one method on one task and evaluate it",
        description="Run one augmentation method on one task: fit the method, augment the training split, "
        "embed with the frozen encoder, fit the linear probe and report metrics on val, test_seen and test_unseen. "
        "A finished run with the same resolved config is reused (see --force).",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--method", required=True, help="augmentation method (see `list`), e.g. none, medi")
    run.add_argument("--task", required=True, help="task (see `list`), e.g. nsclc, uterine, heldout")
    run.add_argument(
        "--preset",
        default=None,
        help="size of everything: smoke (seconds), cpu (default without a GPU), gpu (default with one), paper",
    )
    run.add_argument("--seed", type=int, default=0, help="run seed: sampling and probe (default 0); "
                     "the data split has its own, split.seed")
    run.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    run.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields, e.g. data.image_size=64 probe.C=0.1 method.lr=1e-4 (keys: `list --keys`)",
    )
    run.add_argument("--out", type=Path, default=Path("results"), help="results folder (default ./results)")
    run.add_argument("--force", action="store_true", help="recompute even if a finished run exists")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in logs)")

    lst = sub.add_parser(
        "list",
        help="list methods, tasks, encoders and presets",
        description="List every registered method, task, encoder and preset with a one-line description.",
    )
    lst.add_argument("--keys", action="store_true", help="also list every --set key with its type and default")

    rep = sub.add_parser(
        "report",
        help="write the leaderboards (HTML and PDF) from the run records",
        description="Build <out>/leaderboard.html (self-contained, figures embedded) and <out>/leaderboard.pdf from "
        "the run records under --results (results.jsonl and runs/*/*/*/record.json; MLflow is not needed): per task, "
        "methods x metrics on test_unseen and test_seen (mean +- SEM over seeds, best marked, paired bootstrap test "
        "against none), FID per cancer type, per-group heatmaps, sample grids and accuracy against the synthetic "
        "ratio.",
    )
    rep.add_argument("--results", type=Path, default=Path("results"), help="results folder (default ./results)")
    rep.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default ./reports)")
    rep.add_argument("--bootstrap", type=int, default=2000, help="resamples of the paired tests (default 2000)")
    rep.add_argument("--no-pdf", action="store_true", help="write only the HTML page")

    ui = sub.add_parser(
        "ui",
        help="start the MLflow UI on the project's store and print its URL",
        description="Start the MLflow UI on 127.0.0.1 for the local store (<results>/mlflow.db, artifacts in "
        "<results>/mlartifacts) or for $MLFLOW_TRACKING_URI, and print the URL. One experiment per task "
        "(medibench-<task>); tick runs and press Compare to see methods side by side on the same metrics. "
        "Stops with Ctrl-C.",
    )
    ui.add_argument("--results", type=Path, default=Path("results"), help="results folder (default ./results)")
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    return parser


def cmd_list(args: argparse.Namespace) -> int:
    from benchmark.config import PRESETS, DataConfig, ProbeConfig, SplitConfig, describe_fields
    from benchmark.registry import ENCODERS, METHODS, TASKS, load_plugins

    load_plugins()
    for title, reg in (("methods", METHODS), ("tasks", TASKS), ("encoders", ENCODERS)):
        print(f"{title}:")
        for name in reg.names():
            print(f"  {name:<12} {reg.description(name)}")
    print("presets:")
    for name, preset in PRESETS.items():
        print(f"  {name:<12} {preset.description}")
    if args.keys:
        print("--set keys (type, default):")
        print(f"  {'seed':<34} int     0")
        for cls, prefix in ((DataConfig, "data"), (SplitConfig, "split"), (ProbeConfig, "probe")):
            for key, tname, default in describe_fields(cls, prefix):
                print(f"  {key:<34} {tname:<7} {default!r}")
        for name in METHODS.names():
            params = METHODS.get(name).default_params("cpu")
            if params is None:
                continue
            for key, tname, default in describe_fields(type(params), "method"):
                print(f"  {key:<34} {tname:<7} {default!r}   ({name}, cpu preset)")
    return 0


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def results_table(record: dict) -> str:
    """The short table a run prints at the end."""
    m = record["metrics"]
    cols = [
        ("n", "n"),
        ("balanced_accuracy", "bal.acc"),
        ("worst_group_accuracy", "worst-grp"),
        ("site_balanced_accuracy", "site-bal.acc"),
        ("mcc", "MCC"),
    ]
    lines = [f"{'split':<12}" + "".join(f"{label:>13}" for _, label in cols)]
    for split in ("val", "test_seen", "test_unseen"):
        cells = []
        for key, _ in cols:
            v = m.get(f"{split}/{key}")
            cells.append(f"{int(v):>13d}" if key == "n" and v is not None else f"{_fmt(v):>13}")
        flagged = m.get(f"{split}/n_groups_flagged") or 0
        note = f"  ({int(flagged)} small group(s) flagged)" if flagged else ""
        lines.append(f"{split:<12}" + "".join(cells) + note)
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.runner import build_config, run_one

    cfg = build_config(args.method, args.task, args.preset, args.seed, args.device, args.overrides)
    record = run_one(cfg, args.out, force=args.force, progress=not args.no_progress)
    status = "reused finished run" if record.get("reused") else f"finished in {record['duration_s']:.1f} s"
    print(f"\n{cfg.name}  (preset {cfg.preset}, encoder {cfg.probe.encoder}, device {cfg.device}): {status}")
    n_syn = record["metrics"].get("train/n_synthetic") or 0
    print(f"train: {int(record['metrics'].get('train/n_real') or 0)} real + {int(n_syn)} synthetic patches")
    print(results_table(record))
    print(f"\nrun directory: {record['run_dir']}")
    ml = record.get("mlflow", {})
    print(f"MLflow run id: {ml.get('run_id')}  (experiment {ml.get('experiment')}, store {ml.get('tracking_uri')})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from benchmark.config import ConfigError
    from benchmark.registry import METHODS, load_plugins
    from benchmark.reporting import CANONICAL_METHODS, write_report

    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    load_plugins()
    expected = sorted(set(CANONICAL_METHODS) | set(METHODS.names()))
    out = write_report(args.results, args.out, expected, n_boot=args.bootstrap, pdf=not args.no_pdf)
    if not out["sections"]:
        print(f"no run records in {args.results}: wrote a page that says so")
    for task, preset, rows, missing in out["sections"]:
        note = f"; no records for {', '.join(missing)}" if missing else ""
        print(f"{task} ({preset}): {', '.join(rows)}{note}")
    for item in out["skipped"]:
        print(f"left out record {item['name']}: {item['reason']}", file=sys.stderr)
    print(f"wrote {out['html']} ({out['records']} run records, {out['figures']} figures)")
    if out["pdf"] is not None:
        print(f"wrote {out['pdf']}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from benchmark.ui import serve_ui

    return serve_ui(args.results, args.port)


def _terminate(signum, frame) -> None:
    """SIGTERM (a scheduler or `kill`) ends a run like Ctrl-C: its MLflow run is marked KILLED, no record written."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from benchmark.config import ConfigError
    from benchmark.registry import RegistryError

    commands = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "ui": cmd_ui}
    try:
        return commands[args.command](args)
    except (ConfigError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; unfinished ones have no record and are redone", file=sys.stderr)
        return 130
    except Exception as exc:  # a user-facing failure: data, tracking, run
        if _is_user_error(exc):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


def _is_user_error(exc: BaseException) -> bool:
    """Errors whose message is the whole story (bad data, unreachable server); anything else keeps its traceback."""
    names = {"DataError", "SplitError", "RunError", "TrackingError", "TrainingError", "ReportError"}
    return any(cls.__name__ in names for cls in type(exc).__mro__)


if __name__ == "__main__":
    sys.exit(main())
