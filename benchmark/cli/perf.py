"""``python -m benchmark perf``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.common import EXIT_FAILED
from benchmark.studies.perf import STAGES as PERF_STAGES


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``perf`` subcommand's arguments."""
    pf = sub.add_parser(
        "perf",
        help="measure every stage against a named reference in the same run; JSON + markdown table",
        description="Speed of every stage against a straightforward reference, measured in the same run (reference, "
        "ours, reference again) in a fresh process per stage: data generation and loading, diffusion training "
        "(against a plain fp32 diffusers loop), sampling (DPM-Solver++ against DDIM-50, with FIDs when a trained "
        "nsclc medi model is in --results), time to quality (this preset's diffusion recipe against the reference "
        "recipe: training time to the reference's final sample quality, with a figure of quality against time; "
        "about 30 min on the cpu preset), embedding, FID features, CycleGAN training, and the end-to-end run of "
        "every method with peak memory, and scale (memory and speed against cohort size: generated TCGA-UT folders of "
        "N, 4N and 16N real H&E patches at 128 px, run --method none, stain_norm and 50 training steps of medi "
        "on the mapped decode cache against data.in_memory=true, and two processes under accelerate launch against "
        "one; about 25 min on the cpu preset, with a figure). Writes --out (JSON) and the same name with .md (the "
        "table the README quotes). Run it on an otherwise idle machine: other processes distort every figure.",
    )
    pf.add_argument("--preset", default="smoke", choices=["smoke", "cpu"], help="sizes to measure (default smoke)")
    pf.add_argument("--stages", default="all", help="'all' or a comma-separated list of: " + ", ".join(PERF_STAGES))
    pf.add_argument("--methods", default="all", help="methods of the e2e stage and of time_to_quality (which "
                    "measures medi, cls and cyclegan among them; default all)")
    pf.add_argument("--threads", type=int, default=0, help="torch threads per stage (default: all cores)")
    pf.add_argument("--results", type=Path, default=Path("results"),
                    help="where to look for a trained nsclc medi model for the sampler FIDs (default ./results)")
    pf.add_argument("--out", type=Path, default=None, help="JSON output (default reports/perf_<preset>.json)")
    return pf


def command(args: argparse.Namespace) -> int:
    from benchmark.core.registry import METHODS
    from benchmark.core.threads import usable_cores
    from benchmark.orchestration.sweep import parse_names
    from benchmark.plugins import load_plugins
    from benchmark.studies import perf

    load_plugins()
    stages = parse_names(args.stages, list(perf.STAGES), "stages")
    methods = parse_names(args.methods, METHODS.names(), "methods")
    if "none" not in methods:
        methods.insert(0, "none")  # the e2e reference
    threads = args.threads or usable_cores()
    print(f"perf: preset {args.preset}, stages {', '.join(stages)}, {threads} thread(s); keep the machine idle")
    record = perf.run_perf(args.preset, stages, args.results, methods, threads)
    out = args.out or Path("reports") / f"perf_{args.preset}.json"
    json_path, md_path = perf.write_outputs(record, out)
    print()
    print(record["markdown"])
    print(f"\nwrote {json_path} and {md_path} ({record['duration_s'] / 60:.1f} min)")
    return EXIT_FAILED if record["errors"] else 0
