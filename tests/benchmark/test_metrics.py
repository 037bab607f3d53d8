"""Known-answer tests for every metric, computed by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from benchmark.evaluation import metrics as M


def test_balanced_accuracy_known_answer():
    # class 0: 3 of 4 right (0.75); class 1: 1 of 2 right (0.5) -> 0.625; plain accuracy 4/6
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0, 0, 0, 1, 1, 0])
    assert M.balanced_accuracy(y, p) == pytest.approx(0.625)
    assert M.accuracy(y, p) == pytest.approx(4 / 6)


def test_balanced_accuracy_ignores_classes_absent_from_truth():
    # only class 1 present: balanced accuracy is its recall, 2/3
    assert M.balanced_accuracy(np.array([1, 1, 1]), np.array([1, 0, 1])) == pytest.approx(2 / 3)


def test_empty_inputs_are_nan_not_errors():
    empty = np.array([], dtype=int)
    assert math.isnan(M.balanced_accuracy(empty, empty))
    assert math.isnan(M.accuracy(empty, empty))
    assert math.isnan(M.mcc(empty, empty))
    assert math.isnan(M.site_averaged_balanced_accuracy(empty, empty, np.array([], dtype=object)))
    table = M.group_table(empty, empty, np.array([], dtype=object), min_group_size=5)
    assert len(table) == 0
    assert math.isnan(M.worst_group_accuracy(table))


def test_mcc_known_answer():
    # TP=2, TN=1, FP=1, FN=0 -> (2*1 - 1*0) / sqrt(3*2*2*1) = 2/sqrt(12)
    y = np.array([1, 1, 0, 0])
    p = np.array([1, 1, 1, 0])
    assert M.mcc(y, p) == pytest.approx(2 / math.sqrt(12))


def test_group_table_and_worst_group_with_small_group_flagged():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    p = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0])
    g = np.array(["a", "a", "a", "a", "b", "b", "b", "b", "c"])  # "c" is a single-sample group, wrong
    table = M.group_table(y, p, g, min_group_size=2)
    rows = table.set_index("group")
    assert rows.loc["a", "n"] == 4 and rows.loc["a", "accuracy"] == pytest.approx(0.75)
    assert rows.loc["b", "accuracy"] == pytest.approx(1.0)
    assert rows.loc["c", "n"] == 1 and rows.loc["c", "accuracy"] == 0.0
    assert bool(rows.loc["c", "flagged"]) and not bool(rows.loc["a", "flagged"])
    # the flagged group is reported but not the worst group
    assert M.worst_group_accuracy(table) == pytest.approx(0.75)
    # with min size 1 it counts
    assert M.worst_group_accuracy(M.group_table(y, p, g, min_group_size=1)) == 0.0


def test_worst_group_nan_when_every_group_is_too_small():
    table = M.group_table(np.array([0, 1]), np.array([0, 1]), np.array(["a", "b"]), min_group_size=5)
    assert table["flagged"].all()
    assert math.isnan(M.worst_group_accuracy(table))


def test_site_averaged_balanced_accuracy_known_answer():
    # site X: classes 0 (1/2) and 1 (1/1) -> 0.75; site Y: class 1 only, 0/2 -> 0.0; mean 0.375
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0, 1, 1, 0, 0])
    s = np.array(["X", "X", "X", "Y", "Y"])
    assert M.site_averaged_balanced_accuracy(y, p, s) == pytest.approx(0.375)
    # differs from the pooled balanced accuracy (class 0: 1/2, class 1: 1/3 -> 0.4167)
    assert M.balanced_accuracy(y, p) == pytest.approx((0.5 + 1 / 3) / 2)


def test_evaluate_bundles_everything():
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 1])
    groups = pd.Series(["LUAD|05|white", "LUAD|05|white", "LUSC|05|white", "LUSC|44|asian"])
    values, table, cm = M.evaluate(y, p, groups, np.array(["05", "05", "05", "44"]), 2, min_group_size=1)
    assert values["n"] == 4
    assert values["balanced_accuracy"] == pytest.approx(0.75)
    assert values["worst_group_accuracy"] == pytest.approx(0.5)
    assert values["n_groups"] == 3
    assert cm.tolist() == [[1, 1], [0, 2]]


def test_finite_or_none():
    assert M.finite_or_none(float("nan")) is None
    assert M.finite_or_none(float("inf")) is None
    assert M.finite_or_none(0.5) == 0.5


def test_site_alignment_known_answer():
    # site A sent class 0 x3, class 1 x1 (shares 0.75 / 0.25); site B sent 0 and 1 equally
    train_sites = np.array(["A", "A", "A", "A", "B", "B"])
    train_labels = np.array([0, 0, 0, 1, 0, 1])
    sites = np.array(["A", "A", "B", "C"])
    labels = np.array([0, 1, 1, 0])
    got = M.site_alignment(train_sites, train_labels, sites, labels).tolist()
    assert got == ["aligned", "misaligned", "mixed", "unseen_site"]


def test_shortcut_gap_in_evaluate():
    # site A sent class 0, site B class 1; the classifier answers with the site's class
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0, 0, 1, 1, 0, 1])
    alignment = np.array(["aligned", "aligned", "aligned", "aligned", "misaligned", "misaligned"])
    values, _, _ = M.evaluate(y, p, np.array(["g"] * 6), np.array(["A"] * 6), 2, 1, alignment)
    assert values["aligned_balanced_accuracy"] == 1.0 and values["misaligned_balanced_accuracy"] == 0.0
    assert values["shortcut_gap"] == 1.0 and values["n_misaligned"] == 2
    assert math.isnan(values["unseen_site_balanced_accuracy"])


def test_robustness_index_known_answers():
    """Embeddings that carry only the class: 1; only the site: 0; nothing: (S - 1) / S for S equally common sites
    (random neighbours are of another site (S-1)/S of the time, of the same class half of it); one site: NaN."""
    rng = np.random.default_rng(0)
    n, sites_n = 600, 5
    labels, sites = rng.integers(0, 2, n), rng.integers(0, sites_n, n)
    patients = np.arange(n) // 6
    noise = rng.normal(size=(n, 8))
    biology = M.robustness_index(np.hstack([3 * np.eye(2)[labels], noise]), labels, sites, patients)
    technical = M.robustness_index(np.hstack([3 * np.eye(sites_n)[sites], noise]), labels, sites, patients)
    null = M.robustness_index(noise, labels, sites, patients)
    assert biology["robustness_index"] == 1.0 and biology["robustness_support"] == 1.0
    assert technical["robustness_index"] < 0.01
    assert abs(null["robustness_index"] - (sites_n - 1) / sites_n) < 0.05
    assert math.isnan(M.robustness_index(noise, labels, np.zeros(n), patients)["robustness_index"])
