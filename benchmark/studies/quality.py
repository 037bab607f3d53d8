"""Time to quality: how much training a diffusion recipe needs before its samples reach a given quality.

A recipe is trained on a task's training split while :class:`SampleQuality` measures it at regular points (a
diffusion model's EMA weights; a CycleGAN's generator) with the measures of ``python -m benchmark samples``, on
fixed real patches and fixed generation conditions:

- ``fid``: Frechet distance in the default encoder's feature space between samples conditioned on the class, site
  and race of a fixed set of real training patches and those patches (same class and site mix);
- ``delta_e``: CIELAB distance between a sample's mean colour and its conditioned site's real mean colour;
- ``site_fidelity`` / ``class_fidelity``: the share of samples that linear probes trained on the real patches
  assign to the site (class) they were conditioned on, over a few sites per class;
- ``..._counterfactual``: the same over counterfactual cells only (a class at a site that sent none of it).

Each point carries the training wall time spent so far, measurement time excluded. :func:`time_to` reads off when a
curve first reaches a target FID (linear interpolation between points), which is how ``python -m benchmark perf
--stages time_to_quality`` compares a recipe with the reference one.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.core.data import Split
from benchmark.evaluation.fidelity import FidelityProbes
from benchmark.studies.compare import _conditions, colour_match, pick_sites, site_centres

MEASURES = ("fid", "delta_e", "class_fidelity", "class_fidelity_counterfactual", "site_fidelity",
            "site_fidelity_counterfactual")

LOWER_IS_BETTER = frozenset({"fid", "delta_e"})


class SampleQuality:
    """Fixed real reference patches and generation conditions for one training split.

    ``fid_rows``: real training patches whose class, site and race the generator is asked for (FID against them);
    ``cond``: a few sites per class, every class at each (counterfactual cells included), for the fidelities and
    the colour distance. :meth:`measure` samples a diffusion model; :meth:`score` takes images made otherwise."""

    def __init__(self, train: Split, classes: list[str], n_fid: int = 192, sites_per_class: int = 3,
                 per_cell: int = 12, seed: int = 0):
        meta = train.metadata.reset_index(drop=True)
        images = np.asarray(train.images)
        real = np.flatnonzero(~meta["is_synthetic"].astype(bool).to_numpy())
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(real, size=min(n_fid, len(real)), replace=False))
        self.fid_rows = meta.iloc[pick].reset_index(drop=True)
        self.probes = FidelityProbes(images[real], meta.iloc[real])
        self.real_features = self.probes.encoder.embed(images[pick])
        real_meta = meta.iloc[real]
        self.cond = _conditions(real_meta, list(classes), pick_sites(real_meta, list(classes), sites_per_class),
                                per_cell)
        seen = set(zip(meta["cancer_type"].astype(str), meta["tissue_source_site"].astype(str), strict=True))
        self.counterfactual = np.array([(c, s) not in seen for c, s in zip(
            self.cond["cancer_type"].astype(str), self.cond["tissue_source_site"].astype(str), strict=True)])
        self.site_colours = site_centres(images[real], real_meta["tissue_source_site"])
        self.seed = seed

    def measure(self, model, device: str = "cpu") -> dict[str, float]:
        """The measures of ``MEASURES`` for a diffusion model (``DiffusionModel``) as it is now."""
        return self.score(model.sample(self.fid_rows, device, self.seed),
                          model.sample(self.cond, device, self.seed + 1))

    def score(self, fid_images: np.ndarray, cond_images: np.ndarray) -> dict[str, float]:
        """Measures of images generated for ``fid_rows`` and for ``cond`` (in their row order)."""
        from benchmark.evaluation.fid import frechet_distance

        delta_e, _ = colour_match(cond_images, self.cond["tissue_source_site"].astype(str).to_numpy(),
                                  self.site_colours)
        out = {"fid": frechet_distance(self.real_features, self.probes.encoder.embed(fid_images)),
               "delta_e": float(delta_e.mean())}
        for key, hits in self.probes.score(cond_images, self.cond).items():
            out[key] = float(hits.mean())
            out[f"{key}_counterfactual"] = float(hits[self.counterfactual].mean()) if self.counterfactual.any() \
                else math.nan
        return out


class _Clock:
    """Training seconds: wall time since start, minus the time spent measuring."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.measuring = 0.0

    def point(self, step: int, measure) -> dict[str, Any]:
        t = time.perf_counter()
        out = {"step": step, "seconds": round(t - self.start - self.measuring, 2),
               **{k: round(v, 4) for k, v in measure().items()}}
        self.measuring += time.perf_counter() - t
        return out


