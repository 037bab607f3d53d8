"""`tune`: search spaces declared with the fields, real optuna studies over real smoke runs, resume, --best."""

from __future__ import annotations

import json
import math
import socket
import subprocess
from pathlib import Path

import pytest

from benchmark.core.config import ConfigError, search_space
from benchmark.orchestration.runner import build_config
from tests.conftest import run_cli

GUIDED = ["method.class_dropout=0.1", "method.meta_dropout=0.1"]  # a model trained for guidance


@pytest.fixture(autouse=True)
def local_mlflow(monkeypatch):
    """Runs go to the MLflow store under the test's own results folder, never a configured server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


class SpyMetrics(dict):
    """A record's metrics that remember which keys were read."""

    def __init__(self, data, seen):
        super().__init__(data)
        self.seen = seen

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __iter__(self):
        self.seen.update(super().keys())
        return super().__iter__()

    def items(self):
        self.seen.update(super().keys())
        return super().items()

    def values(self):
        self.seen.update(super().keys())
        return super().values()


def read_record(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "record.json").read_text())


# (a) the search space is declared once, with the fields


def test_search_space_is_declared_with_the_fields():
    none = search_space(build_config("none", "nsclc", "smoke", device="cpu"))
    assert list(none) == ["probe.C"]
    assert (none["probe.C"].kind, none["probe.C"].low, none["probe.C"].high, none["probe.C"].log) == (
        "float", 1e-3, 1e2, True)

    medi = search_space(build_config("medi", "nsclc", "smoke", device="cpu"))
    assert (medi["method.lr"].low, medi["method.lr"].high, medi["method.lr"].log) == (1e-4, 2e-3, True)
    assert (medi["method.synthetic_ratio"].low, medi["method.synthetic_ratio"].high) == (0.25, 2.0)
    assert medi["method.sampling_steps"].kind == "int"
    # classifier-free guidance only makes sense for a model trained with condition dropout
    assert "method.guidance_scale" not in medi
    guided = search_space(build_config("medi", "nsclc", "smoke", device="cpu", overrides=GUIDED))
    assert guided["method.guidance_scale"].requires == "method.class_dropout"
    assert search_space(build_config("stain_norm", "nsclc", "smoke", device="cpu"))["method.normalizer"].choices == (
        "macenko", "reinhard")


def test_fields_with_search_ranges_still_behave_like_plain_fields():
    import dataclasses

    cfg = build_config("medi", "nsclc", "smoke", device="cpu", overrides=["method.lr=1e-3", "method.sampling_steps=7"])
    assert cfg.method_params.lr == 1e-3 and cfg.method_params.sampling_steps == 7
    assert dataclasses.asdict(cfg.method_params)["lr"] == 1e-3
    assert dataclasses.replace(cfg.probe, C=0.5).C == 0.5


def test_suggest_skips_guidance_without_condition_dropout():
    import optuna

    from benchmark.orchestration.tune import suggest

    base = build_config("medi", "nsclc", "smoke", device="cpu", overrides=GUIDED)
    space = search_space(base)
    trial = optuna.trial.FixedTrial({"probe.C": 1.0, "method.lr": 1e-3, "method.sampling_steps": 20,
                                     "method.guidance_scale": 2.0, "method.synthetic_ratio": 1.0})
    assert suggest(trial, space, base)["method.guidance_scale"] == 2.0
    plain = build_config("medi", "nsclc", "smoke", device="cpu")
    assert "method.guidance_scale" not in suggest(trial, space, plain)  # the gate reads the config's class_dropout


def test_objective_is_validation_only_with_a_balanced_accuracy_fallback():
    from benchmark.orchestration.tune import objective_value

    metrics = {"val/worst_group_accuracy": 0.4, "val/balanced_accuracy": 0.8, "test_unseen/worst_group_accuracy": 0.1}
    assert objective_value({"metrics": metrics}) == (0.4, "val/worst_group_accuracy")
    metrics["val/worst_group_accuracy"] = None
    assert objective_value({"metrics": metrics}) == (0.8, "val/balanced_accuracy")
    metrics["val/worst_group_accuracy"] = math.nan
    assert objective_value({"metrics": metrics}) == (0.8, "val/balanced_accuracy")


def test_a_tunable_key_fixed_by_set_is_not_searched(tmp_path):
    from benchmark.orchestration.tune import tune

    with pytest.raises(ConfigError, match="nothing to tune for none on preset smoke"):
        tune("none", "nsclc", 2, preset="smoke", device="cpu", out=tmp_path, overrides=["probe.C=0.5"])
    with pytest.raises(ConfigError, match="seeds 0..K-1"):
        tune("none", "nsclc", 2, preset="smoke", device="cpu", out=tmp_path, overrides=["seed=3"])


# (b) a real study: values are validation worst-group accuracies of real runs, never test ones


@pytest.fixture(scope="module")
def study4(tmp_path_factory):
    """A 4-trial, 2-seed study of `none` on the smoke preset, made through the Python API; the metric keys it read."""
    from benchmark.orchestration import runner
    from benchmark.orchestration.tune import tune

    out = tmp_path_factory.mktemp("study4")
    seen: set[str] = set()
    real_run_one = runner.run_one

    def spy_run_one(*args, **kwargs):
        record = real_run_one(*args, **kwargs)
        record["metrics"] = SpyMetrics(record["metrics"], seen)
        return record

    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(runner, "run_one", spy_run_one)
        study = tune("none", "nsclc", 4, preset="smoke", device="cpu", out=out, seeds=2, echo=lines.append)
    return study, out, lines, seen


