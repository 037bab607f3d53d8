"""evaluation.stats: known answers, agreement with the runner's metrics, and calibration under patient-clustered data.

The calibration simulations follow the benchmark's data: patients whose patches share the patient's outcome (a
patient is read right or wrong as a whole), test sets of a few dozen patients, a handful of replicates.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from benchmark.evaluation import metrics as M
from benchmark.evaluation import stats

# ---------------------------------------------------------------------------------------------------------------
# known answers


def test_holm_by_hand():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.2, float("nan")])
    # sorted 0.01, 0.03, 0.04, 0.2 -> 4 x 0.01, 3 x 0.03, max(2 x 0.04, 0.09), max(1 x 0.2, 0.09)
    np.testing.assert_allclose(adjusted[:4], [0.04, 0.09, 0.09, 0.2])
    assert math.isnan(adjusted[4])
    assert stats.holm([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_replicate_interval_is_the_student_t_interval():
    est = stats.replicate_estimate([1.0, 2.0, 3.0, None, float("nan")])
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sd 1
    assert (est.n, est.mean, est.sd) == (3, 2.0, 1.0)
    assert est.low == pytest.approx(2 - half) and est.high == pytest.approx(2 + half)
    assert half == pytest.approx(2.484, 1e-3)
    one = stats.replicate_estimate([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.low)
    assert stats.replicate_estimate([]).n == 0


def test_the_exact_sign_flip_test_and_its_floor():
    six = stats.paired_comparison([1.1, 2.3, 3.2, 4.4, 5.1, 6.6], [0, 0, 0, 0, 0, 0], "m", test="signflip")
    assert six.p_signflip == pytest.approx(2 / 64) and six.reachable and six.needs == 6
    five = stats.paired_comparison([1.1, 2.3, 3.2, 4.4, 5.1], [0] * 5, "m", test="signflip")
    assert five.p_signflip == pytest.approx(2 / 32) and not five.reachable  # 0.0625: cannot reach 0.05
    assert stats.min_replicates("signflip", 0.05, family=5) == 8  # 2**-7 <= 0.01
    assert stats.min_replicates("t") == 3
    mixed = stats.paired_comparison([1.0, -2.0, 3.0, -1.0], [0.0] * 4, "m", test="signflip")
    # |sum| >= 1 in 14 of the 16 sign patterns (only +-(1 -2 -3 +1)... give |sum| < 1): p = 14/16
    signs = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T
    d = np.array([1.0, -2.0, 3.0, -1.0])
    assert mixed.p_signflip == pytest.approx(np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12))


def test_the_paired_t_test_agrees_with_scipy_and_pairs_by_position():
    a, b = [0.80, 0.83, 0.79, 0.85, 0.81], [0.78, 0.80, 0.80, 0.81, 0.77]
    c = stats.paired_comparison(a, b, "balanced_accuracy", "medi", "cls")
    ref = sps.ttest_rel(a, b)
    assert c.p_t == pytest.approx(ref.pvalue) and c.n == 5 and c.delta == pytest.approx(0.024)
    ci = ref.confidence_interval()
    assert (c.low, c.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    d = np.subtract(a, b)
    assert c.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    dropped = stats.paired_comparison([0.8, None, 0.7], [0.6, 0.5, float("nan")], "m")
    assert dropped.n == 1 and math.isnan(dropped.p_t) and not dropped.reachable


def test_worst_fraction_mean_by_hand():
    assert stats.worst_fraction_mean(np.array([0.1, 0.5, 0.9, 0.3, 0.7]))[0] == pytest.approx(0.1)  # 1 of 5
    ten = np.array([0.9, 0.2, 0.8, 0.4, 0.6, 0.5, 0.7, 0.3, 1.0, 0.95])
    assert stats.worst_fraction_mean(ten)[0] == pytest.approx(0.25)  # 2 of 10: 0.2, 0.3
    rows = stats.worst_fraction_mean(np.array([[0.2, np.nan, 0.4], [np.nan, np.nan, np.nan]]))
    assert rows[0] == pytest.approx(0.2) and math.isnan(rows[1])


def test_groups_count_patients_and_small_groups_are_flagged():
    y = np.array([0] * 12 + [1] * 12 + [0] * 3)
    pred = np.array([0] * 12 + [1] * 6 + [0] * 6 + [1] * 3)
    groups = np.array(["A"] * 12 + ["B"] * 12 + ["C"] * 3)
    patients = np.array(["p1"] * 12 + ["p2"] * 6 + ["p3"] * 6 + ["p4"] * 3)
    table = M.group_table(y, pred, groups, 10, patients, 2)
    assert table.set_index("group")[["n", "patients", "flagged"]].to_dict("index") == {
        "A": {"n": 12, "patients": 1, "flagged": True},  # 12 patches, but one patient
        "B": {"n": 12, "patients": 2, "flagged": False},
        "C": {"n": 3, "patients": 1, "flagged": True},
    }
    assert M.worst_group_accuracy(table) == 0.5 and M.worst20_group_accuracy(table) == 0.5


def _frame(seed: int, n_patients: int = 40, patches: int = 8, groups: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n_patients), patches)
    label = patient % 2
    right = np.repeat(rng.random(n_patients) < 0.7, patches) ^ (rng.random(len(patient)) < 0.1)
    site = np.repeat(rng.integers(0, groups, n_patients), patches).astype(str)
    return pd.DataFrame({
        "patient_id": [f"P{p}" for p in patient], "label": label, "pred": np.where(right, label, 1 - label),
        "tissue_source_site": site, "group": [f"{c}|{s}" for c, s in zip(label, site, strict=True)],
        "alignment": np.where(site.astype(int) % 2 == label, M.ALIGNED, M.MISALIGNED),
    })


def test_patch_weighted_metrics_match_the_runner_at_unit_weights():
    frame = _frame(3)
    y, p = frame["label"].to_numpy(), frame["pred"].to_numpy()
    values, _, _ = M.evaluate(y, p, frame["group"], frame["tissue_source_site"].to_numpy(), 2, 10,
                              frame["alignment"].to_numpy(), frame["patient_id"].to_numpy(), 2)
    ones = np.ones((1, len(frame)))
    for metric in (*stats.INTERVAL_METRICS, "accuracy"):
        assert stats.weighted_metric(ones, frame, metric, 10, 2)[0] == pytest.approx(values[metric]), metric
    with pytest.raises(ValueError, match="'mcc'"):
        stats.weighted_metric(ones, frame, "mcc")


def test_patient_intervals_resample_whole_patients():
    frame = _frame(1)
    a = stats.patient_intervals(frame, ["accuracy", "balanced_accuracy"], n_resamples=500, seed=0)
    assert a == stats.patient_intervals(frame, ["accuracy", "balanced_accuracy"], n_resamples=500, seed=0)
    low, high = a["accuracy"]
    assert low < M.accuracy(frame["label"], frame["pred"]) < high
    # one patient: no interval; every patch right: a degenerate, exact interval
    assert all(math.isnan(v) for v in stats.patient_intervals(frame.head(8), ["accuracy"])["accuracy"])
    right = frame.assign(pred=frame["label"])
    assert stats.patient_intervals(right, ["accuracy"], n_resamples=200)["accuracy"] == (1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# calibration under patient-clustered data


def test_patient_bootstrap_covers_where_a_patch_bootstrap_does_not():
    """Coverage of the true accuracy by 95% intervals from one test set of 40 patients x 8 patches."""
    rng = np.random.default_rng(7)
    n_sims, n_patients, patches, p = 150, 40, 8, 0.7
    covered = {"patients": 0, "patches": 0}
    for _ in range(n_sims):
        right = stats.simulate_clustered_correctness(rng, 1, n_patients, patches, np.array([p]))[0]
        frame = pd.DataFrame({"patient_id": np.repeat(np.arange(n_patients), patches), "label": 1,
                              "pred": right.astype(int)})
        low, high = stats.patient_intervals(frame, ["accuracy"], n_resamples=400, seed=1)["accuracy"]
        covered["patients"] += low <= p <= high
        naive = sps.bootstrap((right,), np.mean, n_resamples=400, method="percentile",
                              random_state=np.random.default_rng(1)).confidence_interval
        covered["patches"] += naive.low <= p <= naive.high
    rate = {k: v / n_sims for k, v in covered.items()}
    assert rate["patients"] >= 0.88, rate  # nominal 0.95; Monte-Carlo SE 0.018; percentile intervals run a bit short
    assert rate["patches"] <= 0.6, rate  # the patch bootstrap treats 8 copies of one outcome as 8 observations


def test_the_replicate_level_test_is_calibrated_and_finds_a_planted_effect():
    """Null: two methods from one distribution, 5 replicates, 2000 simulations. The paired t-test must reject at
    0.05 no more often than 0.05 plus three Monte-Carlo standard errors; at a planted effect of +0.10 accuracy its
    power (measured: 0.6-0.7 at 5 replicates of 60 patients) must stay well above chance. The patch-level test of
    earlier versions (a paired bootstrap over the pooled test patches) rejects far too often on the same null."""
    rng = np.random.default_rng(2026)
    n_sims, n_reps = 2000, 5
    null = stats.simulate_paired_differences(rng, n_sims, n_reps, 0.0)
    p_null = np.array([stats.paired_comparison(d, np.zeros(n_reps), "acc").p_t for d in null])
    fpr = float(np.mean(p_null < 0.05))
    assert fpr <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / n_sims), fpr
    planted = stats.simulate_paired_differences(rng, 400, n_reps, 0.10)
    power = float(np.mean([stats.paired_comparison(d, np.zeros(n_reps), "acc").p_t < 0.05 for d in planted]))
    assert power >= 0.6, power
    # the old test on one replicate's 480 patches: paired patch bootstrap of the accuracy difference
    rejections = 0
    for _ in range(100):
        a = stats.simulate_clustered_correctness(rng, 1, 60, 8, np.array([0.75]))[0]
        b = stats.simulate_clustered_correctness(rng, 1, 60, 8, np.array([0.75]))[0]
        rejections += stats.patch_bootstrap_rejects(rng, a, b)
    assert rejections / 100 >= 0.3, rejections


# ---------------------------------------------------------------------------------------------------------------
# issue 25: corrected test, degenerate differences, bounded intervals, power, the oracle's share


def test_the_corrected_resampled_t_test_by_hand():
    """Nadeau & Bengio: variance (1/n + n_test/n_train) s^2, t on n - 1 degrees of freedom."""
    d = np.array([0.05, 0.02, 0.04, 0.01, 0.03])
    ratio = 0.5
    c = stats.paired_comparison(d, np.zeros(5), "m", resplit_ratio=ratio, test="signflip")
    se = d.std(ddof=1) * math.sqrt(1 / 5 + ratio)
    t = d.mean() / se
    assert c.p_t == pytest.approx(2 * sps.t.sf(t, 4))
    half = sps.t.ppf(0.975, 4) * se
    assert (c.low, c.high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert c.test == "t" and "Nadeau-Bengio" in c.inference  # the sign-flip test has no correction: t it is
    naive = stats.paired_comparison(d, np.zeros(5), "m")
    assert naive.p_t < c.p_t and naive.high - naive.low < c.high - c.low and naive.inference == "paired t"


def test_identical_non_zero_differences_leave_the_t_test_undefined_not_p_zero():
    c = stats.paired_comparison([0.6, 0.6, 0.6], [0.5, 0.5, 0.5], "m")
    assert c.degenerate and math.isnan(c.p_t) and math.isnan(c.low) and math.isnan(c.high)
    assert c.p_signflip == pytest.approx(0.25)  # the exact test still speaks: 2 / 2**3
    assert not c.significant
    zero = stats.paired_comparison([0.6, 0.7, 0.5], [0.6, 0.7, 0.5], "m")
    assert zero.p_t == 1.0 and zero.delta == 0.0 and not zero.degenerate


def test_replicate_intervals_of_a_bounded_metric_stay_in_its_range():
    values = [0.0, 0.05, 0.30, 0.02, 0.0]
    free = stats.replicate_estimate(values)
    bounded = stats.replicate_estimate(values, bounds=(0.0, 1.0))
    assert free.low < 0 and bounded.low == 0.0 and bounded.high == free.high
    top = stats.replicate_estimate([1.0, 0.97, 0.75], bounds=(0.0, 1.0))
    assert top.high == 1.0 and top.low > 0.3


def test_minimum_detectable_effect_matches_the_formula_and_the_noncentral_t():
    # the figures: SD 0.041 / 0.160 at 5 replicates -> 0.069 / 0.269; at 10: 0.041
    assert stats.minimum_detectable_effect(0.041, 5) == pytest.approx(0.069, abs=1e-3)
    assert stats.minimum_detectable_effect(0.160, 5) == pytest.approx(0.269, abs=1e-3)
    assert stats.minimum_detectable_effect(0.041, 10) == pytest.approx(0.041, abs=1e-3)
    # approximation s (t_{1-a/2} + t_{0.8}) / sqrt(n), close for n = 20
    approx = 0.1 * (sps.t.ppf(0.975, 19) + sps.t.ppf(0.8, 19)) / math.sqrt(20)
    assert stats.minimum_detectable_effect(0.1, 20) == pytest.approx(approx, rel=0.03)
    # power at the MDE is 0.8 by construction; simulated, too
    rng = np.random.default_rng(0)
    mde = stats.minimum_detectable_effect(0.1, 6)
    sims = rng.normal(mde, 0.1, (4000, 6))
    hits = np.mean([sps.ttest_1samp(s, 0).pvalue < 0.05 for s in sims])
    assert hits == pytest.approx(0.8, abs=0.03)
    # the planner: the fewest replicates with 80% power; re-splits of one cohort cannot shrink below their overlap
    n = stats.replicates_needed(0.157, 0.160)
    assert stats.power_of(0.157, 0.160, n) >= 0.8 > stats.power_of(0.157, 0.160, n - 1)
    assert stats.replicates_needed(0.05, 0.16, resplit_ratio=0.5) is None
    assert math.isnan(stats.minimum_detectable_effect(0.1, 1))


def test_the_share_of_the_oracle_gain_and_fieller_interval():
    gain, ceiling = [0.05, 0.04, 0.06, 0.03, 0.05], [0.10, 0.12, 0.09, 0.11, 0.10]
    f = stats.fraction_of(gain, ceiling)
    assert f.value == pytest.approx(np.mean(gain) / np.mean(ceiling))
    # Fieller's set is where the t statistic of x - r y is within the critical value: check both ends
    x, y = np.asarray(gain), np.asarray(ceiling)
    crit = sps.t.ppf(0.975, 4)
    for r in (f.low, f.high):
        z = x - r * y
        assert abs(z.mean() / (z.std(ddof=1) / math.sqrt(5))) == pytest.approx(crit, rel=1e-6)
    assert f.low < f.value < f.high
    unbounded = stats.fraction_of([0.05, 0.04], [0.1, -0.1])  # the ceiling is not away from 0: no interval
    assert math.isnan(unbounded.low)


def test_the_naive_test_on_re_splits_of_one_cohort_is_not_calibrated_and_the_corrected_one_is():
    """Null (population mean difference 0), 5 replicates that re-split one cohort of 320 patients (120 test): the
    naive paired t-test rejects far more often than 5%; the corrected one at most 0.05 + 3 Monte-Carlo SE; with a
    fresh cohort per replicate the naive test is calibrated again."""
    rng = np.random.default_rng(7)
    n_sims, n_reps, ratio = 600, 5, 120 / 200
    shared = stats.simulate_resplit_differences(rng, n_sims, n_reps, 320, 120)
    fresh = stats.simulate_resplit_differences(rng, n_sims, n_reps, 320, 120, independent=True)
    zero = np.zeros(n_reps)
    naive = np.mean([stats.paired_comparison(d, zero, "m").p_t < 0.05 for d in shared])
    corrected = np.mean([stats.paired_comparison(d, zero, "m", resplit_ratio=ratio).p_t < 0.05 for d in shared])
    independent = np.mean([stats.paired_comparison(d, zero, "m").p_t < 0.05 for d in fresh])
    limit = 0.05 + 3 * math.sqrt(0.05 * 0.95 / n_sims)
    assert naive > 0.12, naive  # measured 0.20 at 5 replicates; it grows with the replicate count
    assert corrected <= limit and independent <= limit, (corrected, independent)


def test_the_shortcut_gap_needs_patients_on_both_sides():
    y = np.array([0, 0, 1, 1, 0, 1])
    pred = np.array([0, 0, 1, 1, 1, 0])
    alignment = np.array([M.ALIGNED] * 4 + [M.MISALIGNED] * 2)
    patients = np.array(["a", "b", "c", "d", "e", "e"])  # the misaligned side is one patient
    values, _, _ = M.evaluate(y, pred, ["g"] * 6, np.array(["s"] * 6), 2, 1, alignment, patients, 1, 2)
    assert math.isnan(values["shortcut_gap"]) and values["patients_misaligned"] == 1
    values, _, _ = M.evaluate(y, pred, ["g"] * 6, np.array(["s"] * 6), 2, 1, alignment, patients, 1, 1)
    assert values["shortcut_gap"] == pytest.approx(1.0)
    frame = pd.DataFrame({"label": y, "pred": pred, "alignment": alignment, "patient_id": patients})
    assert np.isnan(stats.weighted_metric(np.ones((1, 6)), frame, "shortcut_gap", min_shortcut_patients=2)).all()
    assert "worst_group_accuracy" not in stats.INTERVAL_METRICS  # no bootstrap interval of a minimum
