"""``python -m benchmark report``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``report`` subcommand's arguments."""
    rep = sub.add_parser(
        "report",
        help="write the leaderboards (HTML and PDF) from the run records",
        description="Build <out>/leaderboard.html (self-contained, figures embedded) and <out>/leaderboard.pdf from "
        "the run records under --results (results.jsonl and runs/*/*/*/record.json; MLflow is not needed). Per task, "
        "first the verdict: each method's paired difference to none (and medi - cls) over replicates, with 95% "
        "intervals; the declared endpoints (--endpoints) tested with Holm over their family across tasks, the rest "
        "exploratory; each with its minimum detectable effect; as a forest plot, a table and quotable sentences; "
        "then methods x metrics on test_unseen and test_seen (mean [95% t interval] over replicates), FID per cancer "
        "type, per-group heatmaps, sample grids and accuracy against the synthetic ratio. <out>/leaderboard.md "
        "holds the verdicts and test_unseen tables in Markdown, for a README or a paper.",
    )
    rep.add_argument("--results", type=Path, action="append",
                     help="results folder (default ./results); repeat it to report several folders together, for "
                     "example two frozen grids")
    rep.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default ./reports)")
    rep.add_argument("--test", choices=("t", "signflip"), default="t",
                     help="the paired test over replicates the verdict uses: t (paired t-test, default; assumes "
                     "roughly normal differences) or signflip (exact sign-flip permutation test; assumption-free, "
                     "needs >= 1 + log2(m / 0.05) replicates in a Holm family of m: 6 alone, 8 in a family of 5, "
                     "9 in one of 7). On one re-split cohort the corrected resampled t-test is used whatever this "
                     "says")
    rep.add_argument("--endpoints", type=Path, default=None,
                     help="the protocol file (TOML) naming the primary comparisons and the controls; default: the "
                     "one the sweep declared in the results folder, else benchmark/endpoints.toml")
    rep.add_argument("--power", type=float, default=None, metavar="EFFECT",
                     help="instead of the report: how many replicates each declared endpoint needs to detect a true "
                     "difference of EFFECT with 80%% power, from the records' observed variance (a pilot)")
    rep.add_argument("--no-pdf", action="store_true", help="write only the HTML page")
    rep.add_argument("--mixed-code", action="store_true",
                     help="report a method whose records come from different versions of the code (default: an "
                          "error; the page then flags it)")
    return rep


def command(args: argparse.Namespace) -> int:
    from benchmark.plugins import load_plugins
    from benchmark.report import CANONICAL_METHODS, write_report

    load_plugins()
    if args.power is not None:
        from benchmark.report import power_plan

        for line in power_plan(args.results or [Path("results")], args.power, args.test, args.endpoints):
            print(line)
        return 0
    # the benchmark's own methods are expected in every task; a plug-in's appear where they have records
    out = write_report(args.results or [Path("results")], args.out, CANONICAL_METHODS, test=args.test,
                       pdf=not args.no_pdf, allow_mixed_code=args.mixed_code, endpoints_file=args.endpoints)
    for task, preset, rows, missing in out["sections"]:
        note = f"; no records for {', '.join(missing)}" if missing else ""
        print(f"{task} ({preset}): {', '.join(rows)}{note}")
    for item in out["skipped"]:
        print(f"left out record {item['name']}: {item['reason']}", file=sys.stderr)
    print(f"wrote {out['html']} ({out['records']} run records, {out['figures']} figures)")
    if out["pdf"] is not None:
        print(f"wrote {out['pdf']}")
    return 0
