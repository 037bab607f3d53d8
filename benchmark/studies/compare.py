"""Real vs CLS vs MeDi per tissue source site (the paper's Figure 4), with the colour match measured.

``python -m benchmark samples --task nsclc`` loads the trained ``cls`` and ``medi`` models of a task from the model
cache (it never trains; run them first), draws, for a few sites per class, real patches, class-only samples and
MeDi samples conditioned on that site, and measures how well each reproduces the site's staining:

- delta-E: CIELAB distance between the mean colour of the generated patches and the mean colour of the site's real
  training patches (all classes; the site's staining is a property of the site);
- site match: the share of generated patches whose mean colour is nearest to the conditioned site's real mean among
  all training sites (chance = 1 / number of sites);
- class and site fidelity in the probe's feature space: the share of generated patches that a linear probe trained
  on the real training patches (the default encoder, as in the evaluation) assigns to the conditioned class, and
  to the conditioned site. Augmentation can only teach what the synthetic patches carry: class morphology (class
  fidelity well above chance) at a site's staining (site fidelity).

Columns include counterfactual cells (a class at a site that has no patch of it in training): there MeDi must
carry the site's staining over to a class it never saw at that site, which is what the augmentation relies on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.evaluation.fidelity import fidelity
from benchmark.protocols import Context

log = logging.getLogger(__name__)

UNKNOWN = "Unknown"


class CompareError(RuntimeError):
    """The comparison cannot be drawn (a model is not trained yet, ...); the message says what to run."""


@dataclass
class Comparison:
    png: bytes
    table: pd.DataFrame  # one row per (class, site): delta-E and site match for cls and medi
    summary: dict[str, float]


def pick_sites(meta: pd.DataFrame, classes: list[str], per_class: int) -> list[str]:
    """For each class, its ``per_class`` largest training sites not already chosen, sites with no other class
    first (so every class has real columns and the other classes counterfactual ones there), in class order."""
    site_col = meta["tissue_source_site"].astype(str)
    n_types = meta.groupby(site_col)["cancer_type"].nunique()
    sites: list[str] = []
    for c in classes:
        counts = site_col[meta["cancer_type"] == c].value_counts()
        ranked = [s for s in counts.index if s not in sites and s != UNKNOWN]
        # single-type sites first: there every other class is a counterfactual cell
        ranked = sorted(ranked, key=lambda s: (n_types.get(s, 1) > 1, -counts[s]))
        sites.extend(ranked[:per_class])
    return sites


def _conditions(meta: pd.DataFrame, classes: list[str], sites: list[str], n: int) -> pd.DataFrame:
    """n generation rows per (class, site); race: the site's most frequent one in training."""
    rows = []
    for c in classes:
        for s in sites:
            at_site = meta[meta["tissue_source_site"].astype(str) == s]
            race = at_site["race"].astype(str).mode().iloc[0] if len(at_site) else UNKNOWN
            template = at_site.iloc[0].to_dict() if len(at_site) else meta.iloc[0].to_dict()
            for _ in range(n):
                rows.append({**template, "cancer_type": c, "tissue_source_site": s, "race": race,
                             "is_synthetic": True})
    out = pd.DataFrame(rows)
    out["label"] = out["cancer_type"].map({c: i for i, c in enumerate(classes)})
    return out.reset_index(drop=True)


def site_centres(images: np.ndarray, sites: pd.Series) -> pd.DataFrame:
    """Each site's mean colour (CIELAB, one row per site) over its patches: what the site's staining looks like."""
    from methods.stain_norm import mean_lab

    return pd.DataFrame(mean_lab(images)).groupby(sites.astype(str).to_numpy()).mean()


