"""Command line: ``python -m benchmark {run,list,report,sweep,tune,samples,perf,ui} ...`` (also ``medibench``).

Only argument parsing and printing live here; the work is in runner.py and friends. Heavy libraries are imported
inside the commands, so ``--help`` and ``list`` stay fast.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import sys
import time
from pathlib import Path

from benchmark.perf import STAGES as PERF_STAGES

EXIT_USAGE = 2  # a bad name, preset, device or --set key
EXIT_FAILED = 1  # bad data, an unreachable tracking server, a failed run
# the machine, not the code: a full disk, quota or file-size limit, no permission, a read-only file system
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EPERM", "EROFS") if hasattr(errno, n)
)

DESCRIPTION = """\
MeDiBench: how well do augmentation strategies protect histopathology classifiers from shortcut learning
on hospital (tissue source site) and demographic metadata?

Every run trains nothing but the method's own model; the downstream evaluation (frozen encoder + linear probe,
balanced / worst-group / site-averaged accuracy on val, test_seen and test_unseen) is the same for all methods.
Without --set data.root=... (TCGA-UT) or data.manifest=... (a CSV of your own cohort), runs use the embedded
TCGA-like generator: no download needed. A task may be a TOML file: --task path/to/task.toml."""

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


SWEEP_EPILOG = """\
examples:
  python -m benchmark sweep --preset smoke --dry-run
  python -m benchmark sweep --methods all --tasks all --seeds 3 --preset cpu
  python -m benchmark sweep --methods none,medi --tasks nsclc --seeds 0,1,2 --workers 2
  # a SLURM cluster: one array job per sweep, one GPU per job, at most 8 at once; wait with a progress bar
  python -m benchmark sweep --preset gpu --launcher slurm --slurm-partition gpu --slurm-gpus 1 \\
      --slurm-cpus 8 --slurm-mem 32 --slurm-time 600 --slurm-parallel 8
  python -m benchmark sweep --preset gpu --launcher slurm ... --no-wait   # submit and return
  python -m benchmark sweep --preset gpu --status     # each job: record, SLURM job and state, log of a failed one"""


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE ...`` (repeatable), parsed later with each field's declared type."""
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=help)


def add_grid(parser: argparse.ArgumentParser, overrides_help: str) -> None:
    """The methods x tasks x seeds grid of ``sweep`` and ``freeze`` (see :func:`plan_grid`)."""
    parser.add_argument("--methods", default="all", help="'all' or a comma-separated list (default all)")
    parser.add_argument("--tasks", default="all", help="'all' (the registered tasks) or a comma-separated list; an "
                        "entry may be a task file (FILE.toml; default all)")
    parser.add_argument("--seeds", default="3", help="a count (3 -> seeds 0,1,2) or a list (0,5,7); default 3")
    parser.add_argument("--preset", default=None, help="smoke, cpu (default without a GPU), gpu or paper")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_overrides(parser, overrides_help)


def plan_grid(args: argparse.Namespace, results_dir: Path) -> tuple[list[str], list[str], list[int], list]:
    """(methods, tasks, seeds, jobs) of the grid given by :func:`add_grid`'s arguments."""
    from benchmark import sweep
    from benchmark.registry import METHODS, load_plugins

    load_plugins()
    methods = sweep.parse_names(args.methods, METHODS.names(), "methods")
    tasks = parse_tasks(args.tasks)
    seeds = sweep.parse_seeds(args.seeds)
    jobs = sweep.plan_jobs(methods, tasks, seeds, args.preset, args.device, args.overrides, results_dir)
    return methods, tasks, seeds, jobs


