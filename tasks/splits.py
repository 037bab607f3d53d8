"""Patient-level splits with held-out metadata combinations (the paper's unseen subpopulations).

1. key = the patient's values of ``heldout_keys`` (default tissue source site x race);
2. per class, a seeded shuffle of its unique keys, and the first ``heldout_fraction`` of them held out
   (the authors' code took them in sorted order: no shuffle);
3. leakage guard: a key held out for one class is held out for every class (no key on both sides); with
   ``guard="site"`` every site that has a held-out key is held out entirely (the authors' rule);
4. test_unseen = patients with a held-out key; the other patients are split by class into
   train / val / test_seen with the configured fractions.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from benchmark.core.config import SplitConfig


class SplitError(ValueError):
    """The data cannot be split as configured (the message says which class or column)."""


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def patient_table(metadata: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """One row per patient with its class and key columns; a patient with two values of a column is an error."""
    missing = [c for c in ("patient_id", "cancer_type", *columns) if c not in metadata.columns]
    if missing:
        raise SplitError(f"metadata lacks column(s) {missing} needed to split; columns are {list(metadata.columns)}")
    cols = ["cancer_type", *columns]
    per_patient = metadata.groupby("patient_id", sort=True)[cols].nunique()
    bad = per_patient[(per_patient > 1).any(axis=1)]
    if len(bad):
        col = bad.columns[(bad > 1).any(axis=0)][0]
        raise SplitError(f"patient {bad.index[0]!r} has several values of {col!r}; splits are by patient")
    return metadata.groupby("patient_id", sort=True)[cols].first().reset_index()


def heldout_keys(patients: pd.DataFrame, cfg: SplitConfig, seed: int) -> set[tuple]:
    """The held-out keys after the shuffle and the leakage guard."""
    keycols = list(cfg.heldout_keys)
    held: set[tuple] = set()
    for cancer_type in sorted(patients["cancer_type"].unique()):
        keys = sorted(set(map(tuple, patients.loc[patients["cancer_type"] == cancer_type, keycols].to_numpy())))
        if len(keys) < 2:
            continue  # a class with one key keeps it: nothing to hold out without losing the class in training
        order = _rng(seed, "heldout", cancer_type).permutation(len(keys))
        n_held = min(len(keys) - 1, max(1, int(round(cfg.heldout_fraction * len(keys)))))
        held.update(keys[i] for i in order[:n_held])
    if cfg.guard == "site" and "tissue_source_site" in keycols:
        pos = keycols.index("tissue_source_site")
        sites = {k[pos] for k in held}
        all_keys = set(map(tuple, patients[keycols].to_numpy()))
        held |= {k for k in all_keys if k[pos] in sites}
    return held


def assign_splits(metadata: pd.DataFrame, cfg: SplitConfig, seed: int) -> pd.Series:
    """The split name of every row: train, val, test_seen or test_unseen (by patient; deterministic for seed)."""
    patients = patient_table(metadata, tuple(cfg.heldout_keys))
    keys = list(map(tuple, patients[list(cfg.heldout_keys)].to_numpy()))
    held = heldout_keys(patients, cfg, seed)
    split = pd.Series(np.where([k in held for k in keys], "test_unseen", ""), index=patients["patient_id"])
    for cancer_type in sorted(patients["cancer_type"].unique()):
        seen = patients.loc[(patients["cancer_type"] == cancer_type) & (split.to_numpy() == ""), "patient_id"]
        if len(seen) < 3:
            raise SplitError(
                f"class {cancer_type!r} has {len(seen)} patient(s) outside the held-out keys; train, val and "
                f"test_seen need at least one each (lower split.heldout_fraction or add data)"
            )
        order = seen.to_numpy()[_rng(seed, "seen", cancer_type).permutation(len(seen))]
        n_val = max(1, int(round(cfg.val_fraction * len(order))))
        n_test = max(1, int(round(cfg.test_seen_fraction * len(order))))
        split[order[:n_val]] = "val"
        split[order[n_val : n_val + n_test]] = "test_seen"
        split[order[n_val + n_test :]] = "train"
    return metadata["patient_id"].map(split).rename("split")


def describe(metadata: pd.DataFrame, split: pd.Series, cfg: SplitConfig) -> dict:
    """Counts for the run record: patches, patients and keys per split, and the realised held-out fraction."""
    out: dict = {}
    keycols = list(cfg.heldout_keys)
    for name in ("train", "val", "test_seen", "test_unseen"):
        rows = metadata[split.to_numpy() == name]
        out[name] = {
            "patches": int(len(rows)),
            "patients": int(rows["patient_id"].nunique()),
            "keys": int(len(rows[keycols].drop_duplicates())),
            "per_class": {str(k): int(v) for k, v in rows["cancer_type"].value_counts().sort_index().items()},
        }
    n_keys = len(metadata[keycols].drop_duplicates())
    out["heldout_key_fraction"] = out["test_unseen"]["keys"] / n_keys if n_keys else 0.0
    return out
