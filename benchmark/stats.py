"""Statistics, in one place: intervals within a run, intervals across replicates, and paired comparisons.

Units (ARCHITECTURE.md, statistics):
- within a run, the unit of resampling is the **patient** (a patient's patches share the patient's tissue, stain and
  outcome), never the patch: :func:`patient_intervals` is a percentile bootstrap over patients
  (``scipy.stats.bootstrap`` on patient indices, every metric computed from patch weights);
- across runs, the unit of replication is the **replicate** (split + generative model + sampling + probe, see
  ``RunConfig.replicate``): :func:`replicate_estimate` is a mean with a Student-t interval;
- methods are compared **paired by replicate** (same split, same seeds): :func:`paired_comparison` reports the mean
  difference with its t interval, a paired t-test (assumes independent replicates whose differences are roughly
  normal: each difference averages hundreds of patients) and an exact sign-flip permutation test
  (``scipy.stats.permutation_test``; assumes only that, without an effect, a difference is as likely positive as
  negative, and cannot go below 2 / 2**n); :func:`holm` corrects the comparisons shown together.

Every function takes plain arrays or frames and returns plain numbers, so each has a known-answer test; the
calibration of the tests under patient-clustered data is checked by simulation in tests/benchmark/test_stats.py.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

NAN = float("nan")
CONFIDENCE = 0.95
ALPHA = 0.05
TESTS = ("t", "signflip")  # the paired tests a report can lead with
#: the share of groups whose mean accuracy is the worst-group metric's stable companion
WORST_FRACTION = 0.2
#: the least share of bootstrap resamples in which a metric must be defined for a run's interval
MIN_DEFINED = 0.9
#: the metrics each run reports with a patient-bootstrap interval (``<split>/<metric>/ci_low`` and ``ci_high``)
INTERVAL_METRICS: tuple[str, ...] = (
    "balanced_accuracy", "worst_group_accuracy", "worst20_group_accuracy", "site_balanced_accuracy", "shortcut_gap",
)


# ---------------------------------------------------------------------------------------------------------------
# metrics under patch weights (a bootstrap resample is a vector of multiplicities)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    ok = np.isfinite(x)
    return _ratio(np.where(ok, x, 0).sum(axis=axis), ok.sum(axis=axis).astype(float))


def _onehot(codes: np.ndarray, width: int | None = None) -> np.ndarray:
    width = (int(codes.max()) + 1 if len(codes) else 0) if width is None else width
    m = np.zeros((len(codes), width))
    m[np.arange(len(codes)), codes] = 1.0
    return m


def worst_fraction_mean(acc: np.ndarray, fraction: float = WORST_FRACTION) -> np.ndarray:
    """Per row of ``acc`` (B x groups, NaN = group absent): the mean of the lowest ceil(fraction x k) of its k finite
    values (at least one); NaN for a row without any."""
    acc = np.atleast_2d(acc)
    k = np.isfinite(acc).sum(axis=1)
    take = np.maximum(1, np.ceil(fraction * k - 1e-9)).astype(int)
    ordered = np.sort(np.where(np.isfinite(acc), acc, np.inf), axis=1)  # absent groups last
    keep = np.arange(acc.shape[1])[None, :] < take[:, None]
    out = _ratio(np.where(keep, ordered, 0).sum(axis=1), take.astype(float))
    return np.where(k > 0, out, np.nan)


def eligible_groups(
    frame: pd.DataFrame, min_group_size: int, min_group_patients: int
) -> tuple[np.ndarray, np.ndarray]:
    """(group code of each patch, eligibility of each code): groups with at least ``min_group_size`` patches and
    ``min_group_patients`` patients in the split as it is (not as resampled)."""
    codes, _ = pd.factorize(frame["group"].astype(str), sort=True)
    n_codes = int(codes.max()) + 1 if len(codes) else 0
    patches = np.bincount(codes, minlength=n_codes)
    if "patient_id" in frame.columns:
        patients = pd.Series(frame["patient_id"].astype(str).to_numpy()).groupby(codes).nunique()
        patients = patients.reindex(range(n_codes), fill_value=0).to_numpy()
    else:
        patients = np.full(n_codes, np.iinfo(np.int64).max)
    return codes, (patches >= min_group_size) & (patients >= min_group_patients)


def weighted_metric(
    weights: np.ndarray, frame: pd.DataFrame, metric: str, min_group_size: int = 1, min_group_patients: int = 1
) -> np.ndarray:
    """``metric`` of one split's predictions under each row of ``weights`` (B x n patch multiplicities).

    ``frame`` has ``label`` and ``pred`` (and ``group``, ``patient_id``, ``tissue_source_site``, ``alignment`` for
    the metrics that need them). With all weights 1 this is the runner's metric (benchmark.metrics): accuracy,
    balanced_accuracy, worst_group_accuracy, worst20_group_accuracy, site_balanced_accuracy, shortcut_gap. Which
    groups are large enough is decided on the unweighted split.
    """
    from benchmark.metrics import ALIGNED, MISALIGNED

    y = frame["label"].to_numpy()
    correct = (y == frame["pred"].to_numpy()).astype(float)
    w = np.atleast_2d(np.asarray(weights, dtype=float))

    def balanced(wm: np.ndarray) -> np.ndarray:
        onehot_y = _onehot(pd.factorize(y, sort=True)[0])
        return _nanmean(_ratio(wm @ (onehot_y * correct[:, None]), wm @ onehot_y), axis=1)

    if metric == "accuracy":
        return _ratio(w @ correct, w.sum(axis=1))
    if metric == "balanced_accuracy":
        return balanced(w)
    if metric in ("worst_group_accuracy", "worst20_group_accuracy"):
        codes, keep = eligible_groups(frame, min_group_size, min_group_patients)
        onehot_g = _onehot(codes, len(keep))
        acc = _ratio(w @ (onehot_g * correct[:, None]), w @ onehot_g)[:, keep]
        if metric == "worst20_group_accuracy":
            return worst_fraction_mean(acc) if acc.shape[1] else np.full(len(w), np.nan)
        out = np.full(len(w), np.nan)
        ok = np.isfinite(acc).any(axis=1) if acc.shape[1] else np.zeros(len(w), bool)
        if ok.any():
            out[ok] = np.nanmin(acc[ok], axis=1)
        return out
    if metric == "site_balanced_accuracy":
        sites = frame["tissue_source_site"].astype(str).to_numpy()
        pair_codes, pairs = pd.factorize(pd.Series(sites) + "\x00" + pd.Series(y).astype(str), sort=True)
        recall = _ratio(w @ (_onehot(pair_codes) * correct[:, None]), w @ _onehot(pair_codes))  # B x pairs
        member = _onehot(pd.factorize(pd.Series(pairs).str.split("\x00").str[0], sort=True)[0])  # pairs x sites
        ok = np.isfinite(recall)
        per_site = _ratio(np.where(ok, recall, 0) @ member, ok.astype(float) @ member)  # B x sites
        return _nanmean(per_site, axis=1)
    if metric == "shortcut_gap":
        alignment = frame["alignment"].astype(str).to_numpy()
        return balanced(w * (alignment == ALIGNED)) - balanced(w * (alignment == MISALIGNED))
    raise ValueError(f"no patch-weighted definition of metric {metric!r}")


# ---------------------------------------------------------------------------------------------------------------
# within a run: a bootstrap over patients


def patient_intervals(
    frame: pd.DataFrame,
    metrics: Sequence[str],
    min_group_size: int = 1,
    min_group_patients: int = 1,
    n_resamples: int = 1000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile ``confidence`` intervals of ``metrics`` over one split's predictions, resampling patients (all of
    a drawn patient's patches come along). ``frame`` needs ``patient_id``; a metric that is undefined in too many
    resamples (e.g. a split with one patient) gets (NaN, NaN)."""
    from scipy.stats import DegenerateDataWarning, bootstrap

    patient_codes, patients = pd.factorize(frame["patient_id"].astype(str))
    n_patients = len(patients)
    out: dict[str, tuple[float, float]] = {}
    for metric in metrics:
        if n_patients < 2:
            out[metric] = (NAN, NAN)
            continue

        def statistic(idx: np.ndarray, axis: int = -1, metric: str = metric) -> np.ndarray:
            idx = np.asarray(idx)
            flat = idx.reshape(-1, idx.shape[-1]).astype(int)  # resamples of patient indices
            counts = np.stack([np.bincount(row, minlength=n_patients) for row in flat])
            values = weighted_metric(counts[:, patient_codes], frame, metric, min_group_size, min_group_patients)
            return values.reshape(idx.shape[:-1])

        if not np.isfinite(statistic(np.arange(n_patients)[None, :])).all():
            out[metric] = (NAN, NAN)  # undefined on the split itself (e.g. no group large enough)
            continue
        with warnings.catch_warnings():  # a degenerate distribution (every resample 1.0) is handled below
            warnings.simplefilter("ignore", DegenerateDataWarning)
            res = bootstrap(
                (np.arange(n_patients),), statistic, n_resamples=n_resamples, confidence_level=confidence,
                method="percentile", vectorized=True, random_state=np.random.default_rng(seed), batch=250,
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        dist = np.asarray(res.bootstrap_distribution, dtype=float)
        if not (math.isfinite(low) and math.isfinite(high)) and np.isfinite(dist).mean() >= MIN_DEFINED:
            # a resample that lost every eligible group leaves the metric undefined: the percentiles of the others
            tail = 50 * (1 - confidence)
            low, high = (float(v) for v in np.nanpercentile(dist, [tail, 100 - tail]))
        out[metric] = (low, high) if math.isfinite(low) and math.isfinite(high) else (NAN, NAN)
    return out


# ---------------------------------------------------------------------------------------------------------------
# across replicates


def finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=float)


