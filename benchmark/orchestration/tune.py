"""Hyperparameter search with optuna: ``python -m benchmark tune`` and its Python API (:func:`tune`, :func:`best`).

1. The search space is declared with the fields themselves (``benchmark.core.config.tunable``); ``search_space(cfg)``
   collects it for one method and preset. A key given with ``--set`` is fixed, not searched.
2. A trial is real runs: ``build_config`` + ``run_one`` for run seeds 0..K-1 (content-addressed, so a trial whose
   config equals a finished run reuses it). Its value is the mean validation worst-group accuracy (validation
   balanced accuracy for a run where no group is large enough, noted in the trial's user attrs). After each seed the
   running mean is reported and a ``MedianPruner`` may stop the trial. Test splits are never read while tuning.
3. Every run is an MLflow run tagged ``optuna_study`` and ``optuna_trial``.
4. Studies live in any optuna (SQLAlchemy) storage, default ``sqlite:///<out>/optuna.db``; ``--trials N`` runs until
   the study has N finished (complete + pruned) trials, so re-running the command resumes it, and several workers
   (on one or several machines) can share it. A trial left RUNNING by a killed worker on this host is marked FAIL.
5. ``--best`` re-runs the best complete trial's parameters with fresh seeds (1000, 1001, ...) and prints val and
   test metrics: the final evaluation of the chosen config, the only place test metrics appear.
"""

from __future__ import annotations

import math
import os
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.core.cache import pid_alive
from benchmark.core.config import ConfigError, RunConfig, Search, parse_overrides, search_space

OBJECTIVE = "val/worst_group_accuracy"
FALLBACK = "val/balanced_accuracy"  # when no validation group is large enough for a worst-group accuracy
BEST_SEED = 1000  # --best runs seeds 1000, 1001, ...: never used by trials (seeds 0..K-1)
DEFAULT_SEEDS = 2
DEFAULT_OUT = Path("results")
PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 0}
STUDY_ATTR = "medibench"  # study user attr: what the study tunes (checked when a study is resumed)
WAIT_SECONDS = 5.0  # poll interval while another process computes the same run


class TuneError(RuntimeError):
    """The study's storage cannot be used, or the study has nothing to evaluate; the message says why."""


@dataclass(frozen=True)
class Setup:
    """What a study tunes: method, task, preset, the fixed overrides, the run seeds, the space and where it lives."""

    method: str
    task: str
    preset: str
    device: str
    seeds: int
    overrides: dict[str, str]
    out: Path
    storage: str
    study_name: str
    space: dict[str, Search]
    base: RunConfig  # the config at run seed 0 without any searched value

    def signature(self) -> dict[str, Any]:
        out = {"method": self.method, "task": self.base.task, "preset": self.preset, "overrides": self.overrides,
               "seeds": self.seeds}
        if self.base.task_sha256:  # a task file: its content too (another file may give the same name)
            out["task_sha256"] = self.base.task_sha256
        if self.base.manifest_sha256:  # a manifest cohort: its content (edited in place, it is another study)
            out["manifest_sha256"] = self.base.manifest_sha256
        return out

    def command(self, *extra: str, seeds: bool = True) -> str:
        """The ``tune`` command line for this study (defaults left out)."""
        args = ["python", "-m", "benchmark", "tune", "--method", self.method, "--task", self.task,
                "--preset", self.preset]
        if self.study_name != default_study_name(self.method, self.base.task, self.preset):
            args += ["--study", self.study_name]
        if self.storage != default_storage(self.out):
            args += ["--storage", display_url(self.storage)]
        if self.out != DEFAULT_OUT:
            args += ["--out", str(self.out)]
        if self.device != "auto":
            args += ["--device", self.device]
        if seeds and self.seeds != DEFAULT_SEEDS:
            args += ["--seeds", str(self.seeds)]
        if self.overrides:
            args += ["--set", *(f"{k}={v}" for k, v in self.overrides.items())]
        return shlex.join([*args, *extra])


def _print(*args: Any) -> None:
    print(*args, flush=True)  # one line per trial, visible at once through a pipe or a log file


HEARTBEAT_S = 60
GRACE_S = 600


