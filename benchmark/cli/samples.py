"""``python -m benchmark samples``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.common import add_overrides


def build_default_preset(device: str) -> str:
    from benchmark.core.config import default_preset
    from benchmark.orchestration.runner import resolve_device

    return default_preset(resolve_device(device))


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``samples`` subcommand's arguments."""
    sam = sub.add_parser(
        "samples",
        help="real vs CLS vs MeDi per site (the paper's Figure 4), with the colour match measured",
        description="Load the trained cls and medi models of a task from the model cache (never trains: run "
        "`run --method cls` and `run --method medi` first), draw real, class-only and MeDi patches for the largest "
        "sites of every class (including counterfactual cells: a class at a site that has none of it in training) "
        "and measure how well each reproduces the site's staining: CIELAB delta-E between the generated patches' "
        "mean colour and the site's real mean colour, and the share of patches whose colour is nearest to the "
        "conditioned site. Writes <out>/figures/samples_<task>.png and .csv and attaches the figure to the newest "
        "medi run of the task in MLflow.",
    )
    sam.add_argument("--task", default="nsclc", help="task (default nsclc)")
    sam.add_argument("--preset", default=None, help="preset the models were trained with (default: as `run`)")
    sam.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_overrides(sam, "the overrides the models were trained with, if any")
    sam.add_argument("--sites", type=int, default=3, help="sites per class (default 3)")
    sam.add_argument("--n", type=int, default=32, help="generated patches per class and site for the colour "
                     "measurement (default 32; the figure shows 4)")
    sam.add_argument("--results", type=Path, default=Path("results"), help="results folder (default ./results)")
    sam.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default ./reports)")
    sam.add_argument("--no-progress", action="store_true", help="no progress bars")
    return sam


def command(args: argparse.Namespace) -> int:
    from benchmark.core import tracking
    from benchmark.core.cache import atomic_file
    from benchmark.core.config import ConfigError
    from benchmark.core.registry import TASKS
    from benchmark.plugins import load_plugins
    from benchmark.studies import compare

    load_plugins()
    task = TASKS.canonical(args.task)  # a task file: its task's name names the figure
    TASKS.get(task)
    if args.sites < 1 or args.n < 1:
        raise ConfigError(f"--sites and --n must be >= 1, got {args.sites} and {args.n}")
    result = compare.compare(args.task, args.preset, args.device, args.overrides, args.results,
                             per_class=args.sites, n_eval=args.n, progress=not args.no_progress)
    folder = args.out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    png, csv = folder / f"samples_{task}.png", folder / f"samples_{task}.csv"
    with atomic_file(png) as fh:
        fh.write(result.png)
    with atomic_file(csv) as fh:
        fh.write(result.table.to_csv(index=False, float_format="%.4f").encode())
    t = result.table
    print(f"{'class':<8} {'site':<26} {'cell':<15} {'dE CLS':>7} {'dE MeDi':>8} {'match CLS':>10} {'match MeDi':>11}")
    for _, r in t.iterrows():
        print(f"{r['cancer_type']:<8} {r['tissue_source_site'][:26]:<26} {r['cell']:<15} {r['cls_delta_e']:>7.2f} "
              f"{r['medi_delta_e']:>8.2f} {r['cls_site_match']:>10.2f} {r['medi_site_match']:>11.2f}")
    s = result.summary
    print(f"mean delta-E to the site's colour: CLS {s['cls_delta_e']:.2f}, MeDi {s['medi_delta_e']:.2f}; "
          f"site match: CLS {s['cls_site_match']:.2f}, MeDi {s['medi_site_match']:.2f} "
          f"(chance {s['chance_site_match']:.2f} over {int(s['n_sites'])} sites)")
    nan = float("nan")
    cf_cls, cf_medi = s.get("cls_class_fidelity_counterfactual", nan), s.get("medi_class_fidelity_counterfactual", nan)
    print(f"probe on real patches: class fidelity CLS {s['cls_class_fidelity']:.2f}, MeDi "
          f"{s['medi_class_fidelity']:.2f} (counterfactual cells: CLS {cf_cls:.2f}, MeDi {cf_medi:.2f}); "
          f"site fidelity CLS {s['cls_site_fidelity']:.2f}, MeDi {s['medi_site_fidelity']:.2f}")
    print(f"wrote {png} and {csv}")
    preset = args.preset or build_default_preset(args.device)
    found = compare.latest_run_id(args.results, "medi", task, preset)
    if found:
        tracking.attach_artifact(found[0], found[1], png, "figures")
        print(f"attached to MLflow run {found[1]} ({found[0]})")
    return 0
