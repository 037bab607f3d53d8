"""The controls (oracle, duplicate), independent cohorts per replicate, and the declared endpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.core.config import FOLLOW
from benchmark.core.registry import METHODS, TASKS
from benchmark.evaluation import endpoints
from benchmark.orchestration.runner import build_config
from benchmark.plugins import load_plugins
from benchmark.protocols import Context
from tests.conftest import run_cli


def _ctx(task, tmp_path: Path, seed: int = 0) -> Context:
    return Context(device="cpu", preset="smoke", seed=seed, task=task, run_dir=tmp_path, cache_dir=tmp_path,
                   progress=False)


def test_oracle_adds_true_patches_of_exactly_the_combinations_medi_fills(smoke_nsclc, tmp_path):
    from methods.diffusion import MeDi
    from tasks import embedded

    task, splits = smoke_nsclc
    train = splits["train"]
    ctx = _ctx(task, tmp_path)
    oracle = METHODS.get("oracle")(METHODS.get("oracle").default_params("smoke"))
    oracle.fit(train, ctx)
    out = oracle.augment(train, ctx)
    medi = MeDi(MeDi.default_params("smoke"))
    plan = medi.plan(train, ctx)
    synthetic = out.metadata[out.metadata["is_synthetic"]]
    assert len(synthetic) == int(plan["n"].sum()) == ctx.report["n_synthetic"] > 0
    key = ["cancer_type", "tissue_source_site", "race"]
    got = synthetic.groupby(key).size().rename("n").reset_index().sort_values(key).reset_index(drop=True)
    want = plan[[*key, "n"]].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    # every added combination was missing from the training set
    seen = set(map(tuple, train.metadata[key].to_numpy()))
    assert not any(tuple(r) in seen for r in synthetic[key].to_numpy())
    # true patches: the generator's own pixels for (world, site, class); new tissue, never a copy of a real patch
    images = out.images[len(train):]
    assert images.dtype == np.uint8 and images.shape[1:] == train.images.shape[1:]
    real = {bytes(img) for img in train.images}
    assert not any(bytes(img) in real for img in images)
    spec = task.cohort_spec()
    site = synthetic["tissue_source_site"].iloc[0]
    style_mean = embedded.render(pd.DataFrame({"patch_index": [10**12 + i for i in range(16)],
                                               "tissue_source_site": site, "cancer_type": "LUAD"}),
                                 train.image_size, spec.seed).mean(axis=(0, 1, 2))
    mine = images[(synthetic["tissue_source_site"] == site).to_numpy()].mean(axis=(0, 1, 2))
    assert np.abs(style_mean - mine).max() < 25  # the site's colour, from the site's own style
    # deterministic for a fixed seed
    again = METHODS.get("oracle")(oracle.params).augment(train, _ctx(task, tmp_path))
    assert np.array_equal(again.images, out.images)


def test_oracle_is_refused_on_a_fixed_cohort(smoke_nsclc, tmp_path):
    from benchmark.core.config import ConfigError

    task, splits = smoke_nsclc
    fixed = TASKS.get("nsclc")(replace(task.data, manifest="cohort.csv"), task.split, None)
    oracle = METHODS.get("oracle")(METHODS.get("oracle").default_params("smoke"))
    with pytest.raises(ConfigError, match="needs the embedded generator.*fixed cohort \\(manifest\\)"):
        oracle.fit(splits["train"], _ctx(fixed, tmp_path))


def test_duplicate_adds_as_many_resampled_real_patches(smoke_nsclc, tmp_path):
    from methods.diffusion import MeDi

    task, splits = smoke_nsclc
    train = splits["train"]
    ctx = _ctx(task, tmp_path)
    out = METHODS.get("duplicate")(METHODS.get("duplicate").default_params("smoke")).augment(train, ctx)
    n = int(MeDi(MeDi.default_params("smoke")).plan(train, ctx)["n"].sum())
    assert len(out) == len(train) + n
    real = {bytes(img) for img in train.images}
    assert all(bytes(img) in real for img in out.images[len(train):])  # nothing new
    extra = out.metadata.iloc[len(train):]
    assert extra["is_synthetic"].all() and set(extra["patient_id"]) <= set(train.metadata["patient_id"])


def test_each_replicate_draws_its_own_cohort_and_test_patients_never_repeat():
    load_plugins()
    worlds, patients = [], []
    for seed in range(3):
        cfg = build_config("none", "nsclc", "smoke", seed, "cpu")
        assert cfg.seeds.cohort == FOLLOW and cfg.independent_cohorts()
        rep = cfg.replicate()
        assert "cohort" in rep["varied"] and rep["population"] == "independent cohorts"
        data = cfg.task_data()
        worlds.append(data.generator_seed)
        test = TASKS.get("nsclc")(data, cfg.split, None).splits(cfg.seed_for("split"))["test_unseen"]
        patients.append({(data.generator_seed, p) for p in test.metadata["patient_id"]})
    assert worlds == [0, 1, 2]
    assert all(not (patients[i] & patients[j]) for i in range(3) for j in range(i + 1, 3))
    pinned = build_config("none", "nsclc", "smoke", 2, "cpu", ["seeds.cohort=0"])
    assert pinned.task_data().generator_seed == 0 and not pinned.independent_cohorts()
    assert pinned.replicate()["population"] == "one cohort, re-split"
    manifest = build_config("none", "nsclc", "smoke", 2, "cpu", [f"data.manifest={Path(__file__)}"])
    assert "cohort" not in manifest.replicate()["varied"] and manifest.task_data() == manifest.data


def test_endpoints_parse_and_say_what_is_wrong(tmp_path):
    shipped = endpoints.load()
    assert shipped.role("medi", "cls", "worst20_group_accuracy").role == "primary"
    assert shipped.role("oracle", "none", "worst20_group_accuracy").role == "control"
    assert shipped.role("duplicate", "none", "worst20_group_accuracy").role == "negative"
    assert shipped.role("cls", "none", "balanced_accuracy") is None
    assert shipped.tasks[0] == "nsclc"
    for text, message in (
        ("alpha = 2\n[[primary]]\ncomparison = 'a - b'\nmetrics = ['m']\n", "alpha = 2 is invalid"),
        ("[[primary]]\ncomparison = 'a-b'\nmetrics = ['m']\n", "expected 'method - method'"),
        ("[[primary]]\ncomparison = 'a - b'\nmetrics = []\n", "metrics = \\[\\] is invalid"),
        ("[[control]]\ncomparison = 'a - b'\nmetrics = ['m']\n", "no \\[\\[primary\\]\\]"),
        ("[[primary]]\ncomparison = 'a - b'\nmetrics = ['m']\nfoo = 1\n", "unknown key"),
        ("[[primary\n", "not valid TOML"),
    ):
        path = tmp_path / "e.toml"
        path.write_text(text)
        with pytest.raises(endpoints.EndpointsError, match=message):
            endpoints.load(path)
    with pytest.raises(endpoints.EndpointsError, match="cannot read"):
        endpoints.load(tmp_path / "missing.toml")


def test_the_sweep_declares_its_endpoints_before_the_runs_and_keeps_them(tmp_path):
    out = tmp_path / "results"
    mine = tmp_path / "mine.toml"
    mine.write_text("[[primary]]\ncomparison = 'none - none'\nmetrics = ['balanced_accuracy']\n")
    proc = run_cli("sweep", "--methods", "none", "--tasks", "nsclc", "--seeds", "1", "--preset", "smoke",
                   "--endpoints", str(mine), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (out / "endpoints.toml").read_text() == mine.read_text()
    # another protocol into the same folder: refused, nothing overwritten
    proc = run_cli("sweep", "--methods", "none", "--tasks", "nsclc", "--seeds", "1", "--preset", "smoke",
                   "--out", str(out), "--no-progress")
    assert proc.returncode == 2 and "declares another protocol" in proc.stderr, proc.stderr
    assert (out / "endpoints.toml").read_text() == mine.read_text()
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["schema"] == 3 and record["data"]["cohort"] == "independent cohorts"
    assert record["data"]["cohort_world"] == 0 and record["replicate"]["seeds"]["cohort"] == 0
    # the report reads the declared protocol; a different one afterwards is named as such
    proc = run_cli("report", "--results", str(out), "--out", str(tmp_path / "rep"), "--no-pdf")
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "endpoints declared before the runs (results/endpoints.toml)" in md
    proc = run_cli("report", "--results", str(out), "--out", str(tmp_path / "rep2"), "--no-pdf", "--endpoints",
                   str(endpoints.DEFAULT_FILE))
    assert "NOT the protocol declared before the runs" in (tmp_path / "rep2" / "leaderboard.md").read_text()
    # the planner: a pilot's variance -> replicates per declared endpoint
    proc = run_cli("report", "--results", str(out), "--power", "0.05")
    assert proc.returncode == 0 and "replicates needed for a true difference of 0.05" in proc.stdout, proc.stderr
    proc = run_cli("report", "--results", str(out), "--power", "-1")
    assert proc.returncode == 1 and "expected a difference > 0" in proc.stderr