@dataclass(frozen=True)
class Estimate:
    """Mean over replicates with a Student-t ``confidence`` interval (NaN bounds for n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float


def replicate_estimate(values: Sequence[float | None], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and t interval of the finite ``values`` (one per replicate)."""
    from scipy import stats

    v = finite(values)
    if len(v) == 0:
        return Estimate(NAN, NAN, NAN, 0, NAN)
    if len(v) < 2:
        return Estimate(float(v[0]), NAN, NAN, 1, NAN)
    sd = float(v.std(ddof=1))
    if np.ptp(v) <= 1e-12 * max(1.0, abs(float(v.mean()))):
        return Estimate(float(v.mean()), float(v.mean()), float(v.mean()), len(v), 0.0)
    ci = stats.ttest_1samp(v, 0.0).confidence_interval(confidence)
    return Estimate(float(v.mean()), float(ci.low), float(ci.high), len(v), sd)


# ---------------------------------------------------------------------------------------------------------------
# paired comparisons at the replicate level


def min_replicates(test: str, alpha: float = ALPHA, family: int = 1) -> int:
    """The fewest replicates with which ``test`` can reach ``alpha`` for the smallest p-value of a Holm family of
    ``family`` comparisons: 2 ** (1 - n) <= alpha / family for the exact sign-flip test; 3 for the t-test (two
    degrees of freedom: the least with which its variance estimate means something)."""
    if test == "signflip":
        return int(math.ceil(1 + math.log2(family / alpha) - 1e-12))
    if test == "t":
        return 3
    raise ValueError(f"unknown test {test!r}; choose from: {', '.join(TESTS)}")