def parse_tasks(value: str) -> list[str]:
    """``--tasks``: ``all`` (the registered tasks) or a comma-separated list of task names and task files. A task file
    is read here (a malformed one is a ConfigError naming it) and kept as given, so that a worker process (which
    reads it again) gets the same task; two entries for one task count once."""
    from benchmark import sweep
    from benchmark.registry import TASKS

    if value.strip() == "all":
        return sweep.parse_names(value, TASKS.names(), "tasks")
    items = [v.strip() for v in value.split(",") if v.strip()]
    names = [TASKS.canonical(item) for item in items]
    sweep.parse_names(",".join(names), TASKS.names(), "tasks")  # unknown names: one error listing the choices
    first = {}
    for item, name in zip(items, names, strict=True):
        first.setdefault(name, item)
    return list(first.values())


def add_launcher(parser: argparse.ArgumentParser, what: str) -> None:
    """``--launcher local|slurm``, ``--workers``, ``--no-wait`` and the SLURM resources (:func:`slurm_options`)."""
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help=f"where the {what} run: local (this machine, default) or slurm (a job array through "
                        "submitit)")
    parser.add_argument("--workers", type=int, default=1,
                        help="local: parallel processes, each with cores/workers threads; slurm (tune only): "
                        "SLURM jobs (default 1)")
    parser.add_argument("--no-wait", action="store_true", help="slurm: submit and return (default: wait, with a "
                        "progress bar)")
    group = parser.add_argument_group("SLURM resources, per job (--launcher slurm)")
    group.add_argument("--slurm-partition", default=None, metavar="NAME")
    group.add_argument("--slurm-account", default=None, metavar="NAME")
    group.add_argument("--slurm-qos", default=None, metavar="NAME")
    group.add_argument("--slurm-gpus", type=int, default=None, metavar="N", help="GPUs per job")
    group.add_argument("--slurm-cpus", type=int, default=None, metavar="N",
                       help="CPUs per job (its torch and BLAS threads follow)")
    group.add_argument("--slurm-mem", type=float, default=None, metavar="GB", help="memory per job")
    group.add_argument("--slurm-time", type=int, default=240, metavar="MIN",
                       help="time limit per job, minutes (default 240); a job at its limit is requeued and resumes "
                       "from its training checkpoint (up to 3 times)")
    group.add_argument("--slurm-parallel", type=int, default=None, metavar="N",
                       help="at most N jobs of the array running at once")
    group.add_argument("--slurm-option", dest="slurm_options", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, repeatable (e.g. constraint=a100, exclusive=)")
    group.add_argument("--slurm-setup", action="append", default=[], metavar="COMMAND",
                       help="a shell line run before each job, repeatable (e.g. 'module load cuda')")


def slurm_options(args: argparse.Namespace):
    """The ``--slurm-*`` arguments as :class:`benchmark.launchers.SlurmOptions` (checked)."""
    from benchmark.config import ConfigError
    from benchmark.launchers import SlurmOptions

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.no_wait and args.launcher != "slurm":
        raise ConfigError("--no-wait is for --launcher slurm (a local sweep runs in this process)")
    options = SlurmOptions(
        partition=args.slurm_partition, account=args.slurm_account, qos=args.slurm_qos, gpus=args.slurm_gpus,
        cpus=args.slurm_cpus, mem_gb=args.slurm_mem, time_min=args.slurm_time, parallel=args.slurm_parallel,
        options=tuple(args.slurm_options), setup=tuple(args.slurm_setup),
    )
    options.check()
    return options


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

    lst = sub.add_parser(
        "list",
        help="list methods, tasks, encoders and presets",
        description="List every registered method, task, encoder and preset with a one-line description.",
    )
    lst.add_argument("--keys", action="store_true",
                     help="also list every --set key with its type, its value in --preset and what it means")
    lst.add_argument("--preset", default="cpu", help="the preset whose values --keys shows (default cpu)")

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

    sw = sub.add_parser(
        "sweep",
        help="run every method x task x seed (resumable, parallel, several machines)",
        description="Run a grid of methods x tasks x seeds through the same runner as `run`. Jobs are "
        "content-addressed: a finished run (its record exists) is skipped, so an interrupted sweep is resumed by "
        "running the same command again; a job whose run another process is computing (another sweep, a SLURM "
        "job, another machine on a shared file system: the run's lock says so) is not run twice. --launcher local "
        "(default): --workers processes on this machine, the cores divided between them. --launcher slurm: the "
        "unfinished jobs go to SLURM as a job array through submitit, with the --slurm-* resources, one log file per "
        "job under <out>/slurm/; jobs that reuse a model another job trains (seeds.cohort, seeds.split and "
        "seeds.model pinned) start after it. Seed 0 of every method and task comes first, so parallel workers train "
        "different generative models.",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_grid(sw, "config overrides applied to every job (keys: `list --keys`)")  # --tasks may list task files
    add_launcher(sw, "jobs")
    sw.add_argument("--status", action="store_true",
                    help="each job's state: its record, its SLURM job and SLURM state, the log of a failed one")
    sw.add_argument("--dry-run", action="store_true", help="list the jobs and which are done; run nothing")
    sw.add_argument("--out", type=Path, default=Path("results"), help="results folder (default ./results)")
    sw.add_argument("--endpoints", type=Path, default=None,
                    help="the protocol file (TOML) the report will test, declared into --out before the first job "
                    "(default benchmark/endpoints.toml); a results folder keeps the protocol it started with")
    sw.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in logs)")

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

    fz = sub.add_parser(
        "freeze",
        help="copy a finished sweep's records into results/<date>_<commit>/ (for the repository)",
        description="Take the same grid as `sweep` (the same content-addressed jobs), check every job has finished, "
        "and copy each run's small files (record, config, per-group and confusion tables, predictions; a cut-down "
        "samples.npz for the lowest seed) with results.jsonl and a MANIFEST.json (command, commits, host, run "
        "durations, model training times, SHA-256 of every file) into a new folder. `report --results <folder>` "
        "renders the leaderboard from it alone. An existing folder is never overwritten.",
        epilog="example:\n  python -m benchmark freeze --methods all --tasks all --seeds 3 --preset cpu\n"
        "  python -m benchmark report --results results/2026-11-22_0123456789",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_grid(fz, "the overrides the sweep ran with, if any")
    fz.add_argument("--results", type=Path, default=Path("results"), help="results folder (default ./results)")
    fz.add_argument("--dest", type=Path, default=None,
                    help="new folder (default <results>/<UTC date>_<commit>)")
    fz.add_argument("--allow-dirty", action="store_true",
                    help="freeze records of uncommitted or mixed code too (marked in the manifest); by default "
                    "frozen results must come from one clean commit")

    pf = sub.add_parser(
        "perf",
        help="measure every stage against a named reference in the same run; JSON + markdown table",
        description="Speed of every stage against a straightforward reference, measured in the same run (reference, "
        "ours, reference again) in a fresh process per stage: data generation and loading, diffusion training "
        "(against a plain fp32 diffusers loop), sampling (DPM-Solver++ against DDIM-50, with FIDs when a trained "
        "nsclc medi model is in --results), time to quality (this preset's diffusion recipe against the reference "
        "recipe: training time to the reference's final sample quality, with a figure of quality against time; "
        "about 30 min on the cpu preset), embedding, FID features, CycleGAN training, and the end-to-end run of "
        "every method with peak memory. Writes --out (JSON) and the same name with .md (the table the README "
        "quotes). Run it on an otherwise idle machine: other processes distort every figure.",
    )
    pf.add_argument("--preset", default="smoke", choices=["smoke", "cpu"], help="sizes to measure (default smoke)")
    pf.add_argument("--stages", default="all", help="'all' or a comma-separated list of: " + ", ".join(PERF_STAGES))
    pf.add_argument("--methods", default="all", help="methods of the e2e stage and of time_to_quality (which "
                    "measures medi, cls and cyclegan among them; default all)")
    pf.add_argument("--threads", type=int, default=0, help="torch threads per stage (default: all cores)")
    pf.add_argument("--results", type=Path, default=Path("results"),
                    help="where to look for a trained nsclc medi model for the sampler FIDs (default ./results)")
    pf.add_argument("--out", type=Path, default=None, help="JSON output (default reports/perf_<preset>.json)")

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
    from benchmark.config import PRESETS, ConfigError
    from benchmark.registry import ENCODERS, METHODS, TASKS, did_you_mean, load_plugins

    load_plugins()
    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}{did_you_mean(args.preset, PRESETS)}; choose from: "
                          f"{', '.join(PRESETS)}")
    for title, reg in (("methods", METHODS), ("tasks", TASKS), ("encoders", ENCODERS)):
        print(f"{title}:")
        for name in reg.names():
            print(f"  {name:<12} {reg.description(name)}")
        if reg is TASKS:
            print(f"  {'FILE.toml':<12} a task of your own cohort, from a TOML file and a CSV manifest (`run --help`; "
                  "README: Your own cohort)")
    print("presets:")
    for name, preset in PRESETS.items():
        print(f"  {name:<12} {preset.description}")
    if args.keys:
        print()
        print("\n".join(key_lines(args.preset)))
    return 0


