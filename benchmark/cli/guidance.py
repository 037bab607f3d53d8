"""``python -m benchmark guidance``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.common import add_overrides
from benchmark.cli.samples import build_default_preset


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``guidance`` subcommand's arguments."""
    gd = sub.add_parser(
        "guidance",
        help="the counterfactual-guidance frontier: class vs site fidelity of MeDi's unseen combinations",
        description="Train one MeDi model per condition-dropout setting (reused from the model cache when it "
        "exists), sample the combinations the training split lacks under every guidance setting (unguided, joint "
        "classifier-free guidance, composed per-attribute guidance: a class weight and a metadata weight), and judge "
        "the patches against true patches of the same cells from the embedded data's generator: class fidelity, site "
        "fidelity, FID. The judge uses validation draws of true patches, never the ones a run reports. Writes "
        "<out>/frontier.csv (one row per point, as each finishes: the same command resumes, and a wider grid adds "
        "its new points to the same file), frontier.md, frontier.png (every point of the file) and samples.png (true "
        "patches, today's medi and the chosen point on the same unseen cells). The chosen "
        "point: the lowest FID to the true patches among the settings that keep both the class and the site "
        "fidelity of the unguided model without dropout (today's medi).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gd.add_argument("--task", default="nsclc", help="task with ground truth (embedded data; default nsclc)")
    gd.add_argument("--preset", default=None, help="preset (default: as `run`)")
    gd.add_argument("--seed", type=int, default=0, help="replicate seed of the cohort, split and model (default 0)")
    gd.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    gd.add_argument("--dropouts", default="0:0,0.1:0.1,0.25:0.25",
                    help="CLASS:META condition-dropout rates, one model each (default 0:0,0.1:0.1,0.25:0.25; 0:0 is "
                    "today's medi, sampled unguided)")
    gd.add_argument("--class-weights", default="1,2,3,4", help="composed guidance class weights (default 1,2,3,4)")
    gd.add_argument("--meta-weights", default="0.5,1", help="composed guidance metadata weights (default 0.5,1)")
    gd.add_argument("--joint-scales", default="2", help="joint guidance scales besides 1 (default 2)")
    gd.add_argument("--per-class", type=int, default=128, help="generated patches per cancer type per point "
                    "(default 128)")
    add_overrides(gd, "fixed config overrides for every model, e.g. method.steps=3000")
    gd.add_argument("--results", type=Path, default=Path("results"),
                    help="results folder whose model cache trains and serves the models (default ./results)")
    gd.add_argument("--out", type=Path, default=None,
                    help="output folder (default reports/guidance/<task>_<preset>)")
    gd.add_argument("--no-progress", action="store_true", help="no progress bars")
    return gd


def command(args: argparse.Namespace) -> int:
    from benchmark.core.cache import atomic_write_bytes, atomic_write_text
    from benchmark.core.config import ConfigError
    from benchmark.studies import guidance

    if args.per_class < 2:
        raise ConfigError(f"--per-class must be >= 2, got {args.per_class}")
    points = guidance.grid(guidance.parse_dropouts(args.dropouts),
                           guidance.parse_floats(args.class_weights, "--class-weights"),
                           guidance.parse_floats(args.meta_weights, "--meta-weights"),
                           guidance.parse_floats(args.joint_scales, "--joint-scales"))
    preset = args.preset or build_default_preset(args.device)
    out = args.out or Path("reports") / "guidance" / f"{args.task}_{preset}"
    table = guidance.run_frontier(args.task, preset, args.device, args.overrides, args.results, points, out,
                                  args.per_class, args.seed, progress=not args.no_progress)
    title = f"Counterfactual-guidance frontier: {args.task}, {preset} preset, seed {args.seed}"
    atomic_write_text(out / "frontier.md", guidance.markdown(table, title))
    atomic_write_bytes(out / "frontier.png", guidance.frontier_png(table, title))
    samples = guidance.samples_png(args.task, preset, args.device, args.overrides, args.results, table, args.seed)
    if samples is not None:
        atomic_write_bytes(out / "samples.png", samples)
    print(guidance.markdown(table, title))
    print(f"wrote {out / 'frontier.csv'}, frontier.md and frontier.png")
    return 0