def quality_curve(params, train: Split, task, quality: SampleQuality, seed: int = 0, points: int = 8,
                  device: str = "cpu", progress: bool = False) -> list[dict[str, Any]]:
    """Train a fresh diffusion model with ``params`` (no cache, no checkpoints, no previews) and measure it
    ``points`` times, evenly in steps; each point: step, training seconds so far (measurements excluded), and the
    measures."""
    from benchmark.protocols import Context
    from benchmark.training.loop import Checkpoints
    from methods.diffusion import NUMERIC, DiffusionModel, Vocabulary, train_diffusion

    params = replace(params, preview_every=0, checkpoint_every=params.steps + 1)
    vocab = Vocabulary.from_metadata(train.metadata, [a for a in params.attributes if a not in NUMERIC])
    model = DiffusionModel(params, list(task.classes), vocab, train.image_size, seed)
    curve: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(device=device, preset="", seed=seed, task=task, run_dir=Path(tmp), cache_dir=Path(tmp),
                      progress=progress, model_seed=seed)
        clock = _Clock()
        train_diffusion(model, train, Checkpoints(Path(tmp) / "ckpt"), ctx,
                        observe=lambda step: curve.append(clock.point(step, lambda: quality.measure(model, device))),
                        observe_every=max(1, params.steps // points))
    return curve


def cyclegan_curve(params, train: Split, task, quality: SampleQuality, seed: int = 0, points: int = 8,
                   device: str = "cpu") -> list[dict[str, Any]]:
    """The same for the site-conditioned CycleGAN: its translations of real patches of each row's class from
    other sites into the row's site, measured ``points`` times."""
    from benchmark.protocols import Context
    from methods.cyclegan import CycleGAN, Trainer

    method = CycleGAN(params)
    images, domains = method._prepare(train)
    trainer = Trainer(params, images, domains, len(method.vocabulary), device, seed)
    every = max(1, params.steps // points)
    ctx = Context(device=device, preset="", seed=seed, task=task, run_dir=Path("."), cache_dir=Path("."),
                  progress=False, model_seed=seed)

    def measure() -> dict[str, float]:
        method.generator = trainer.G
        return quality.score(method.synthesize(quality.fid_rows, ctx), method.synthesize(quality.cond, ctx))

    curve: list[dict[str, Any]] = []
    clock = _Clock()
    for step in range(params.steps):
        trainer.step(step)
        if (step + 1) % every == 0 or step + 1 == params.steps:
            curve.append(clock.point(step + 1, measure))
    return curve


def time_to(curve: list[dict[str, Any]], target: float, measure: str = "fid") -> float:
    """Training seconds at which ``curve`` first reaches ``target`` (lower is better for fid and delta_e, higher
    for the fidelities), linearly interpolated from the point before; NaN if it never does."""
    lower = measure in LOWER_IS_BETTER
    previous = {"seconds": 0.0, measure: math.nan}
    for point in curve:
        value = point[measure]
        if (value <= target) if lower else (value >= target):
            before = previous[measure]
            if not math.isfinite(before) or before == value:
                return float(point["seconds"])
            frac = (before - target) / (before - value)
            return float(previous["seconds"] + frac * (point["seconds"] - previous["seconds"]))
        previous = point
    return math.nan
