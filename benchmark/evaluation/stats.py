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

from benchmark.evaluation.metrics import ALIGNED, MISALIGNED, WORST_FRACTION, worst_fraction_mean  # noqa: F401 (re-exported)

NAN = float("nan")
CONFIDENCE = 0.95
ALPHA = 0.05
TESTS = ("t", "signflip")  # the paired tests a report can lead with
#: the share of groups whose mean accuracy is the worst-group metric's stable companion
#: the least share of bootstrap resamples in which a metric must be defined for a run's interval
MIN_DEFINED = 0.9
#: the metrics each run reports with a patient-bootstrap interval (``<split>/<metric>/ci_low`` and ``ci_high``).
#: Not the worst-group accuracy: a percentile bootstrap of a minimum over groups is not a valid interval (the minimum
#: is not a smooth statistic, and groups drop out of resamples), so a run reports none for it, and says so
INTERVAL_METRICS: tuple[str, ...] = (
    "balanced_accuracy", "worst20_group_accuracy", "site_balanced_accuracy", "shortcut_gap",
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
    weights: np.ndarray, frame: pd.DataFrame, metric: str, min_group_size: int = 1, min_group_patients: int = 1,
    min_shortcut_patients: int = 1,
) -> np.ndarray:
    """``metric`` of one split's predictions under each row of ``weights`` (B x n patch multiplicities).

    ``frame`` has ``label`` and ``pred`` (and ``group``, ``patient_id``, ``tissue_source_site``, ``alignment`` for
    the metrics that need them). With all weights 1 this is the runner's metric (evaluation.metrics): accuracy,
    balanced_accuracy, worst_group_accuracy, worst20_group_accuracy, site_balanced_accuracy, shortcut_gap. Which
    groups are large enough is decided on the unweighted split.
    """

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
        ids = frame["patient_id"].astype(str).to_numpy() if "patient_id" in frame else np.arange(len(frame))
        if min(len(set(ids[alignment == ALIGNED])), len(set(ids[alignment == MISALIGNED]))) < min_shortcut_patients:
            return np.full(len(w), np.nan)  # too few patients on one side (decided on the split as it is)
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
    min_shortcut_patients: int = 1,
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
            values = weighted_metric(counts[:, patient_codes], frame, metric, min_group_size, min_group_patients,
                                     min_shortcut_patients)
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


def replicate_estimate(values: Sequence[float | None], confidence: float = CONFIDENCE,
                       bounds: tuple[float, float] | None = None) -> Estimate:
    """Mean and t interval of the finite ``values`` (one per replicate). ``bounds``: the range the metric cannot
    leave (an accuracy's [0, 1]); the interval is intersected with it. The true mean always lies in that range, so
    the intersection covers it exactly as often as the t interval does, and no bound reads below 0 or above 1."""
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
    low, high = float(ci.low), float(ci.high)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(float(v.mean()), low, high, len(v), sd)


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
    # n_test / n_train of the re-split cohort (Nadeau & Bengio's correction); 0: independent replicates
    resplit_ratio: float = 0.0
    sd: float = NAN  # SD of the paired differences
    role: str = ""  # primary, control, negative or secondary (evaluation.endpoints); "" outside a declared protocol
    family_size: int = 1  # comparisons in its Holm family
    degenerate: bool = False  # every paired difference equal and non-zero: the t-test is undefined
    alpha: float = ALPHA  # the family's level (the declared endpoints')

    @property
    def inference(self) -> str:
        """The test behind the verdict, in words."""
        if self.resplit_ratio > 0:
            return f"corrected resampled t (Nadeau-Bengio, n_test/n_train {self.resplit_ratio:.2f})"
        return "paired t" if self.test == "t" else "exact sign-flip"

    def mde(self, power: float = 0.8) -> float:
        """The smallest true difference this comparison detects with ``power`` at its family's Bonferroni level
        (what Holm's first step uses), from its observed SD and replicate count; NaN with too few replicates."""
        alpha = self.alpha / max(1, self.family_size) if self.role in ("primary", "control", "negative") \
            else self.alpha
        return minimum_detectable_effect(self.sd, self.n, alpha, power, self.resplit_ratio)

    @property
    def p(self) -> float:
        return self.p_t if self.test == "t" else self.p_signflip

    @property
    def reachable(self) -> bool:
        return self.n >= self.needs

    @property
    def significant(self) -> bool:
        return self.reachable and math.isfinite(self.p_holm) and self.p_holm < self.alpha


