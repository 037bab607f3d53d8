"""The README's calibration figure: how often the verdict's tests reject a true null at 0.05, and how often they find
a planted effect, against the number of replicates; beside them the patch-level test of earlier versions. Writes
reports/calibration/calibration.png and calibration.json.

    python scripts/calibration.py [--sims 2000] [--out reports/calibration]

The simulation is evaluation.stats.simulate_paired_differences (the one tests/benchmark/test_stats.py checks): per
replicate a fresh test set of 60 patients x 8 patches that share their patient's outcome, and a difficulty (the
replicate's split and trained model) shared by the two methods; the planted effect is +0.10 accuracy. The third
panel, evaluation.stats.simulate_resplit_differences: replicates that re-split one cohort of 320 patients (120 test,
200 train, the test sets overlapping) against replicates that each draw a fresh cohort, under the null; the naive
paired t-test against Nadeau and Bengio's corrected one. A few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark.evaluation import stats  # noqa: E402

REPLICATES = (3, 4, 5, 6, 8, 10)
EFFECT = 0.10
COHORT, TEST = 320, 120  # the re-split simulation: patients in the cohort, of them in each replicate's test set


def resplit_rates(rng: np.random.Generator, n_sims: int, n_reps: int) -> dict[str, float]:
    """Under the null: naive and corrected t-test on re-splits of one cohort; naive t on fresh cohorts."""
    ratio = TEST / (COHORT - TEST)
    shared = stats.simulate_resplit_differences(rng, n_sims, n_reps, COHORT, TEST)
    fresh = stats.simulate_resplit_differences(rng, n_sims, n_reps, COHORT, TEST, independent=True)
    zero = np.zeros(n_reps)
    return {
        "naive_resplit": float(np.mean([stats.paired_comparison(d, zero, "m").p_t < 0.05 for d in shared])),
        "corrected_resplit": float(np.mean([stats.paired_comparison(d, zero, "m", resplit_ratio=ratio).p_t < 0.05
                                            for d in shared])),
        "naive_independent": float(np.mean([stats.paired_comparison(d, zero, "m").p_t < 0.05 for d in fresh])),
    }


def rates(rng: np.random.Generator, n_sims: int, n_reps: int, effect: float) -> dict[str, float]:
    """Share of simulations in which each test rejects at 0.05."""
    diffs = stats.simulate_paired_differences(rng, n_sims, n_reps, effect)
    comps = [stats.paired_comparison(d, np.zeros(n_reps), "accuracy") for d in diffs]
    return {"t": float(np.mean([c.p_t < 0.05 for c in comps])),
            "signflip": float(np.mean([c.p_signflip < 0.05 for c in comps]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=2000, help="simulations per point under the null (default 2000)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "calibration")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(2026)
    rows = []
    for n in REPLICATES:
        null = rates(rng, args.sims, n, 0.0)
        power = rates(rng, args.sims // 2, n, EFFECT)
        resplit = resplit_rates(rng, args.sims // 2, n)
        rows.append({"replicates": n, "fpr_t": null["t"], "fpr_signflip": null["signflip"], "power_t": power["t"],
                     "power_signflip": power["signflip"], **{f"fpr_{k}": v for k, v in resplit.items()}})
        print(f"   re-splits of one cohort: naive t {resplit['naive_resplit']:.3f}, corrected "
              f"{resplit['corrected_resplit']:.3f}; fresh cohorts, naive t {resplit['naive_independent']:.3f}")
        print(f"{n:2d} replicates: false positives t {null['t']:.3f}, sign-flip {null['signflip']:.3f}; "
              f"power at +{EFFECT:.2f}: t {power['t']:.3f}, sign-flip {power['signflip']:.3f}")
    n_old = max(200, args.sims // 10)
    old = np.mean([stats.patch_bootstrap_rejects(
        rng, *(stats.simulate_clustered_correctness(rng, 2, 60, 8, np.array([0.75, 0.75]))), n_resamples=500)
        for _ in range(n_old)])
    print(f"earlier versions' patch bootstrap, one test set of 60 patients x 8 patches: false positives {old:.3f}")
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=10"],
                            capture_output=True, text=True).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"commit": commit, "command": "python scripts/calibration.py " + " ".join(argv or sys.argv[1:]),
               "simulations_null": args.sims, "simulations_power": args.sims // 2, "effect": EFFECT,
               "patients": 60, "patches_per_patient": 8, "rows": rows,
               "patch_bootstrap_fpr": float(old), "patch_bootstrap_simulations": n_old,
               "resplit": {"cohort_patients": COHORT, "test_patients": TEST, "simulations": args.sims // 2,
                           "n_test_over_n_train": TEST / (COHORT - TEST)}}
    (args.out / "calibration.json").write_text(json.dumps(summary, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reps = [r["replicates"] for r in rows]
    band = 3 * math.sqrt(0.05 * 0.95 / args.sims)
    fig, (left, right, third) = plt.subplots(1, 3, figsize=(14, 3.8))
    left.axhspan(0, 0.05 + band, color="#e8f2e8", label="0.05 + 3 Monte-Carlo SE")
    left.axhline(0.05, color="#444", lw=0.8)
    left.plot(reps, [r["fpr_t"] for r in rows], "o-", color="#1f4e8c", label="paired t-test (default)")
    left.plot(reps, [r["fpr_signflip"] for r in rows], "s--", color="#0a6b2c", label="exact sign-flip test")
    left.plot([reps[0]], [old], "X", ms=10, color="#b3261e",
              label=f"earlier patch-level bootstrap, one test set ({old:.2f})")
    left.set_ylim(0, max(0.6, old + 0.05))
    left.set_xlabel("replicates")
    left.set_ylabel("rejections at 0.05 under the null")
    left.set_title("False positives (two methods from one distribution)", loc="left", fontsize=10)
    left.legend(fontsize=7.5, loc="upper right")
    right.plot(reps, [r["power_t"] for r in rows], "o-", color="#1f4e8c", label="paired t-test")
    right.plot(reps, [r["power_signflip"] for r in rows], "s--", color="#0a6b2c", label="exact sign-flip test")
    right.set_ylim(0, 1)
    right.set_xlabel("replicates")
    right.set_ylabel("rejections at 0.05")
    right.set_title(f"Power at a planted +{EFFECT:.2f} accuracy", loc="left", fontsize=10)
    right.legend(fontsize=7.5, loc="lower right")
    band2 = 3 * math.sqrt(0.05 * 0.95 / (args.sims // 2))
    third.axhspan(0, 0.05 + band2, color="#e8f2e8", label="0.05 + 3 Monte-Carlo SE")
    third.axhline(0.05, color="#444", lw=0.8)
    third.plot(reps, [r["fpr_naive_resplit"] for r in rows], "o-", color="#b3261e",
               label="re-splits of one cohort: naive paired t")
    third.plot(reps, [r["fpr_corrected_resplit"] for r in rows], "s-", color="#1f4e8c",
               label="re-splits of one cohort: corrected (Nadeau-Bengio)")
    third.plot(reps, [r["fpr_naive_independent"] for r in rows], "^--", color="#0a6b2c",
               label="a fresh cohort per replicate: paired t")
    third.set_ylim(0, max(0.6, max(r["fpr_naive_resplit"] for r in rows) + 0.05))
    third.set_xlabel("replicates")
    third.set_ylabel("rejections at 0.05 under the null")
    third.set_title(f"Overlapping test sets ({TEST} of {COHORT} patients)", loc="left", fontsize=10)
    third.legend(fontsize=7, loc="upper left")
    for ax in (left, right, third):
        ax.grid(color="#e6e6e6", lw=0.6)
    fig.suptitle(f"60 patients x 8 patches per test set, patient-clustered outcomes; {args.sims} simulations per "
                 f"null point ({commit})", fontsize=8, x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(args.out / "calibration.png", dpi=110)
    print(f"wrote {args.out / 'calibration.png'} and calibration.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
