"""``python -m benchmark run``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from benchmark.cli.common import add_overrides

RUN_EPILOG = """\
examples:
  python -m benchmark run --method none --task nsclc --preset smoke
  python -m benchmark run --method medi --task nsclc --seed 1
  python -m benchmark run --method none --task uterine --set data.shortcut_strength=0 probe.C=0.1
  python -m benchmark run --method none --task nsclc --set data.root=/data/TCGA-UT data.metadata=clinical.csv
  python -m benchmark run --method none --task my_cohort/task.toml
  # several GPUs (or CPU processes): medi, cls and cyclegan share training and sampling, the main process reports
  accelerate launch --multi_gpu --num_processes 2 -m benchmark run --method medi --task nsclc --preset gpu

--task FILE.toml: a task of your own (any --task ending in .toml or holding a path separator is a file), with
  name = "camelyon17", classes = ["normal", "tumor"] (labels of the manifest), heldout_keys and group_columns
  (manifest columns), optionally manifest = "cohort.csv" (relative to the file; else --set data.manifest=FILE),
  heldout_fraction, val_fraction, test_seen_fraction, guard. The manifest has one row per image: path, label,
  tissue_source_site, optionally patient_id, slide_id, race, gender, age_at_index and any other columns.

results: <out>/runs/<task>/<method>/<method>-<task>-s<seed>-<hash>/record.json, one line per finished run in
<out>/results.jsonl, and an MLflow run (local store <out>/mlflow.db, or $MLFLOW_TRACKING_URI)."""


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def results_table(record: dict) -> str:
    """The short table a run prints at the end: each metric with its 95% interval from a bootstrap over patients."""
    m = record["metrics"]
    cols = [
        ("balanced_accuracy", "balanced acc."),
        ("worst_group_accuracy", "worst group"),
        ("worst20_group_accuracy", "worst 20% groups"),
        ("shortcut_gap", "shortcut gap"),
    ]

    def cell(split: str, key: str) -> str:
        value, low, high = (m.get(f"{split}/{key}{s}") for s in ("", "/ci_low", "/ci_high"))
        if value is None:
            return "n/a"
        return _fmt(value) + (f" [{_fmt(low)}, {_fmt(high)}]" if low is not None and high is not None else "")

    width = 25  # "-0.167 [-0.428, -0.147]" is 23 characters: two spaces between columns at least
    lines = [f"{'split':<12}{'n':>6}" + "".join(f"{label:>{width}}" for _, label in cols)]
    for split in ("val", "test_seen", "test_unseen"):
        n = m.get(f"{split}/n")
        cells = "".join(f"{cell(split, key):>{width}}" for key, _ in cols)
        flagged = m.get(f"{split}/n_groups_flagged") or 0
        note = f"  ({int(flagged)} small group(s) left out)" if flagged else ""
        lines.append(f"{split:<12}{int(n or 0):>6}" + cells + note)
    lines.append("[95% interval over test patients; none for the worst group: a bootstrap of a minimum is not a valid "
                 "interval]; shortcut gap: balanced accuracy on patches whose class their site mostly sent minus on "
                 "the others (0 = no shortcut; n/a with fewer than probe.min_shortcut_patients patients on a side)")
    return "\n".join(lines)


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``run`` subcommand's arguments."""
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
    run.add_argument("--task", required=True, help="task (see `list`), e.g. nsclc, uterine, heldout, or a task file "
                     "FILE.toml defining your own cohort's task (below)")
    run.add_argument(
        "--preset",
        default=None,
        help="size of everything: smoke (seconds), cpu (default without a GPU), gpu (default with one), paper",
    )
    run.add_argument("--seed", type=int, default=0,
                     help="replicate seed (default 0): the cohort (a fresh one per seed on the embedded data), the "
                     "data split, the generative model's training, sampling and the probe; pin one source with --set "
                     "seeds.split=N (also seeds.cohort, seeds.model, seeds.sampling, seeds.probe)")
    run.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    add_overrides(run, "override config fields, e.g. data.image_size=64 probe.C=0.1 method.lr=1e-4 "
                  "(keys: `list --keys`)")
    run.add_argument("--out", type=Path, default=Path("results"), help="results folder (default ./results)")
    run.add_argument("--force", action="store_true", help="recompute even if a finished run exists")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in logs)")
    return run


def command(args: argparse.Namespace) -> int:
    from benchmark.orchestration.runner import build_config, run_one

    cfg = build_config(args.method, args.task, args.preset, args.seed, args.device, args.overrides)
    record = run_one(cfg, args.out, force=args.force, progress=not args.no_progress)
    if record is None:  # another process than the main one of ``accelerate launch``: the main one reports
        return 0
    status = "reused finished run" if record.get("reused") else f"finished in {record['duration_s']:.1f} s"
    print(f"\n{cfg.name}  (preset {cfg.preset}, encoder {cfg.probe.encoder}, device {cfg.device}): {status}")
    n_syn = record["metrics"].get("train/n_synthetic") or 0
    print(f"train: {int(record['metrics'].get('train/n_real') or 0)} real + {int(n_syn)} synthetic patches")
    print(results_table(record))
    if cfg.preset == "smoke":
        print("smoke preset: tiny data and models that check the path end to end; these numbers (and their small-"
              "sample FIDs) are not results. The cpu preset (the default without a GPU) gives results.")
    print(f"\nrun directory: {record['run_dir']}")
    ml = record.get("mlflow", {})
    print(f"MLflow run id: {ml.get('run_id')}  (experiment {ml.get('experiment')}, store {ml.get('tracking_uri')})")
    return 0