def default_storage(out: Path | str) -> str:
    return f"sqlite:///{(Path(out) / 'optuna.db').resolve()}"


def default_study_name(method: str, task: str, preset: str) -> str:
    return f"{method}-{task}-{preset}"


def display_url(url: str) -> str:
    """The storage URL with any password masked (for printing)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy can parse: print it as given
        return url


def prepare(
    method: str,
    task: str,
    preset: str | None = None,
    seeds: int = DEFAULT_SEEDS,
    overrides: list[str] | dict[str, str] | None = None,
    out: Path | str = DEFAULT_OUT,
    device: str = "auto",
    storage: str | None = None,
    study: str | None = None,
) -> Setup:
    """Resolve names, preset and fixed overrides (ConfigError / RegistryError for bad ones) into a Setup."""
    from benchmark.orchestration.runner import build_config

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    fixed = parse_overrides(list(overrides)) if isinstance(overrides, (list, tuple)) else dict(overrides or {})
    if "seed" in fixed:
        raise ConfigError("--set seed=... does not apply to tune: trials use run seeds 0..K-1 (--seeds K)")
    base = build_config(method, task, preset, 0, device, fixed)
    space = {key: s for key, s in search_space(base).items() if key not in fixed}
    out = Path(out)
    return Setup(
        method, task, base.preset, device, seeds, fixed, out, storage or default_storage(out),
        study or default_study_name(method, base.task, base.preset), space, base,
    )


# ---------------------------------------------------------------------------------------------------------------
# the study


def _quiet_optuna() -> None:
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print one line per trial; errors end the command
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(storage: str):
    """An optuna RDBStorage; a malformed URL is a ConfigError, an unusable database a TuneError."""
    import optuna
    from sqlalchemy import exc as sa_exc

    shown = display_url(storage)
    try:
        # heartbeats: a trial whose worker died on any host (no heartbeat for grace_period s) is failed by the
        # next worker's optimize(), so a study shared across machines does not keep it RUNNING forever
        return optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except sa_exc.ArgumentError as exc:  # unparsable URL or unknown dialect (NoSuchModuleError)
        raise ConfigError(f"--storage {shown!r}: not a usable SQLAlchemy URL ({_first_line(exc)}); "
                          f"e.g. sqlite:///results/optuna.db or postgresql://user@host/db") from None
    except ImportError as exc:
        missing = exc.__cause__ or exc
        raise TuneError(f"--storage {shown!r}: the database driver is not installed "
                        f"({_first_line(missing)})") from None
    except Exception as exc:  # cannot connect / open / create the schema (the driver's own message)
        reason = getattr(exc, "orig", None) or exc
        raise TuneError(f"--storage {shown!r}: cannot open the optuna storage ({_first_line(reason)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_study(setup: Setup, sampler_seed: int = 0, create: bool = True):
    """Create or load the study (``create=False``: it must exist). The TPE sampler's seed is ``sampler_seed`` plus
    the number of trials already in the study, so a resumed study does not replay its first suggestions."""
    import optuna

    _quiet_optuna()
    if setup.storage == default_storage(setup.out):
        setup.out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(setup.storage)
    pruner = optuna.pruners.MedianPruner(**PRUNER)
    if create:
        study = optuna.create_study(storage=storage, study_name=setup.study_name, direction="maximize",
                                    pruner=pruner, load_if_exists=True)
    else:
        try:
            study = optuna.load_study(study_name=setup.study_name, storage=storage, pruner=pruner)
        except KeyError:
            names = optuna.get_all_study_names(storage)
            raise TuneError(f"no study {setup.study_name!r} in {display_url(setup.storage)} (studies there: "
                            f"{', '.join(names) or 'none'}); run `{setup.command('--trials', 'N', seeds=False)}` "
                            "first") from None
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed + len(study.get_trials(deepcopy=False)))
    _check_signature(study, setup, seeds=create)
    return study


def _check_signature(study, setup: Setup, seeds: bool = True) -> None:
    """A study tunes one method, task, preset, set of fixed overrides and number of run seeds (``seeds=False``:
    not checked, for --best); resuming it with other ones is an error."""
    mine = setup.signature()
    theirs = study.user_attrs.get(STUDY_ATTR)
    if theirs is None:
        if seeds:
            study.set_user_attr(STUDY_ATTR, mine)
        return
    diff = [k for k in mine if (seeds or k != "seeds") and theirs.get(k) != mine[k]]
    if diff:
        detail = "; ".join(f"{k}: study {theirs.get(k)!r}, now {mine[k]!r}" for k in diff)
        raise ConfigError(f"study {setup.study_name!r} was made for other settings ({detail}); "
                          f"pass the same ones, or --study NAME for a new study")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc; None elsewhere): tells a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: Any, start: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: leave it alone
    if not pid_alive(pid):
        return False
    return start is None or _process_start(pid) in (None, start)


def fail_stale_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials started on this host by a process that no longer exists; the numbers.

    Trials of other hosts (or without host/pid) are left alone: another worker may still be running them."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        if attrs.get("host") != host or _alive(attrs.get("pid"), attrs.get("pid_start")):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
        except (ValueError, RuntimeError):  # finished meanwhile
            continue
    return failed


def _counts(study) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# one trial


def objective_value(record: dict) -> tuple[float | None, str]:
    """(value, metric name): validation worst-group accuracy, else validation balanced accuracy. Never test."""
    metrics = record["metrics"]
    for key in (OBJECTIVE, FALLBACK):
        value = metrics.get(key)
        if value is not None and math.isfinite(value):
            return float(value), key
    return None, "none"


def _config_value(cfg: RunConfig, key: str) -> Any:
    section, name = key.split(".", 1)
    obj = cfg.method_params if section == "method" else getattr(cfg, section)
    return getattr(obj, name)


def suggest(trial, space: dict[str, Search], base: RunConfig) -> dict[str, Any]:
    """Values for every key of ``space``; a key whose ``requires`` key is zero (searched or fixed) is skipped."""
    values: dict[str, Any] = {}
    for key, search in space.items():
        if search.requires is not None:
            gate = values[search.requires] if search.requires in space else _config_value(base, search.requires)
            if not gate:
                continue
        values[key] = search.suggest(trial, key)
    return values


def _text(value: Any) -> str:
    """A value as ``--set`` text that parses back to exactly the same value (repr round-trips floats)."""
    return repr(value) if isinstance(value, float) else str(value)


def set_line(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_text(v)}" for k, v in params.items())


def _run(cfg: RunConfig, out: Path, tags: dict[str, str], echo: Callable[..., None]) -> dict:
    """``run_one``; when another worker is computing the same run, wait for it and reuse its record."""
    from benchmark.orchestration import runner

    waited = False
    while True:
        try:
            return runner.run_one(cfg, out, progress=False, tags=tags)
        except runner.RunBusy as busy:
            if not waited:
                echo(f"waiting: {busy}")
                waited = True
            time.sleep(WAIT_SECONDS)


def _objective(trial, setup: Setup, echo: Callable[..., None]) -> float:
    import optuna

    from benchmark.orchestration.runner import build_config

    pid = os.getpid()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", pid)
    trial.set_user_attr("pid_start", _process_start(pid))
    params = suggest(trial, setup.space, setup.base)
    overrides = {**setup.overrides, **{k: _text(v) for k, v in params.items()}}
    tags = {"optuna_study": setup.study_name, "optuna_trial": str(trial.number)}
    attrs: dict[str, list] = {k: [] for k in ("seeds", "run_names", "run_dirs", "mlflow_run_ids", "reused",
                                              "values", "objective_metric", "val_balanced_accuracy")}
    for step, seed in enumerate(range(setup.seeds)):
        # 1. one real run (or the finished run with this config)
        record = _run(build_config(setup.method, setup.task, setup.preset, seed, setup.device, overrides),
                      setup.out, tags, echo)
        value, metric = objective_value(record)
        if value is None:
            raise TuneError(f"run {record['run_dir']} has neither {OBJECTIVE} nor {FALLBACK} (empty val split?)")
        # 2. what the trial ran, in its user attrs (a reused run keeps the MLflow run, and tags, it was made with)
        for key, item in (("seeds", seed), ("run_names", record["name"]), ("run_dirs", record["run_dir"]),
                          ("mlflow_run_ids", record.get("mlflow", {}).get("run_id")),
                          ("reused", bool(record.get("reused"))), ("values", value), ("objective_metric", metric),
                          ("val_balanced_accuracy", record["metrics"].get(FALLBACK))):
            attrs[key].append(item)
            trial.set_user_attr(key, attrs[key])
        if metric != OBJECTIVE:
            trial.set_user_attr("objective_fallback", FALLBACK)
        # 3. report the running mean; prune after a seed when the trial is below the median of earlier trials
        mean = sum(attrs["values"]) / len(attrs["values"])
        trial.report(mean, step)
        if step + 1 < setup.seeds and trial.should_prune():
            raise optuna.TrialPruned(f"running mean {mean:.4f} after {step + 1} seed(s)")
    return mean


# ---------------------------------------------------------------------------------------------------------------
# printing


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _short(params: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "-"


def trial_line(t) -> str:
    """One line per finished trial: number, state, value, params, and what its runs were."""
    value = t.value if t.values else None
    if value is None and t.intermediate_values:
        value = t.intermediate_values[max(t.intermediate_values)]
    attrs = t.user_attrs
    notes = [f"{len(attrs.get('run_names', []))} run(s)"]
    if any(attrs.get("reused", [])):
        notes.append(f"{sum(attrs['reused'])} reused")
    if attrs.get("objective_fallback"):
        notes.append(f"fallback {FALLBACK}")
    return f"trial {t.number:>4}  {t.state.name:<8}  value {_fmt(value)}  {_short(t.params)}  ({', '.join(notes)})"


def _seeds_text(k: int) -> str:
    return "run seed 0" if k == 1 else f"run seeds 0..{k - 1}"


def _space_text(space: dict[str, Search]) -> str:
    return ", ".join(f"{k} {s.describe()}" for k, s in space.items())


# ---------------------------------------------------------------------------------------------------------------
# the two entry points


def tune(
    method: str,
    task: str,
    trials: int,
    *,
    preset: str | None = None,
    storage: str | None = None,
    study: str | None = None,
    seeds: int = DEFAULT_SEEDS,
    overrides: list[str] | dict[str, str] | None = None,
    out: Path | str = DEFAULT_OUT,
    device: str = "auto",
    sampler_seed: int = 0,
    echo: Callable[..., None] = _print,
):
    """Run trials until the study has ``trials`` finished (complete + pruned) ones; returns the optuna Study."""
    import optuna
    from optuna.trial import TrialState

    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    setup = prepare(method, task, preset, seeds, overrides, out, device, storage, study)
    if not setup.space:
        fixed = f" (fixed by --set: {', '.join(setup.overrides)})" if setup.overrides else ""
        raise ConfigError(f"nothing to tune for {method} on preset {setup.preset}{fixed}")
    st = open_study(setup, sampler_seed)
    # 1. trials a killed worker on this host left RUNNING
    stale = fail_stale_trials(st)
    if stale:
        echo(f"marked FAIL: trial(s) {', '.join(map(str, stale))}, left RUNNING by a process of this host that "
             "no longer exists")
    # 2. how many exist, how many to run
    counts = _counts(st)
    finished = counts["COMPLETE"] + counts["PRUNED"]
    todo = max(0, trials - finished)
    others = f", {counts['RUNNING']} running in other workers" if counts["RUNNING"] else ""
    echo(f"study {setup.study_name} ({display_url(setup.storage)}): {finished} finished trial(s) "
         f"({counts['COMPLETE']} complete, {counts['PRUNED']} pruned), {counts['FAIL']} failed{others}; "
         f"running {todo} to reach {trials}")
    echo(f"objective: {OBJECTIVE}, mean over {_seeds_text(setup.seeds)} (higher is better); "
         f"space: {_space_text(setup.space)}")
    # 3. the trials
    if todo:
        stop_at = optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
        try:
            st.optimize(lambda trial: _objective(trial, setup, echo), n_trials=todo,
                        callbacks=[lambda s, t: echo(trial_line(t)), stop_at])
        except KeyboardInterrupt:
            print(f"interrupted: the current trial is marked FAIL, finished trials are kept; resume with\n"
                  f"  {setup.command('--trials', str(trials))}", file=sys.stderr)
            raise
    # 4. summary
    summarize(st, setup, trials, echo)
    return st


def summarize(st, setup: Setup, trials: int, echo: Callable[..., None] = _print) -> None:
    from optuna.trial import TrialState

    counts = _counts(st)
    echo(f"\nstudy {setup.study_name}: {counts['COMPLETE'] + counts['PRUNED']} finished trial(s) "
         f"({counts['COMPLETE']} complete, {counts['PRUNED']} pruned), {counts['FAIL']} failed; "
         f"storage {display_url(setup.storage)}")
    if st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        b = st.best_trial
        echo(f"best: trial {b.number}, {OBJECTIVE} {_fmt(b.value)} (mean over {_seeds_text(setup.seeds)})")
        echo(f"  params: {_short(b.params)}")
        echo(f"  --set {set_line({**setup.overrides, **b.params})}")
    else:
        echo("best: no complete trial yet")
    echo(f"resume or add a worker: {setup.command('--trials', str(trials))}")
    echo(f"evaluate the best on fresh seeds: {setup.command('--best', seeds=False)}")


def _mean_sem(values: list[float | None]) -> tuple[float | None, float | None, int]:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None, None, 0
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None, 1
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var / len(xs)), len(xs)


BEST_SPLITS = ("val", "test_seen", "test_unseen")
BEST_METRICS = (("balanced_accuracy", "bal.acc"), ("worst_group_accuracy", "worst-grp"))


def best_table(records: list[dict]) -> str:
    """val / test_seen / test_unseen x balanced and worst-group accuracy, mean +- SEM over the records."""
    n = len(records)
    lines = [f"{'split':<12}" + "".join(f"{label:>22}" for _, label in BEST_METRICS)]
    for split in BEST_SPLITS:
        cells = []
        for key, _ in BEST_METRICS:
            mean, sem, k = _mean_sem([r["metrics"].get(f"{split}/{key}") for r in records])
            cell = "n/a" if mean is None else f"{mean:.3f} +- {_fmt(sem, 3)}" + (f" (n={k})" if k != n else "")
            cells.append(f"{cell:>22}")
        lines.append(f"{split:<12}" + "".join(cells))
    return "\n".join(lines)


def best(
    method: str,
    task: str,
    *,
    preset: str | None = None,
    storage: str | None = None,
    study: str | None = None,
    best_seeds: int = 3,
    overrides: list[str] | dict[str, str] | None = None,
    out: Path | str = DEFAULT_OUT,
    device: str = "auto",
    echo: Callable[..., None] = _print,
) -> dict:
    """Re-run the best complete trial's parameters with seeds 1000.. and print val and test metrics.

    Returns ``{"trial", "params", "seeds", "records", "table"}``."""
    from optuna.trial import TrialState

    from benchmark.orchestration.runner import build_config

    if best_seeds < 1:
        raise ConfigError(f"--best-seeds must be >= 1, got {best_seeds}")
    setup = prepare(method, task, preset, DEFAULT_SEEDS, overrides, out, device, storage, study)
    st = open_study(setup, create=False)
    if not st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TuneError(f"study {setup.study_name!r} has no complete trial yet; run "
                        f"`{setup.command('--trials', 'N', seeds=False)}` first")
    b = st.best_trial
    tuned_seeds = len(b.user_attrs.get("seeds", [])) or "?"
    overrides_best = {**setup.overrides, **{k: _text(v) for k, v in b.params.items()}}
    seeds = list(range(BEST_SEED, BEST_SEED + best_seeds))
    tags = {"optuna_study": setup.study_name, "optuna_trial": str(b.number), "optuna_eval": "best"}
    echo(f"best trial {b.number} of study {setup.study_name}: {OBJECTIVE} {_fmt(b.value)} "
         f"(mean over {tuned_seeds} tuning seed(s))")
    echo(f"params: {_short(b.params)}")
    echo(f"re-running with fresh seeds {', '.join(map(str, seeds))} (never used by trials)")
    records = []
    for seed in seeds:
        cfg = build_config(setup.method, setup.task, setup.preset, seed, setup.device, overrides_best)
        record = _run(cfg, setup.out, tags, echo)
        records.append(record)
        echo(f"  {record['name']}: {'reused' if record.get('reused') else 'ran'}  {record['run_dir']}  "
             f"(MLflow run {record.get('mlflow', {}).get('run_id')})")
    table = best_table(records)
    echo(f"\nmean +- SEM over {len(records)} seed(s); the final evaluation of the chosen config (test metrics were "
         "not used to choose it)")
    echo(table)
    items = [f"{k}={v}" for k, v in overrides_best.items()]
    reproduce = ["python", "-m", "benchmark", "run", "--method", setup.method, "--task", setup.task,
                 "--preset", setup.preset, "--seed", str(seeds[0]), "--set", *items]
    if setup.out != DEFAULT_OUT:
        reproduce += ["--out", str(setup.out)]
    echo(f"\n--set {shlex.join(items)}")
    echo(f"reproduce one seed: {shlex.join(reproduce)}")
    return {"trial": b.number, "params": dict(b.params), "seeds": seeds, "records": records, "table": table}


def cli(args, slurm=None) -> int:
    """``python -m benchmark tune`` (arguments parsed in __main__); ``slurm``: the ``--slurm-*`` resources
    (``benchmark.orchestration.launchers.SlurmOptions``) for ``--launcher slurm``."""
    common = dict(preset=args.preset, storage=args.storage, study=args.study, overrides=args.overrides,
                  out=args.out, device=args.device)
    launcher, workers = getattr(args, "launcher", "local"), getattr(args, "workers", 1)
    if args.best:
        if launcher != "local" or workers != 1:
            raise ConfigError("--best runs here (a few fresh-seed runs); leave out --launcher and --workers")
        best(args.method, args.task, best_seeds=args.best_seeds, **common)
        return 0
    if args.trials is None:
        raise ConfigError("tune needs --trials N (run until the study has N finished trials) or --best")
    if launcher != "local" or workers != 1:
        return launch_workers(args, launcher, workers, slurm)
    tune(args.method, args.task, args.trials, seeds=args.seeds, sampler_seed=args.sampler_seed, **common)
    return 0


def launch_workers(args, launcher: str, workers: int, slurm, echo: Callable[..., None] = _print) -> int:
    """``--workers N`` tune workers on this machine (a process pool) or as a SLURM job array, all on one study
    (Optuna's storage shares it: each worker runs trials until the study has --trials finished ones). Each worker's
    sampler seed differs, so workers that start together do not suggest the same first trials."""
    from benchmark.orchestration import launchers

    setup = prepare(args.method, args.task, args.preset, args.seeds, args.overrides, args.out, args.device,
                    args.storage, args.study)
    if not setup.space:
        raise ConfigError(f"nothing to tune for {args.method} on preset {setup.preset}")
    open_study(setup, args.sampler_seed)  # created (and its settings checked) once, before the workers start
    base = dict(method=args.method, task=args.task, trials=args.trials, preset=setup.preset, storage=setup.storage,
                study=setup.study_name, seeds=setup.seeds, overrides=dict(setup.overrides), out=str(setup.out),
                device=args.device)
    kwargs = [dict(base, sampler_seed=args.sampler_seed + 7919 * i) for i in range(workers)]
    echo(f"study {setup.study_name} ({display_url(setup.storage)}): {workers} worker(s), --launcher {launcher}, "
         f"until {args.trials} finished trial(s)")
    wait = not getattr(args, "no_wait", False)
    errors = launchers.run_tune_workers(launcher, tune, kwargs, setup.out, slurm, wait, echo)
    if not wait:
        echo(f"not waiting; the study's state: {setup.command('--trials', str(args.trials))} (with no trials left "
             "to run it only prints the study)")
        return 0
    summarize(open_study(setup, args.sampler_seed), setup, args.trials, echo)
    return 1 if errors else 0