def key_lines(preset_name: str) -> list[str]:
    """Every ``--set`` key with its type, its value in preset ``preset_name`` and its description, by section; the
    method keys once per parameter class, with each method's value where the methods sharing the class differ."""
    from benchmark.config import FOLLOW, PRESETS, SeedConfig, describe_fields
    from benchmark.registry import METHODS

    preset = PRESETS[preset_name]
    # 1. the sections: (title, field docs, {key: [(method, value)]} for the method sections)
    sections: list[tuple[str, list, dict]] = [
        (f"{prefix}: {_first_sentence(type(obj).__doc__)}{note}", describe_fields(obj, prefix), {})
        for prefix, obj, note in (("data", preset.data, ""), ("split", preset.split, ""), ("probe", preset.probe, ""),
                                  ("seeds", SeedConfig(), f" ({FOLLOW}: follow the replicate seed)"))
    ]
    by_class: dict[type, list] = {}
    no_params = []
    for name in METHODS.names():
        params = METHODS.get(name).default_params(preset_name)
        if params is None:
            no_params.append(name)
        else:
            by_class.setdefault(type(params), []).append((name, params))
    for cls, members in by_class.items():
        per_method: dict[str, list] = {}
        for name, params in members:
            for doc in describe_fields(params, "method"):
                per_method.setdefault(doc.key, []).append((name, doc.value))
        names = ", ".join(name for name, _ in members)
        sections.append((f"method ({names}): {_first_sentence(cls.__doc__)}", describe_fields(members[0][1], "method"),
                         per_method))
    # 2. one line per key
    width = max(len(d.key) for _, docs, _ in sections for d in docs)
    others = "|".join(p for p in PRESETS if p != preset_name)
    lines = [f"--set keys: type, value in preset {preset_name} (`list --keys --preset {others}` for another), "
             "description",
             f"  {'seed':<{width}}  {'int':<16} {'0':<14} the replicate seed (`run --seed`): the seeds.* that are "
             f"{FOLLOW} follow it"]
    for title, docs, per_method in sections:
        lines.append(title)
        heading = ""
        for doc in docs:
            if doc.heading and doc.heading != heading:
                lines.append(f"  # {doc.heading}")
                heading = doc.heading
            method_values = per_method.get(doc.key, [])
            if len({repr(v) for _, v in method_values}) > 1:
                value = "; ".join(f"{m}: {v!r}" for m, v in method_values)
            else:
                value = repr(doc.value)
            text = doc.help + (f" [tune: {doc.search}]" if doc.search else "")
            lines.append(f"  {doc.key:<{width}}  {doc.type:<16} {value:<14} {text}".rstrip())
    if no_params:
        lines.append(f"method ({', '.join(no_params)}): no parameters")
    return lines


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").replace("``", "").split())
    return text.split(". ", 1)[0].rstrip(".")


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


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.runner import build_config, run_one

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