def paired_comparison(
    a_values: Sequence[float | None],
    b_values: Sequence[float | None],
    metric: str,
    a: str = "a",
    b: str = "b",
    test: str = "t",
    family: int = 1,
    confidence: float = CONFIDENCE,
    resplit_ratio: float = 0.0,
) -> Comparison:
    """``a - b`` over replicates paired by position (a pair with a non-finite value is dropped).

    ``resplit_ratio`` > 0 (n_test / n_train): the replicates re-split one cohort, their test and training sets
    overlap and their differences are positively correlated; the t-test then uses Nadeau & Bengio's (2003) corrected
    variance (1/n + n_test/n_train) s^2 on n - 1 degrees of freedom, and the verdict uses it whatever ``test`` says
    (the sign-flip test has no such correction).
    """
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
    if resplit_ratio > 0:
        test = "t"
        needs = min_replicates(test, ALPHA, family)
    common = dict(resplit_ratio=float(resplit_ratio), family_size=family)
    if np.ptp(d) <= 1e-12 * max(1.0, abs(delta)):
        # identical differences (deterministic metrics, few replicates): zero variance. A zero difference is no
        # difference (p 1); a non-zero one leaves the t-test undefined (not p = 0): only the sign-flip test,
        # exact at 2 / 2**n, speaks, and the interval is not given
        if delta == 0.0:
            return Comparison(a, b, metric, n, 0.0, 0.0, 0.0, NAN, 1.0, 1.0, test, needs, sd=0.0, **common)
        return Comparison(a, b, metric, n, delta, NAN, NAN, NAN, NAN, 2.0 ** (1 - n), test, needs, sd=0.0,
                          degenerate=True, **common)
    se = sd * math.sqrt(1.0 / n + resplit_ratio)
    t_stat = delta / se
    p_t = float(2 * stats.t.sf(abs(t_stat), n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    perm = stats.permutation_test(
        (d,), lambda x, axis=-1: np.mean(x, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=2**n if n <= 16 else 20_000, alternative="two-sided", random_state=0,
    )
    return Comparison(a, b, metric, n, delta, delta - half, delta + half, delta / sd, p_t,
                      float(min(1.0, perm.pvalue)), test, needs, sd=sd, **common)


# ---------------------------------------------------------------------------------------------------------------
# power: the smallest effect a design detects, and the replicates an effect needs


def power_of(delta: float, sd: float, n: int, alpha: float = ALPHA, resplit_ratio: float = 0.0) -> float:
    """Power of the two-sided paired t-test (corrected when ``resplit_ratio`` > 0) at true difference ``delta``:
    exact, from the noncentral t distribution."""
    from scipy import stats

    if n < 2 or not (math.isfinite(sd) and sd > 0) or not math.isfinite(delta):
        return NAN
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = delta / (sd * math.sqrt(1.0 / n + resplit_ratio))
    value = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if not math.isfinite(value):  # scipy's noncentral t loses its tail far from the centre: there power is ~1
        value = 1.0 if abs(nc) > crit else 0.0
    return min(1.0, value)


def minimum_detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8,
                              resplit_ratio: float = 0.0) -> float:
    """The true difference the paired t-test detects with probability ``power`` at level ``alpha`` with ``n``
    replicates whose differences have SD ``sd`` (exact noncentral t; about sd (t_{1-a/2} + t_power) / sqrt(n))."""
    from scipy.optimize import brentq

    if n < 2 or not (math.isfinite(sd) and sd > 0):
        return NAN
    scale = sd * math.sqrt(1.0 / n + resplit_ratio)
    return float(brentq(lambda x: power_of(x, sd, n, alpha, resplit_ratio) - power, 1e-9 * scale, 40 * scale))


def replicates_needed(delta: float, sd: float, alpha: float = ALPHA, power: float = 0.8,
                      resplit_ratio: float = 0.0, most: int = 10_000) -> int | None:
    """The fewest replicates (>= 2) with which a true difference ``delta`` is detected with ``power``; None when no
    count does (re-splits of one cohort: the corrected variance never falls below (n_test/n_train) s^2) or more
    than ``most`` would be needed."""
    if not (math.isfinite(sd) and sd > 0) or not math.isfinite(delta) or delta == 0:
        return None
    if power_of(abs(delta), sd, most, alpha, resplit_ratio) < power:
        return None
    lo, hi = 2, most
    if power_of(abs(delta), sd, lo, alpha, resplit_ratio) >= power:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power_of(abs(delta), sd, mid, alpha, resplit_ratio) >= power:
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------------------------
# a method's gain as a share of the oracle's


@dataclass(frozen=True)
class Fraction:
    """mean(gain) / mean(oracle gain) over paired replicates, with Fieller's interval (NaN bounds: unbounded)."""

    value: float
    low: float
    high: float
    n: int


def fraction_of(gain: Sequence[float], ceiling: Sequence[float], confidence: float = CONFIDENCE) -> Fraction:
    """The share of the ceiling's gain a method reaches: ``gain`` (method - none) and ``ceiling`` (oracle - none) per
    replicate, paired by position. Fieller's interval solves (x - r y)^2 <= t^2 var(x - r y) for r with the
    replicates' covariance; when the ceiling is not clearly away from 0 the set is unbounded (NaN bounds)."""
    from scipy import stats

    pairs = [(float(x), float(y)) for x, y in zip(gain, ceiling, strict=True) if math.isfinite(x) and math.isfinite(y)]
    n = len(pairs)
    if n == 0:
        return Fraction(NAN, NAN, NAN, 0)
    x, y = np.asarray(pairs).T
    mx, my = float(x.mean()), float(y.mean())
    value = mx / my if my != 0 else NAN
    if n < 2:
        return Fraction(value, NAN, NAN, n)
    sxx, syy = float(x.var(ddof=1)) / n, float(y.var(ddof=1)) / n
    sxy = float(np.cov(x, y, ddof=1)[0, 1]) / n
    t2 = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) ** 2
    a = my * my - t2 * syy
    b = -2 * (mx * my - t2 * sxy)
    c = mx * mx - t2 * sxx
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:  # the ceiling's mean gain is within its own noise of 0: no bounded interval
        return Fraction(value, NAN, NAN, n)
    root = math.sqrt(disc)
    return Fraction(value, (-b - root) / (2 * a), (-b + root) / (2 * a), n)


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


def simulate_resplit_differences(rng: np.random.Generator, n_sims: int, n_reps: int, n_patients: int = 240,
                                 n_test: int = 80, patient_sd: float = 0.4, model_sd: float = 0.02,
                                 independent: bool = False) -> np.ndarray:
    """n_sims x n_reps paired differences under the null (the population's mean difference is 0).

    Each patient of a cohort of ``n_patients`` carries its own difference (``patient_sd``: how much more one method
    gets right on that patient; the population mean is 0, a finite cohort's is not); a replicate draws ``n_test``
    test patients from the cohort without replacement (the rest train) and adds its own model noise. With
    ``independent`` every replicate draws a fresh cohort, as the embedded data's cohort seed does; otherwise all of a
    simulation's replicates re-split one cohort and share its mean, the case the corrected test is for (its
    n_test / n_train is ``n_test / (n_patients - n_test)``)."""
    out = np.zeros((n_sims, n_reps))
    for i in range(n_sims):
        cohort = patient_sd * rng.standard_normal(n_patients)
        for r in range(n_reps):
            if independent:
                cohort = patient_sd * rng.standard_normal(n_patients)
            test = rng.choice(n_patients, n_test, replace=False)
            out[i, r] = cohort[test].mean() + model_sd * rng.standard_normal()
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
