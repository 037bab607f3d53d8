"""Evaluation metrics: balanced, worst-group (and worst-20%-of-groups), per-group and site-averaged accuracy, MCC.

Every function takes plain arrays and returns plain numbers or frames, so each has a hand-computed test.
An empty input gives NaN (never an exception): a split or group can legitimately be empty.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, matthews_corrcoef

NAN = float("nan")
#: the share of groups the worst-fraction accuracy averages over (worst-20% groups accuracy)
WORST_FRACTION = 0.2


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else NAN


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (sklearn's definition); NaN when empty."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return NAN
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def mcc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Matthews correlation coefficient (multi-class); NaN when empty, 0 when undefined (sklearn)."""
    if len(y_true) == 0:
        return NAN
    return float(matthews_corrcoef(y_true, y_pred))


def group_table(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: pd.Series | np.ndarray,
    min_group_size: int,
    patients: pd.Series | np.ndarray | None = None,
    min_group_patients: int = 1,
) -> pd.DataFrame:
    """One row per group: n (patches), patients, correct, accuracy, and ``flagged`` when the group has fewer than
    ``min_group_size`` patches or ``min_group_patients`` patients (reported, not dropped). Without ``patients``
    every patch counts as its own patient."""
    columns = ["group", "n", "patients", "correct", "accuracy", "flagged"]
    ids = np.arange(len(y_true)) if patients is None else np.asarray(patients, dtype=object)
    frame = pd.DataFrame(
        {"group": np.asarray(groups, dtype=object), "patient": ids, "correct": np.asarray(y_true) == y_pred}
    )
    if frame.empty:
        return pd.DataFrame(columns=columns)
    grouped = frame.groupby("group", sort=True)
    table = grouped["correct"].agg(n="size", correct="sum").reset_index()
    table["patients"] = grouped["patient"].nunique().to_numpy()
    table["correct"] = table["correct"].astype(int)
    table["accuracy"] = table["correct"] / table["n"]
    table["flagged"] = (table["n"] < min_group_size) | (table["patients"] < min_group_patients)
    return table[columns]


def worst_group_accuracy(table: pd.DataFrame) -> float:
    """Lowest accuracy over the groups that are not flagged as too small; NaN when none qualifies."""
    ok = table[~table["flagged"].astype(bool)] if len(table) else table
    return float(ok["accuracy"].min()) if len(ok) else NAN


def worst_fraction_mean(acc: np.ndarray, fraction: float = WORST_FRACTION) -> np.ndarray:
    """Per row of ``acc`` (B x groups, NaN = group absent): the mean of the lowest ceil(fraction x k) of its k finite
    values (at least one); NaN for a row without any."""
    acc = np.atleast_2d(acc)
    k = np.isfinite(acc).sum(axis=1)
    take = np.maximum(1, np.ceil(fraction * k - 1e-9)).astype(int)
    ordered = np.sort(np.where(np.isfinite(acc), acc, np.inf), axis=1)  # absent groups last
    keep = np.arange(acc.shape[1])[None, :] < take[:, None]
    out = _safe_ratio(np.where(keep, ordered, 0).sum(axis=1), take.astype(float))
    return np.where(k > 0, out, np.nan)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def worst20_group_accuracy(table: pd.DataFrame) -> float:
    """Mean accuracy of the worst 20% of the groups that are not flagged (at least one group): the worst-group
    accuracy's stable companion, which still moves when one group is lost by every method."""
    ok = table[~table["flagged"].astype(bool)] if len(table) else table
    return float(worst_fraction_mean(ok["accuracy"].to_numpy(dtype=float))[0]) if len(ok) else NAN


def site_averaged_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, sites: np.ndarray) -> float:
    """Balanced accuracy within each site, averaged over sites (the paper's TSS-averaged metric)."""
    y_true, y_pred, sites = np.asarray(y_true), np.asarray(y_pred), np.asarray(sites, dtype=object)
    if len(y_true) == 0:
        return NAN
    values = [balanced_accuracy(y_true[sites == s], y_pred[sites == s]) for s in pd.unique(sites)]
    return float(np.mean(values))


ALIGNED, MISALIGNED, MIXED, UNSEEN_SITE = "aligned", "misaligned", "mixed", "unseen_site"