def test_study_values_are_validation_worst_group_accuracy(study4):
    from mlflow.tracking import MlflowClient

    study, tmp_path, lines, seen = study4
    assert seen and not any(key.startswith("test") for key in seen), seen
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for trial in study.trials:
        attrs = trial.user_attrs
        assert attrs["seeds"] == [0, 1] and len(attrs["run_dirs"]) == 2
        records = [read_record(d) for d in attrs["run_dirs"]]
        assert [r["seed"] for r in records] == [0, 1]
        assert [r["config"]["probe"]["C"] for r in records] == [trial.params["probe.C"]] * 2
        val = [r["metrics"]["val/worst_group_accuracy"] for r in records]
        assert trial.value == pytest.approx(sum(val) / 2)
        assert attrs["val_balanced_accuracy"] == [r["metrics"]["val/balanced_accuracy"] for r in records]
        assert attrs["mlflow_run_ids"] == [r["mlflow"]["run_id"] for r in records]
        tags = client.get_run(attrs["mlflow_run_ids"][0]).data.tags
        assert tags["optuna_study"] == "none-nsclc-smoke" and tags["optuna_trial"] == str(trial.number)
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 4 and "probe.C=" in trial_lines[0] and "COMPLETE" in trial_lines[0]
    summary = "\n".join(lines)
    assert f"sqlite:///{(tmp_path / 'optuna.db').resolve()}" in summary
    assert "best: trial" in summary and "--best" in summary and "--trials 4" in summary


# (c) resume: --trials N means N finished trials in the study; stale trials of dead local workers are failed


def test_resume_runs_up_to_n_finished_trials(tmp_path):
    import optuna

    from benchmark.orchestration.tune import tune

    study = tune("none", "nsclc", 3, preset="smoke", device="cpu", out=tmp_path, seeds=1, echo=lambda *a: None)
    # a trial left RUNNING by a killed worker on this host, and one a worker elsewhere is still running
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = study.ask()
    stale.set_user_attr("host", socket.gethostname())
    stale.set_user_attr("pid", dead.pid)
    foreign = study.ask()
    foreign.set_user_attr("host", "another-machine")
    foreign.set_user_attr("pid", 1)

    proc = run_cli("tune", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--device", "cpu",
                   "--trials", "5", "--seeds", "1", "--out", str(tmp_path), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 finished trial(s)" in proc.stdout and "running 2 to reach 5" in proc.stdout
    assert f"marked FAIL: trial(s) {stale.number}," in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.startswith("trial ")]) == 2

    loaded = optuna.load_study(study_name="none-nsclc-smoke", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = {t.number: t.state.name for t in loaded.trials}
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 5
    assert states[stale.number] == "FAIL" and states[foreign.number] == "RUNNING"
    # running it again has nothing left to do; resuming with other settings is refused
    lines: list[str] = []
    tune("none", "nsclc", 5, preset="smoke", device="cpu", out=tmp_path, seeds=1, echo=lines.append)
    assert "running 0 to reach 5" in lines[0]
    with pytest.raises(ConfigError, match="seeds: study 1, now 2"):
        tune("none", "nsclc", 5, preset="smoke", device="cpu", out=tmp_path, seeds=2)


def test_local_workers_share_one_study(tmp_path):
    """--workers 2: two processes (a core each) run trials on one study until it has --trials finished ones."""
    import optuna

    proc = run_cli("tune", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--device", "cpu",
                   "--trials", "2", "--seeds", "1", "--workers", "2", "--out", str(tmp_path), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 worker(s), --launcher local" in proc.stdout and "best: trial" in proc.stdout
    loaded = optuna.load_study(study_name="none-nsclc-smoke", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = [t for t in loaded.trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 2 and len({t.params["probe.C"] for t in complete}) == len(complete)  # own sampler seeds


# (d) --best: fresh seeds 1000.., a table of val and test metrics


def test_best_reruns_with_fresh_seeds_and_prints_a_table(study4, capsys):
    from benchmark.cli import main

    study, tmp_path, _, _ = study4
    code = main(["tune", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--device", "cpu", "--best",
                 "--best-seeds", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    best = study.best_trial
    assert f"best trial {best.number} of study none-nsclc-smoke" in out
    records = [read_record(d) for d in sorted((tmp_path / "runs" / "nsclc" / "none").glob("none-nsclc-s100*"))]
    assert sorted(r["seed"] for r in records) == [1000, 1001]
    assert all(r["config"]["probe"]["C"] == best.params["probe.C"] for r in records)
    for split in ("val", "test_unseen"):
        row = next(line for line in out.splitlines() if line.startswith(split + " "))
        mean = sum(r["metrics"][f"{split}/balanced_accuracy"] for r in records) / 2
        assert f"{mean:.3f} +- " in row
    assert f"--set probe.C={best.params['probe.C']!r}" in out
    assert "--seed 1000" in out


# (e) errors are one line, no traceback


def test_bad_storage_url_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("tune", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--device", "cpu",
                   "--trials", "2", "--storage", "nosuchdb://x/y", "--out", str(tmp_path), "-q", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --storage 'nosuchdb://x/y': not a usable SQLAlchemy URL")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--trials", "2", "--storage", "sqlite:////nonexistent/dir/optuna.db"], 1, "error: --storage 'sqlite:////"
         "nonexistent/dir/optuna.db': cannot open the optuna storage (unable to open database file)"),
        (["--best"], 1, "error: no study 'none-nsclc-smoke' in sqlite:///"),
        (["--trials", "0"], 2, "error: --trials must be >= 1, got 0"),
        ([], 2, "error: tune needs --trials N"),
    ],
)
def test_errors_in_process_are_one_line(tmp_path, capsys, args, code, needle):
    from benchmark.cli import main

    assert main(["-q", "tune", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--device", "cpu",
                 "--out", str(tmp_path), *args]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(needle), err
