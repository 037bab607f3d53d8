"""Generation plans: which (class, metadata) combinations a generative method synthesizes, and how many of each.

Shared by every generative method (medi, cls, cyclegan), so they synthesize the same combinations and counts and
differ only in how they make the pixels.

- ``fill`` (default, the paper's OOD mode): every class at every training combination of the conditioning
  attributes (e.g. site x race) it lacks: LUAD in the style of a site that only ever sent LUSC.
- ``balance``: every (class, combination) brought towards the count of the largest one.

The total is ``ratio`` x the number of real training patches, spread over the planned combinations
(equally for fill, in proportion to the deficit for balance) with exact integer totals.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from benchmark.core.data import METADATA_COLUMNS, UNKNOWN

PLAN_MODES = ("fill", "balance")
NUMERIC_ATTRIBUTES = ("age_at_index",)


def _largest_remainder(weights: np.ndarray, total: int, seed: int) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total``; ties broken by a seeded order."""
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=int)
    exact = weights / weights.sum() * total
    base = np.floor(exact).astype(int)
    rest = total - base.sum()
    tiebreak = np.random.default_rng(seed).random(len(weights))
    order = np.lexsort((tiebreak, -(exact - base)))
    base[order[:rest]] += 1
    return base


def generation_plan(
    train: pd.DataFrame,
    classes: Sequence[str],
    attributes: Sequence[str],
    mode: str = "fill",
    ratio: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Rows: label, cancer_type, the categorical ``attributes``, and ``n`` (> 0) images to synthesize."""
    if mode not in PLAN_MODES:
        raise ValueError(f"unknown generation plan {mode!r}; choose from: {', '.join(PLAN_MODES)}")
    if ratio < 0:
        raise ValueError(f"synthetic-to-real ratio must be >= 0, got {ratio}")
    keys = [a for a in attributes if a not in NUMERIC_ATTRIBUTES]
    missing = [c for c in ("cancer_type", *keys) if c not in train.columns]
    if missing:
        raise ValueError(f"training metadata lacks column(s) {missing} needed by the generation plan")
    real = train[~train["is_synthetic"].astype(bool)] if "is_synthetic" in train else train
    # 1. counts of every (class, combination) over the training combinations
    combos = real[keys].drop_duplicates().sort_values(keys).reset_index(drop=True) if keys else pd.DataFrame(index=[0])
    grid = pd.merge(pd.DataFrame({"cancer_type": list(classes)}), combos, how="cross")
    counts = real.groupby(["cancer_type", *keys]).size().rename("count").reset_index() if keys else (
        real.groupby("cancer_type").size().rename("count").reset_index()
    )
    grid = grid.merge(counts, on=["cancer_type", *keys], how="left").fillna({"count": 0})
    grid["count"] = grid["count"].astype(int)
    # 2. which combinations, with which weight
    if mode == "fill":
        weights = (grid["count"] == 0).astype(float).to_numpy()
    else:
        weights = (grid["count"].max() - grid["count"]).clip(lower=0).astype(float).to_numpy()
    # 3. exact integer counts summing to ratio x real
    total = int(round(ratio * len(real)))
    grid["n"] = _largest_remainder(weights, total, seed)
    grid["label"] = grid["cancer_type"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    plan = grid[grid["n"] > 0].drop(columns="count").reset_index(drop=True)
    return plan[["label", "cancer_type", *keys, "n"]]


def class_totals(plan: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """The same number of images per class as ``plan``, without metadata (what class-only methods generate)."""
    totals = plan.groupby("cancer_type")["n"].sum() if len(plan) else pd.Series(dtype=int)
    rows = [{"label": i, "cancer_type": c, "n": int(totals.get(c, 0))} for i, c in enumerate(classes)]
    return pd.DataFrame([r for r in rows if r["n"] > 0], columns=["label", "cancer_type", "n"])


def expand_plan(plan: pd.DataFrame, train: pd.DataFrame, method: str, seed: int) -> pd.DataFrame:
    """One metadata row per synthetic patch (METADATA_COLUMNS, then the plan's columns beyond them), in plan order,
    ``is_synthetic=True``.

    Schema attributes not in the plan are ``Unknown``; a numeric attribute (age) is drawn from the real patients of the
    same class (and site, when planned) so that conditioning on it asks for plausible values.
    """
    rows = plan.loc[plan.index.repeat(plan["n"])].drop(columns="n").reset_index(drop=True)
    n = len(rows)
    meta = pd.DataFrame(index=range(n))
    meta["label"] = rows["label"].astype("int64") if n else pd.Series(dtype="int64")
    meta["cancer_type"] = rows["cancer_type"] if n else pd.Series(dtype=object)
    meta["project_id"] = "TCGA-" + meta["cancer_type"].astype(str)
    for col in ("tissue_source_site", "race", "gender"):
        meta[col] = rows[col] if col in rows else UNKNOWN
    meta["age_at_index"] = _draw_age(rows, train, seed) if n else pd.Series(dtype=float)
    tag = f"SYN{zlib.crc32(method.encode()) % 10000:04d}"
    meta["patient_id"] = [f"{tag}-{i:06d}" for i in range(n)]
    meta["slide_id"] = meta["patient_id"]
    meta["is_synthetic"] = True
    meta["source"] = method
    # a cohort's own columns that the plan conditions on (a manifest's ``scanner``, say) come along after the schema
    extra = [c for c in rows.columns if c not in METADATA_COLUMNS]
    for col in extra:
        meta[col] = rows[col].astype(str) if n else pd.Series(dtype=object)
    return meta[[*METADATA_COLUMNS, *extra]]


def _draw_age(rows: pd.DataFrame, train: pd.DataFrame, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ages = np.full(len(rows), np.nan)
    if "age_at_index" not in train:
        return ages
    by = ["cancer_type"] + (["tissue_source_site"] if "tissue_source_site" in rows else [])
    pools = {k: g["age_at_index"].dropna().to_numpy() for k, g in train.groupby(by)}
    overall = {k: g["age_at_index"].dropna().to_numpy() for k, g in train.groupby("cancer_type")}
    for i, row in enumerate(rows[by].itertuples(index=False, name=None)):
        pool = pools.get(row if len(by) > 1 else row[0], np.array([]))
        if len(pool) == 0:
            pool = overall.get(row[0], np.array([]))
        if len(pool):
            ages[i] = float(rng.choice(pool))
    return ages
