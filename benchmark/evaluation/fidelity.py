"""Class and site fidelity of generated patches: linear probes trained on real patches in the evaluation's feature
space say whether a generated patch carries the class (site) it was conditioned on. Used by the counterfactual
evaluation of every generative run, the samples comparison and the time-to-quality measures."""

from __future__ import annotations

import numpy as np
import pandas as pd


class FidelityProbes:
    """Linear probes trained on real patches in the evaluation's feature space (the default encoder): one for the
    class, one for the tissue source site. ``score`` says, per generated patch, whether each probe assigns it the
    class (site) it was conditioned on."""

    COLUMNS = {"class_fidelity": "cancer_type", "site_fidelity": "tissue_source_site"}

    def __init__(self, real_images: np.ndarray, meta: pd.DataFrame):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from benchmark.evaluation.encoders import FilterBankEncoder

        self.encoder = FilterBankEncoder()
        x = self.encoder.embed(real_images)
        self.probes = {key: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
            x, meta[column].astype(str).to_numpy()) for key, column in self.COLUMNS.items()}

    def score(self, images: np.ndarray, cond: pd.DataFrame) -> dict[str, np.ndarray]:
        feats = self.encoder.embed(images)
        return {key: (self.probes[key].predict(feats) == cond[column].astype(str).to_numpy()).astype(float)
                for key, column in self.COLUMNS.items()}


def fidelity(real_images: np.ndarray, meta: pd.DataFrame, generated: dict[str, np.ndarray],
             cond: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """Per generated patch: 1 if a probe trained on the real patches predicts its conditioned class (site)."""
    probes = FidelityProbes(real_images, meta)
    return {name: probes.score(imgs, cond) for name, imgs in generated.items()}
