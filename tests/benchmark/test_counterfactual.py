"""Counterfactual quality against ground truth (evaluation.counterfactual): cells, ground truth, a planted failure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.core.config import PRESETS, ConfigError
from benchmark.core.registry import METHODS, TASKS
from benchmark.evaluation import counterfactual
from benchmark.plugins import load_plugins
from benchmark.protocols import Context, Method

KEY = ["cancer_type", "tissue_source_site", "race"]


def _ctx(task, tmp_path: Path) -> Context:
    return Context(device="cpu", preset="smoke", seed=0, task=task, run_dir=tmp_path, cache_dir=tmp_path,
                   progress=False)


class _Truth(Method):
    """True patches of the rows, or, with ``swap``, true patches of the other class at the same site: a generator
    that ignores the class it is asked for, the failure the measure must see."""

    name = "truth"

    def __init__(self, swap: bool = False):
        super().__init__(None)
        self.swap = swap

    @property
    def generative(self) -> bool:
        return True

    def synthesize(self, conditions, ctx):
        rows = conditions.copy()
        if self.swap:
            classes = list(ctx.task.classes)
            rows["cancer_type"] = [classes[1 - classes.index(c)] for c in rows["cancer_type"]]
        return ctx.task.true_patches(rows, ctx.seed, 7)


def test_conditions_are_exactly_the_missing_combinations_capped_per_class(smoke_nsclc):
    task, splits = smoke_nsclc
    train = splits["train"]
    rows = counterfactual.conditions(train, list(task.classes), ["tissue_source_site", "race"], 10, seed=0)
    seen = set(map(tuple, train.metadata[KEY].astype(str).to_numpy()))
    assert len(rows) > 0 and rows["is_synthetic"].all()
    assert not any(tuple(r) in seen for r in rows[KEY].astype(str).to_numpy())
    assert rows.groupby("cancer_type").size().max() <= 10
    # only combinations of sites and races the training split has (for some class)
    combos = set(map(tuple, train.metadata[KEY[1:]].astype(str).to_numpy()))
    assert set(map(tuple, rows[KEY[1:]].astype(str).to_numpy())) <= combos
    again = counterfactual.conditions(train, list(task.classes), ["tissue_source_site", "race"], 10, seed=0)
    pd.testing.assert_frame_equal(rows, again)


def test_true_patches_are_deterministic_per_salt_and_new_tissue(smoke_nsclc):
    task, splits = smoke_nsclc
    rows = splits["train"].metadata.iloc[:6]
    a, b = task.true_patches(rows, 0, 1), task.true_patches(rows, 0, 1)
    c = task.true_patches(rows, 0, 2)
    assert a.dtype == np.uint8 and a.shape == (6, *splits["train"].images.shape[1:])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    real = {bytes(img) for img in splits["train"].images}
    assert not any(bytes(img) in real for img in a)


def test_the_truth_scores_at_its_own_ceiling_and_a_class_ignoring_generator_does_not(smoke_nsclc, tmp_path):
    task, splits = smoke_nsclc
    ctx = _ctx(task, tmp_path)
    truth = counterfactual.evaluate(_Truth(), splits["train"], ctx, PRESETS["smoke"].probe)
    swapped = counterfactual.evaluate(_Truth(swap=True), splits["train"], _ctx(task, tmp_path),
                                      PRESETS["smoke"].probe)
    assert truth["counterfactual/n"] == swapped["counterfactual/n"] > 0
    assert truth["counterfactual/class_fidelity_true"] == swapped["counterfactual/class_fidelity_true"]
    # other tissue of the same cells reads as the true patches do (within sampling noise) ...
    assert abs(truth["counterfactual/class_fidelity"] - truth["counterfactual/class_fidelity_true"]) < 0.25
    # ... patches of the wrong class are read as the wrong class, and sit far from the truth in feature space
    assert swapped["counterfactual/class_fidelity"] < truth["counterfactual/class_fidelity"] - 0.2
    assert swapped["counterfactual/fid/fbank/mean"] > truth["counterfactual/fid/fbank/mean"]
    # the site was right in both: site fidelity does not move
    assert abs(swapped["counterfactual/site_fidelity"] - truth["counterfactual/site_fidelity"]) < 0.25
    assert ctx.report["counterfactual"]["attributes"] == ["tissue_source_site", "race"]


def test_oracle_uses_the_tasks_ground_truth(smoke_nsclc, tmp_path):
    task, splits = smoke_nsclc
    ctx = _ctx(task, tmp_path)
    oracle = METHODS.get("oracle")(METHODS.get("oracle").default_params("smoke"))
    oracle.fit(splits["train"], ctx)
    m = counterfactual.evaluate(oracle, splits["train"], ctx, PRESETS["smoke"].probe)
    assert 0 < m["counterfactual/fid/fbank/mean"] < 3  # a sampling floor: other tissue of the same cells
    assert all(0 <= m[f"counterfactual/{k}"] <= 1 for k in ("class_fidelity", "site_fidelity"))


def test_a_fixed_cohort_has_no_ground_truth(tmp_path):
    load_plugins()
    preset = PRESETS["smoke"]
    task = TASKS.get("nsclc")(replace(preset.data, manifest=str(tmp_path / "cohort.csv")), preset.split, None)
    assert not task.has_ground_truth
    with pytest.raises(ConfigError, match="fixed cohort"):
        task.true_patches(pd.DataFrame({"cancer_type": ["LUAD"], "tissue_source_site": ["A"]}), 0, 0)
    ctx = _ctx(task, tmp_path)
    assert counterfactual.evaluate(_Truth(), None, ctx, preset.probe) == {}
    assert "no ground truth" in ctx.report["counterfactual"]["note"]
