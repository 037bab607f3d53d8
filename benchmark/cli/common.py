"""Arguments several subcommands share: --set overrides, the sweep grid, the launcher and its SLURM resources."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

EXIT_USAGE = 2  # a bad name, preset, device or --set key

EXIT_FAILED = 1  # bad data, an unreachable tracking server, a failed run

ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EPERM", "EROFS") if hasattr(errno, n)
)


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
    from benchmark.core.registry import METHODS
    from benchmark.orchestration import sweep
    from benchmark.plugins import load_plugins

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
    from benchmark.core.registry import TASKS
    from benchmark.orchestration import sweep

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
    """The ``--slurm-*`` arguments as :class:`benchmark.orchestration.launchers.SlurmOptions` (checked)."""
    from benchmark.core.config import ConfigError
    from benchmark.orchestration.launchers import SlurmOptions

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