def colour_match(images: np.ndarray, target_sites: np.ndarray, centres: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per image: delta-E to its target site's real mean colour, and whether that site is the nearest centre."""
    from methods.stain_norm import mean_lab

    lab = mean_lab(images)
    centre = centres.loc[target_sites].to_numpy()
    delta = np.linalg.norm(lab - centre, axis=1)
    all_d = np.linalg.norm(lab[:, None, :] - centres.to_numpy()[None, :, :], axis=2)
    nearest = centres.index.to_numpy()[all_d.argmin(axis=1)]
    return delta, nearest == target_sites


def compare(
    task_name: str,
    preset: str | None,
    device: str,
    overrides: list[str],
    results_dir: Path,
    per_class: int = 3,
    n_eval: int = 32,
    per_cell: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> Comparison:
    """Draw the figure and measure the colour match (see the module docstring)."""
    from benchmark.core.images import grid_png, mosaic
    from benchmark.core.registry import METHODS, TASKS
    from benchmark.orchestration.runner import build_config

    cache_dir = results_dir / "cache"
    cfgs = {m: build_config(m, task_name, preset, seed, device, overrides) for m in ("cls", "medi")}
    cfg = cfgs["medi"]
    task = TASKS.get(task_name)(cfg.task_data(), cfg.split, cache_dir, progress)
    train = task.splits(cfg.seed_for("split"))["train"]
    meta = train.metadata.reset_index(drop=True)
    classes = list(task.classes)
    models = {}
    for name, c in cfgs.items():
        method = METHODS.get(name)(c.method_params)
        ctx = Context(device=c.device, preset=c.preset, seed=seed, task=task, run_dir=results_dir, cache_dir=cache_dir,
                      progress=progress)
        if not method.load(train, ctx):
            raise CompareError(
                f"no trained {name} model for task {task_name} (preset {c.preset}) in {cache_dir / 'models'}; run "
                f"`python -m benchmark run --method {name} --task {task_name} --preset {c.preset}` first"
            )
        models[name] = (method, ctx)

    sites = pick_sites(meta, classes, per_class)
    cond = _conditions(meta, classes, sites, n_eval)
    images = {name: method.synthesize(cond, ctx) for name, (method, ctx) in models.items()}

    # colour match against every training site's real mean colour
    centres = site_centres(np.asarray(train.images), meta["tissue_source_site"])
    targets = cond["tissue_source_site"].astype(str).to_numpy()
    scores = {name: colour_match(images[name], targets, centres) for name in images}
    have = meta.groupby(["cancer_type", "tissue_source_site"]).size()
    rows = []
    for c in classes:
        for s in sites:
            sel = ((cond["cancer_type"] == c) & (cond["tissue_source_site"] == s)).to_numpy()
            n_real = int(have.get((c, s), 0))
            row = {"cancer_type": c, "tissue_source_site": s, "real_patches": n_real,
                   "cell": "seen" if n_real else "counterfactual"}
            for name, (delta, match) in scores.items():
                row[f"{name}_delta_e"] = float(delta[sel].mean())
                row[f"{name}_site_match"] = float(match[sel].mean())
            rows.append(row)
    table = pd.DataFrame(rows)
    summary = {"n_sites": float(len(centres)), "chance_site_match": 1.0 / max(1, len(centres))}
    for name in images:
        summary[f"{name}_delta_e"] = float(table[f"{name}_delta_e"].mean())
        summary[f"{name}_site_match"] = float(table[f"{name}_site_match"].mean())
        cf = table[table["cell"] == "counterfactual"]
        if len(cf):
            summary[f"{name}_delta_e_counterfactual"] = float(cf[f"{name}_delta_e"].mean())
            summary[f"{name}_site_match_counterfactual"] = float(cf[f"{name}_site_match"].mean())

    # class and site fidelity: probes trained on the real training patches in the evaluation's feature space
    fid_cols = fidelity(np.asarray(train.images), meta, images, cond)
    for name, values in fid_cols.items():
        for key, per_row in values.items():
            table[f"{name}_{key}"] = [float(per_row[((cond["cancer_type"] == r.cancer_type)
                                                     & (cond["tissue_source_site"] == r.tissue_source_site)).to_numpy()
                                                    ].mean()) for r in table.itertuples()]
            summary[f"{name}_{key}"] = float(per_row.mean())
            cf = (table["cell"] == "counterfactual").to_numpy()
            if cf.any():
                summary[f"{name}_{key}_counterfactual"] = float(table.loc[cf, f"{name}_{key}"].mean())

    # the figure: per class, rows real / CLS / MeDi; columns the sites
    rng = np.random.default_rng(seed)
    cells, labels = {}, []
    for k, c in enumerate(classes):
        for j, kind in enumerate(("real", "CLS", "MeDi")):
            r = 3 * k + j
            labels.append(f"{kind} · {c}")
            for col, s in enumerate(sites):
                if kind == "real":
                    pool = np.flatnonzero(((meta["cancer_type"] == c) & (meta["tissue_source_site"] == s)).to_numpy())
                    if len(pool):
                        pick = rng.choice(pool, size=min(per_cell, len(pool)), replace=False)
                        cells[(r, col)] = np.asarray(train.images)[np.sort(pick)]
                else:
                    sel = np.flatnonzero(((cond["cancer_type"] == c) & (cond["tissue_source_site"] == s)).to_numpy())
                    cells[(r, col)] = images["cls" if kind == "CLS" else "medi"][sel[:per_cell]]
    title = (f"{task_name}: real vs class-only (CLS) vs MeDi per site. Mean delta-E to the site's colour: "
             f"CLS {summary['cls_delta_e']:.1f}, MeDi {summary['medi_delta_e']:.1f}; grey = no real patch")
    png = grid_png(mosaic(cells, len(labels), len(sites), per_cell=per_cell), labels, sites, title)
    return Comparison(png, table, summary)


def latest_run_id(results_dir: Path, method: str, task: str, preset: str) -> tuple[str, str] | None:
    """(tracking URI, MLflow run id) of the newest finished record of ``method`` on ``task``."""
    from benchmark.core.tracking import read_records

    found = [r for r in read_records(results_dir)
             if r.get("method") == method and r.get("task") == task and r.get("preset") == preset
             and (r.get("mlflow") or {}).get("run_id")]
    if not found:
        return None
    rec = max(found, key=lambda r: r.get("started", ""))
    return rec["mlflow"]["tracking_uri"], rec["mlflow"]["run_id"]
