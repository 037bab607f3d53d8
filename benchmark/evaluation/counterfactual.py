"""Counterfactual quality against ground truth: how close a generator's patches of the unseen combinations are to
true patches of the same cells.

The paper's claim is about subpopulations the training data lacks. The FID of ``evaluation.fid`` compares synthetic
patches with the real test_unseen patches of their rows; on the embedded data the generator can also render the
truth of every combination the training split lacks, so a method's patches of exactly those cells are compared with
true patches of the same cells (the oracle's patches, :meth:`benchmark.protocols.Task.true_patches`):

- ``counterfactual/fid/<space>/...``: Frechet distance per cancer type (and its mean) between the method's patches
  and true patches of the same rows, in every FID feature space of the run;
- ``counterfactual/class_fidelity`` and ``counterfactual/site_fidelity``: the share of the method's patches that
  linear probes assign to the class (site) they were generated for. The probes learn from the real training
  patches and a second, separate draw of true patches of the same cells: trained on the real patches alone, where
  site predicts class, a probe reads a class at a site that never sent it as the site's class, and would call even
  true patches unfaithful;
- ``counterfactual/class_fidelity_true`` and ``counterfactual/site_fidelity_true``: the same probes on the true
  patches, the ceiling a generator's fidelity is read against, measured in the same run.

The cells are the task's groups (class x the other group columns, site and race) that have no real training patch,
the combinations the ``fill`` generation plan fills; rows are drawn over them as that plan draws (largest remainder,
the run's sampling seed), at most the FID's ``max_per_class`` per cancer type. A fixed cohort has no ground truth:
nothing is measured there and the run's report says so.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from benchmark.core.data import Split
from benchmark.protocols import Context, Method

log = logging.getLogger(__name__)

PREFIX = "counterfactual"
#: the salt of the true patches (Task.true_patches): a draw no method's own call count reaches
TRUTH_SALT = 63
#: the salt of the second draw of true patches the fidelity probes learn from
JUDGE_SALT = 62
#: the draws (truth, probe patches) that choose a method's settings (python -m benchmark guidance): never the above
VALIDATION_SALTS = (60, 61)


def conditions(train: Split, classes: list[str], attributes: list[str], per_class: int, seed: int) -> pd.DataFrame:
    """Generation rows of the combinations (class x ``attributes``) without a real training patch: at most
    ``per_class`` rows per cancer type, spread over the cells as the ``fill`` plan spreads them."""
    from benchmark.core.generation import expand_plan, generation_plan

    meta = train.metadata
    real = meta[~meta["is_synthetic"].astype(bool)] if "is_synthetic" in meta else meta
    ratio = per_class * len(classes) / max(len(real), 1)
    plan = generation_plan(real, classes, attributes, "fill", ratio, seed)
    if len(plan):
        plan = plan.copy()  # a class with more than its share of cells is capped at per_class
        for rows in plan.groupby("cancer_type").groups.values():
            over = int(plan.loc[rows, "n"].sum()) - per_class
            if over > 0:
                n = plan.loc[rows, "n"].to_numpy().astype(float)
                plan.loc[rows, "n"] = np.floor(n * per_class / n.sum()).astype(int)
        plan = plan[plan["n"] > 0].reset_index(drop=True)
    return expand_plan(plan, real, PREFIX, seed)


class Judge:
    """The ground truth of one training split's counterfactual cells: the rows to generate, true patches of them,
    and fidelity probes trained on the real training patches plus a second draw of true patches.

    ``salts``: the draws of (truth, probe patches). A run's metrics use (``TRUTH_SALT``, ``JUDGE_SALT``); choosing
    a method's settings on them would tune to the reported truth, so the guidance frontier judges on its own draws
    (``VALIDATION_SALTS``), as a validation set."""

    def __init__(self, train: Split, task, per_class: int, seed: int,
                 salts: tuple[int, int] = (TRUTH_SALT, JUDGE_SALT)):
        from benchmark.evaluation.fidelity import FidelityProbes

        self.attributes = [c for c in task.group_columns if c != "cancer_type"]
        self.rows = conditions(train, list(task.classes), self.attributes, per_class, seed)
        self.cells = len(self.rows.drop_duplicates(["cancer_type", *self.attributes])) if len(self.rows) else 0
        if len(self.rows) < 2:
            return
        self.truth = task.true_patches(self.rows, seed, salts[0])
        meta = train.metadata
        real = np.flatnonzero(~meta["is_synthetic"].astype(bool).to_numpy())
        # the probes' own true patches; FID between the two draws is the floor a perfect generator would score
        self.second_draw = task.true_patches(self.rows, seed, salts[1])
        self.probes = FidelityProbes(np.concatenate([np.asarray(train.subset(real).load().images), self.second_draw]),
                                     pd.concat([meta.iloc[real], self.rows], ignore_index=True))
        self.true_fidelity = {f"{PREFIX}/{key}_true": float(hits.mean())
                              for key, hits in self.probes.score(self.truth, self.rows).items()}

    def score(self, fake: np.ndarray, probe, fid_cfg, ctx: Context, encoder=None) -> tuple[dict[str, float], list]:
        """The ``counterfactual/...`` metrics of ``fake`` (one patch per row of ``rows``) and the FID's notes."""
        from benchmark.evaluation.fid import fid_in_spaces

        metrics: dict[str, float] = {f"{PREFIX}/n": float(len(self.rows)), f"{PREFIX}/cells": float(self.cells)}
        for key, hits in self.probes.score(fake, self.rows).items():
            metrics[f"{PREFIX}/{key}"] = float(hits.mean())
        metrics.update(self.true_fidelity)
        # FID against the true patches of the same rows, per cancer type, in the run's feature spaces
        results, notes = fid_in_spaces(self.truth, fake, self.rows["cancer_type"].astype(str).to_numpy(), probe,
                                       fid_cfg, ctx, encoder)
        for result in results:
            metrics.update({f"{PREFIX}/{k}": v for k, v in result.metrics().items()})
        return metrics, notes


def evaluate(method: Method, train: Split, ctx: Context, probe, encoder=None) -> dict[str, float]:
    """The ``counterfactual/...`` metrics of a generative method on a task with ground truth ({} elsewhere)."""
    from benchmark.evaluation.fid import method_fid_config

    task = ctx.task
    if not getattr(task, "has_ground_truth", False):
        ctx.report[PREFIX] = {"note": "no ground truth on a fixed cohort: counterfactual quality not measured"}
        return {}
    cfg = method_fid_config(method, ctx.preset)
    judge = Judge(train, task, cfg.max_per_class, ctx.seed)
    if len(judge.rows) < 2:
        ctx.report[PREFIX] = {"note": "the training split has every combination: no counterfactual cells"}
        return {}
    metrics, notes = judge.score(np.asarray(method.synthesize(judge.rows, ctx)), probe, cfg, ctx, encoder)
    log.info("counterfactual cells: %d rows over %d cells; class fidelity %.2f (true patches %.2f), site fidelity "
             "%.2f (true %.2f)", len(judge.rows), judge.cells, metrics[f"{PREFIX}/class_fidelity"],
             metrics[f"{PREFIX}/class_fidelity_true"], metrics[f"{PREFIX}/site_fidelity"],
             metrics[f"{PREFIX}/site_fidelity_true"])
    ctx.report[PREFIX] = {"rows": len(judge.rows), "attributes": judge.attributes, "notes": notes}
    return metrics