def cmd_report(args: argparse.Namespace) -> int:
    from benchmark.registry import load_plugins
    from benchmark.reporting import CANONICAL_METHODS, write_report

    load_plugins()
    if args.power is not None:
        from benchmark.reporting import power_plan

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


def cmd_sweep(args: argparse.Namespace) -> int:
    from benchmark import launchers, sweep
    from benchmark.config import ConfigError

    options = slurm_options(args)
    if args.launcher == "slurm" and args.workers != 1:
        raise ConfigError("--workers is for --launcher local; on SLURM, --slurm-parallel N caps the jobs running "
                          "at once")
    from benchmark import endpoints

    methods, tasks, seeds, jobs = plan_grid(args, args.out)
    try:
        protocol = endpoints.load(args.endpoints)
        if not (args.status or args.dry_run):
            endpoints.declare(args.out, protocol)
    except endpoints.EndpointsError as exc:
        raise ConfigError(str(exc)) from None
    absent = [m for m in protocol.methods() if m not in methods]
    if absent:
        print(f"note: the declared endpoints compare {', '.join(absent)}, which this sweep does not run; their "
              "endpoints stay untested until a sweep into the same folder does")
    sweep.prepare(jobs, args.out)
    rows = launchers.slurm_rows(jobs, args.out)
    counts = {s: sum(r["state"] == s for r in rows) for s in launchers.ROW_STATES}
    to_run = counts["pending"] + counts["failed"] + counts["cancelled"]
    preset = jobs[0].cfg.preset if jobs else args.preset
    print(f"sweep: {len(methods)} method(s) x {len(tasks)} task(s) x {len(seeds)} seed(s) = {len(jobs)} jobs "
          f"(preset {preset}); done {counts['done']}, running {counts['running']}, queued {counts['queued']}, "
          f"to run {to_run}" + "".join(f", of them {counts[s]} {s} before" for s in ("failed", "cancelled")
                                       if counts[s]))
    if args.status or args.dry_run:
        print("\n".join(launchers.status_table(rows)))
        if args.dry_run:
            print(f"dry run: nothing was run; {to_run} job(s) would run (--launcher {args.launcher})")
        return 0
    # 1. local: a process pool here
    if args.launcher == "local":
        result = launchers.run_local(jobs, args.out, args.workers, progress=not args.no_progress)
        done = sum(sweep.is_finished(j) for j in jobs)
        failed = result["failed"]
        print(f"sweep finished: {done}/{len(jobs)} jobs done" + (f", {len(failed)} failed:" if failed else ""))
        for job, error in failed:
            print(f"  {job.name}: {error}")
        if failed:
            print("rerun the same command to retry the failed jobs")
        return EXIT_FAILED if failed else 0
    # 2. slurm: a job array (two when later jobs reuse a model an earlier one trains)
    submitted = launchers.submit(jobs, args.out, options)
    if submitted["kept"]:
        print(f"{len(submitted['kept'])} job(s) still queued or running on SLURM from before: not submitted again")
    for job in submitted["elsewhere"]:
        print(f"{job.name}: being computed by a process of this host ({sweep.lock_holder(job.run_dir)}): "
              "not submitted")
    if submitted["submitted"]:
        print(f"logs: {launchers.slurm_folder(args.out)}/<job id>/<job id>_0_log.out (job ids and logs per run in "
              f"{launchers.slurm_folder(args.out) / launchers.STATE_FILE})")
    status = launchers.command_line([a for a in sys.argv[1:] if a != "--no-wait"] + ["--status"])
    if args.no_wait:
        print(f"not waiting; the jobs' states: {status}")
        return 0
    rows = launchers.wait(jobs, args.out, progress=not args.no_progress)
    done = sum(r["state"] == "done" for r in rows)
    failed = [r for r in rows if r["state"] in ("failed", "cancelled")]
    print(f"sweep finished: {done}/{len(jobs)} jobs done" + (f", {len(failed)} failed or cancelled:" if failed
                                                             else ""))
    for r in failed:
        log = f" (log: {launchers.shown(r['log'])})" if r["log"] and Path(r["log"]).is_file() else ""
        print(f"  {r['job'].name}: {r['state']}: {r['where']}{log}")
    for r in rows:
        if r["state"] not in ("done", "failed", "cancelled"):
            print(f"  {r['job'].name}: {r['state']} {r['where']}".rstrip())
    if failed:
        print("rerun the same command to submit the failed and cancelled jobs again")
    return EXIT_FAILED if failed else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from benchmark.tune import TuneError, cli

    options = slurm_options(args)
    try:
        return cli(args, options)
    except TuneError as exc:  # an unusable storage, nothing to evaluate
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def cmd_samples(args: argparse.Namespace) -> int:
    from benchmark import compare, tracking
    from benchmark.cache import atomic_file
    from benchmark.config import ConfigError
    from benchmark.registry import TASKS, load_plugins

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