def site_alignment(
    train_sites: np.ndarray, train_labels: np.ndarray, sites: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Whether each patch's class is what its site mostly sent in training (the shortcut's answer).

    ``aligned``: the site's training share of the patch's class is >= 2/3; ``misaligned``: <= 1/3; ``mixed``:
    between; ``unseen_site``: the site has no training patch. A probe that reads site style does well on aligned
    patches and badly on misaligned ones.
    """
    train = pd.DataFrame({"site": np.asarray(train_sites, dtype=object), "label": np.asarray(train_labels)})
    share = train.groupby("site")["label"].value_counts(normalize=True)
    totals = set(train["site"])
    out = np.empty(len(sites), dtype=object)
    for i, (site, label) in enumerate(zip(np.asarray(sites, dtype=object), np.asarray(labels), strict=True)):
        if site not in totals:
            out[i] = UNSEEN_SITE
            continue
        p = float(share.get((site, label), 0.0))
        out[i] = ALIGNED if p >= 2 / 3 else MISALIGNED if p <= 1 / 3 else MIXED
    return out


def evaluate(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: pd.Series | np.ndarray,
    sites: np.ndarray,
    n_classes: int,
    min_group_size: int,
    alignment: np.ndarray | None = None,
    patients: np.ndarray | None = None,
    min_group_patients: int = 1,
    min_shortcut_patients: int = 1,
) -> tuple[dict[str, float], pd.DataFrame, np.ndarray]:
    """All metrics of one split: (scalar metrics, per-group table, confusion matrix).

    With ``alignment`` (from site_alignment): balanced accuracy on site-aligned and on site-misaligned patches
    and their difference, ``shortcut_gap`` (large when the classifier reads the site instead of the tissue).
    Balanced, because aligned and misaligned patches have very different class mixes. The gap is NaN (undefined, not
    0) when the aligned or the misaligned set has fewer than ``min_shortcut_patients`` patients: a gap that rests on
    two patients measures them, not the shortcut.
    """
    table = group_table(y_true, y_pred, groups, min_group_size, patients, min_group_patients)
    metrics = {
        "n": float(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "worst_group_accuracy": worst_group_accuracy(table),
        "worst20_group_accuracy": worst20_group_accuracy(table),
        "site_balanced_accuracy": site_averaged_balanced_accuracy(y_true, y_pred, sites),
        "mcc": mcc(y_true, y_pred),
        "n_groups": float(len(table)),
        "n_groups_flagged": float(table["flagged"].sum()) if len(table) else 0.0,
    }
    if alignment is not None:
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        ids = np.arange(len(y_true)) if patients is None else np.asarray(patients, dtype=object)
        for status in (ALIGNED, MISALIGNED, UNSEEN_SITE):
            mask = alignment == status
            metrics[f"{status}_balanced_accuracy"] = balanced_accuracy(y_true[mask], y_pred[mask])
            metrics[f"n_{status}"] = float(mask.sum())
            metrics[f"patients_{status}"] = float(len(pd.unique(ids[mask])))
        enough = min(metrics["patients_aligned"], metrics["patients_misaligned"]) >= min_shortcut_patients
        metrics["shortcut_gap"] = (metrics["aligned_balanced_accuracy"] - metrics["misaligned_balanced_accuracy"]
                                   if enough else NAN)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(n_classes))) if len(y_true) else np.zeros(
        (n_classes, n_classes), dtype=int
    )
    return metrics, table, cm


def finite_or_none(value: float) -> float | None:
    """JSON-friendly: NaN / inf become None."""
    return None if value is None or not math.isfinite(value) else float(value)


#: neighbourhood sizes the robustness index chooses from (by kNN balanced accuracy, croma's rule)
RI_K_CANDIDATES = (5, 11, 21)


#: Memory (MB) sklearn may use for one chunk of the robustness index's neighbour distances.
RI_WORKING_MB = 16


def robustness_index(
    embeddings: np.ndarray, labels: np.ndarray, sites: np.ndarray, patients: np.ndarray | None = None
) -> dict[str, float]:
    """PathoROB's robustness index (Kömen et al. 2025) through ``croma``: among each patch's nearest neighbours
    (cosine), how often the evidence is biological (same class, another site) rather than technical (another class,
    the same site); 1: biology dominates, 0: the site does. Neighbours from the patch's own patient are not counted.
    Returns ``robustness_index``, its operating ``k`` and its ``support`` (the fraction of patches with informative
    neighbours); NaN where it is undefined (one site, one class, too few patches).

    Its value under no structure at all is not 0.5: with S equally common sites and random neighbours it is
    (S - 1) / S; compare methods on the same task, not to a fixed level."""
    import logging
    import warnings

    from croma import RI

    n = len(embeddings)
    empty = {"robustness_index": NAN, "robustness_k": NAN, "robustness_support": NAN}
    labels, sites = np.asarray(labels).astype(str), np.asarray(sites).astype(str)
    if n <= max(RI_K_CANDIDATES) or len(np.unique(labels)) < 2 or len(np.unique(sites)) < 2:
        return empty
    groups = np.arange(n).astype(str) if patients is None else np.asarray(patients).astype(str)
    manifest = pd.DataFrame({"sample_id": np.arange(n).astype(str), "image_path": np.arange(n).astype(str),
                             "label": labels, "group_id": groups, "site": sites})
    features = np.ascontiguousarray(embeddings, dtype=np.float64)
    from sklearn import config_context

    try:
        # croma's neighbours are sklearn's, whose brute-force distances are computed in row chunks of up to
        # ``working_memory`` MB (1 GB by default, quadratic in the split up to it): capped here, so the memory stays
        # bounded on a large split (one chunk, as before, for splits of up to ~1,400 patches)
        with warnings.catch_warnings(), config_context(working_memory=RI_WORKING_MB):
            warnings.simplefilter("ignore")  # croma warns about low support; the support is returned
            result = RI.compute(features, manifest, confounder_column="site", k_candidates=list(RI_K_CANDIDATES))
    except ValueError as exc:  # croma's own input checks (e.g. no informative pair at all)
        logging.getLogger(__name__).warning("robustness index undefined: %s", exc)
        return empty
    return {"robustness_index": float(result.value), "robustness_k": float(result.k),
            "robustness_support": float(result.support)}