@dataclass(frozen=True)
class Comparison:
    """One paired comparison over replicates: ``a - b`` on one metric."""

    a: str
    b: str
    metric: str
    n: int  # replicate pairs
    delta: float  # mean paired difference
    low: float  # t interval of the mean difference
    high: float
    effect_size: float  # Cohen's d_z: mean difference / SD of the differences
    p_t: float  # paired t-test, two-sided
    p_signflip: float  # exact sign-flip permutation test, two-sided
    test: str  # which of the two the verdict uses
    needs: int  # replicates the chosen test needs to reach ALPHA at all in this family
    p_holm: float = NAN  # the chosen test's p, Holm-adjusted within its family

    @property
    def p(self) -> float:
        return self.p_t if self.test == "t" else self.p_signflip

    @property
    def reachable(self) -> bool:
        return self.n >= self.needs

    @property
    def significant(self) -> bool:
        return self.reachable and math.isfinite(self.p_holm) and self.p_holm < ALPHA


def paired_comparison(
    a_values: Sequence[float | None],
    b_values: Sequence[float | None],
    metric: str,
    a: str = "a",
    b: str = "b",
    test: str = "t",
    family: int = 1,
    confidence: float = CONFIDENCE,
) -> Comparison:
    """``a - b`` over replicates paired by position (a pair with a non-finite value is dropped)."""
    from scipy import stats

    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose from: {', '.join(TESTS)}")
    pairs = [(float(x), float(y)) for x, y in zip(a_values, b_values, strict=True)
             if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
    d = np.asarray([x - y for x, y in pairs], dtype=float)
    n = len(d)
    needs = min_replicates(test, ALPHA, family)
    if n == 0:
        return Comparison(a, b, metric, 0, NAN, NAN, NAN, NAN, NAN, NAN, test, needs)
    delta = float(d.mean())
    if n < 2:
        return Comparison(a, b, metric, n, delta, NAN, NAN, NAN, NAN, NAN, test, needs)
    sd = float(d.std(ddof=1))
    if np.ptp(d) <= 1e-12 * max(1.0, abs(delta)):
        # identical differences (two deterministic methods): t is 0 (p = 1) or infinite (p = 0)
        return Comparison(a, b, metric, n, delta, delta, delta, NAN, 1.0 if delta == 0.0 else 0.0,
                          1.0 if delta == 0.0 else 2.0 ** (1 - n), test, needs)
    t = stats.ttest_1samp(d, 0.0)
    ci = t.confidence_interval(confidence)
    perm = stats.permutation_test(
        (d,), lambda x, axis=-1: np.mean(x, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=2**n if n <= 16 else 20_000, alternative="two-sided", random_state=0,
    )
    return Comparison(a, b, metric, n, delta, float(ci.low), float(ci.high), delta / sd, float(t.pvalue),
                      float(min(1.0, perm.pvalue)), test, needs)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries are not counted and stay NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def adjust_family(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons with ``p_holm`` set: Holm across the family, over those whose test can reach ALPHA."""
    from dataclasses import replace

    ps = [c.p if c.reachable else NAN for c in comparisons]
    return [replace(c, p_holm=float(q)) for c, q in zip(comparisons, holm(ps), strict=True)]


# ---------------------------------------------------------------------------------------------------------------
# simulation: what the tests above are calibrated against (tests/benchmark/test_stats.py, scripts/calibration.py)


def simulate_clustered_correctness(rng: np.random.Generator, n_sims: int, n_patients: int, patches: int,
                                   p_right: np.ndarray) -> np.ndarray:
    """n_sims x (patients * patches) correctness (0/1): each patient is right on all of its patches with probability
    ``p_right`` (one per simulation), the extreme of patches that share their patient's outcome."""
    per_patient = rng.random((n_sims, n_patients)) < np.asarray(p_right)[:, None]
    return np.repeat(per_patient, patches, axis=1).astype(float)


def simulate_paired_differences(rng: np.random.Generator, n_sims: int, n_reps: int, effect: float,
                                n_patients: int = 60, patches: int = 8, difficulty: float = 0.75,
                                difficulty_sd: float = 0.08) -> np.ndarray:
    """n_sims x n_reps: accuracy(method a) - accuracy(method b) per replicate, each replicate a fresh test set of
    patient-clustered patches and its own difficulty (its split and trained model), shared by the two methods;
    a is better by ``effect`` (0: the null, both from one distribution)."""
    level = difficulty + difficulty_sd * rng.standard_normal((n_sims, n_reps))
    out = np.zeros((n_sims, n_reps))
    for r in range(n_reps):
        pa = np.clip(level[:, r] + effect, 0.01, 0.99)
        pb = np.clip(level[:, r], 0.01, 0.99)
        a = simulate_clustered_correctness(rng, n_sims, n_patients, patches, pa).mean(axis=1)
        b = simulate_clustered_correctness(rng, n_sims, n_patients, patches, pb).mean(axis=1)
        out[:, r] = a - b
    return out


def patch_bootstrap_rejects(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, n_resamples: int = 500,
                            confidence: float = CONFIDENCE) -> bool:
    """Earlier versions' test, kept only to show its failure: a paired bootstrap of the accuracy difference over one
    test set's patches, as if they were independent; True when its interval excludes 0."""
    from scipy import stats

    ci = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True, vectorized=True,
                         n_resamples=n_resamples, method="percentile", confidence_level=confidence,
                         random_state=rng).confidence_interval
    return not (ci.low <= 0 <= ci.high)