def build_default_preset(device: str) -> str:
    from benchmark.config import default_preset
    from benchmark.runner import resolve_device

    return default_preset(resolve_device(device))


def cmd_guidance(args: argparse.Namespace) -> int:
    from benchmark import guidance
    from benchmark.cache import atomic_write_bytes, atomic_write_text
    from benchmark.config import ConfigError

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


def cmd_freeze(args: argparse.Namespace) -> int:
    from benchmark import freeze
    from benchmark.provenance import git_commit

    jobs = plan_grid(args, args.results)[3]
    commit = git_commit() or "unknown"
    dest = args.dest or freeze.default_destination(args.results, commit)
    preset = jobs[0].cfg.preset if jobs else args.preset
    grid = f"--methods {args.methods} --tasks {args.tasks} --seeds {args.seeds} --preset {preset}" + (
        " --set " + " ".join(args.overrides) if args.overrides else "")
    command = f"python -m benchmark sweep {grid} && python -m benchmark freeze {grid}"
    manifest = freeze.freeze(jobs, dest, command, commit, allow_dirty=args.allow_dirty)
    hours = manifest["sum_of_run_durations_s"] / 3600
    print(f"froze {manifest['runs']} runs into {dest} (run durations {hours:.2f} h; records from "
          f"{', '.join(manifest['record_commits'])})")
    print(f"render it: python -m benchmark report --results {dest}")
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    from benchmark import perf
    from benchmark.registry import METHODS, load_plugins
    from benchmark.sweep import parse_names
    from benchmark.threads import usable_cores

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


