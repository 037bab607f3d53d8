"""The README's multi-process figure: one process against two under accelerate's launcher, the two-process launch
SIGKILLed right after a checkpoint and launched again. Writes reports/multiprocess/loss_curves.png and summary.json.

    python scripts/multiprocess_curves.py [--steps 120] [--out /tmp/multiprocess]

Uses tests/benchmark/multiprocess_entry.py (the CLI with its checkpoint writes noted, and the kill) as the entry
point of the launch. A few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def losses(out: Path) -> list[tuple[str, list[int], list[float]]]:
    """(status, steps, train/loss) of every MLflow run in ``out``, oldest first."""
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medibench-nsclc")
    rows = []
    for run in sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time):
        history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
        rows.append((run.info.status, [m.step for m in history], [m.value for m in history]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", type=Path, default=Path("/tmp/multiprocess"))
    args = parser.parse_args()
    half = args.steps // 2
    sets = [f"method.steps={args.steps}", f"method.checkpoint_every={half}", "method.preview_every=0",
            "method.sample_batch_size=16"]
    cli = ["run", "--method", "medi", "--task", "nsclc", "--preset", "smoke", "--no-progress", "--set", *sets]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    one, two = args.out / "one", args.out / "two"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MP_NOTES": str(args.out / "notes.jsonl")}
    env.pop("MLFLOW_TRACKING_URI", None)
    entry = str(ROOT / "tests" / "benchmark" / "multiprocess_entry.py")
    subprocess.run([sys.executable, "-m", "benchmark", *cli, "--out", str(one)], cwd=ROOT, env=env, check=True)
    killed = subprocess.run([*LAUNCH, entry, *cli, "--out", str(two)], cwd=ROOT,
                            env={**env, "MP_KILL_AFTER": str(half)}, start_new_session=True)
    assert killed.returncode != 0, "the first launch was to be killed"
    subprocess.run([*LAUNCH, entry, *cli, "--out", str(two)], cwd=ROOT, env=env, check=True)

    from safetensors.numpy import load_file

    ref_runs, two_runs = losses(one), losses(two)
    ref = dict(zip(ref_runs[0][1], ref_runs[0][2], strict=True))
    got = {s: v for _, steps, values in two_runs for s, v in zip(steps, values, strict=True)}
    rel = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
    w1, w2 = (load_file(glob.glob(str(o / "cache/models/diffusion/*/*.safetensors"))[0]) for o in (one, two))
    weight_diff = max(float(np.abs(w1[k] - w2[k]).max()) for k in w1)
    r1, r2 = (json.loads((o / "results.jsonl").read_text().splitlines()[-1]) for o in (one, two))
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    summary = {
        "command": f"python scripts/multiprocess_curves.py --steps {args.steps}",
        "git_commit": commit,
        "settings": f"smoke preset, medi, nsclc, seed 0, --set {' '.join(sets)}; launch killed after step {half}",
        "logged_points": len(ref),
        "max_relative_loss_difference": rel,
        "max_weight_difference": weight_diff,
        "test_unseen_balanced_accuracy": {"one_process": r1["metrics"]["test_unseen/balanced_accuracy"],
                                          "two_processes": r2["metrics"]["test_unseen/balanced_accuracy"]},
        "fid_fbank_mean": {"one_process": r1["metrics"].get("fid/fbank/mean"),
                           "two_processes": r2["metrics"].get("fid/fbank/mean")},
        "two_process_runs": [{"status": s, "first_step": x[0], "last_step": x[-1]} for s, x, _ in two_runs],
    }
    dest = ROOT / "reports" / "multiprocess"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(ref_runs[0][1], ref_runs[0][2], color="0.6", lw=4, label="1 process")
    for status, steps, values in two_runs:
        killed_run = status == "KILLED"
        ax.plot(steps, values, color="tab:red" if killed_run else "tab:blue", lw=1.3,
                label=f"2 processes, {'killed after' if killed_run else 'resumed from'} checkpoint {half}")
    ax.axvline(half, color="0.3", ls=":", lw=1)
    ax.set_xlabel("training step (global batch 16)")
    ax.set_ylabel("training loss (min-SNR weighted)")
    ax.set_title(f"medi, nsclc, smoke preset: 2 processes (gloo) vs 1, commit {commit}\nlargest relative loss "
                 f"difference {rel:.1e}, largest weight difference {weight_diff:.1e}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest / "loss_curves.png", dpi=120)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