def cmd_ui(args: argparse.Namespace) -> int:
    from benchmark.ui import serve_ui

    return serve_ui(args.results, args.port)


def main(argv: list[str] | None = None) -> int:
    from benchmark import interrupts

    # Ctrl-C, or SIGTERM from a scheduler or `kill`: finished runs are kept, the unfinished one is marked KILLED
    interrupts.install()
    parser = build_parser()
    args = parser.parse_args(argv)
    from benchmark import distributed

    quiet = args.quiet or not distributed.is_main()  # the other processes of ``accelerate launch``: warnings only
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from benchmark.config import ConfigError
    from benchmark.registry import RegistryError

    commands = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "sweep": cmd_sweep, "tune": cmd_tune,
                "samples": cmd_samples, "guidance": cmd_guidance, "freeze": cmd_freeze, "perf": cmd_perf, "ui": cmd_ui}
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
            from benchmark import tracking

            store = tracking.tracking_uri(Path(getattr(args, "out", "results") or "results"))
            print(f"error: cannot write the MLflow store {store}: the disk is full; what finished before is kept (a "
                  "run without its record.json is redone by the same command)", file=sys.stderr)
            return EXIT_FAILED
        raise


def interrupted_message(command: str, kept: list) -> str:
    """What an interrupted command kept and how to go on; ``kept``: the training checkpoints it left
    (:class:`benchmark.interrupts.Kept`)."""
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


if __name__ == "__main__":
    sys.exit(main())
