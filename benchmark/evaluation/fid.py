"""Frechet distances between synthetic and real patches, in a named feature space, per cancer type and averaged.

Feature spaces (every metric name carries one):
- ``inception``: torch-fidelity's InceptionV3 (pool3, 2048-d), the standard FID, with weights from a local file
  (``$MEDIBENCH_INCEPTION_WEIGHTS``, or ``pt_inception-2015-12-05-6726825d.pth`` in the torch hub cache's
  ``checkpoints`` folder); nothing is downloaded.
- a domain encoder: the probe's encoder (``fbank`` by default, ``uni`` for the pathology foundation model the
  literature recommends for histology FID, or ``timm-<model>``).

Each space is a torchmetrics ``FrechetInceptionDistance(feature=<nn.Module with num_features>)``. The point estimate
is torchmetrics'; the confidence interval is a bootstrap over samples (real and synthetic resampled independently)
with an exact low-rank Frechet distance on the cached features. Metric names::

    fid/<space>/<cancer_type>            fid/<space>/<cancer_type>/ci_low, .../ci_high, .../n_real, .../n_synthetic
    fid/<space>/mean                     the average over cancer types (the paper's Figure 3), with ci_low, ci_high
    fid/<space>/n_real, n_synthetic      sample counts over all cancer types
    fid/<space>/dim                      feature dimension
    fid/<space>/small_n                  number of cancer types with fewer samples than feature dimensions
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmark.core.config import ConfigError

if TYPE_CHECKING:
    from benchmark.core.config import ProbeConfig
    from benchmark.core.data import Split
    from benchmark.evaluation.encoders import Encoder
    from benchmark.protocols import Context, Method

log = logging.getLogger(__name__)

INCEPTION = "inception"
INCEPTION_ENV = "MEDIBENCH_INCEPTION_WEIGHTS"
#: The expected file (pytorch-fid's conversion of the TF 2015-12-05 graph; same keys as torch-fidelity's).
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: What torch-fidelity itself caches when it once downloaded its weights (the same TF graph), also accepted.
INCEPTION_FILE_FIDELITY = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FEATURES = ("64", "192", "768", "2048")
#: Suffixes of fid/<space>/<suffix> that are not cancer types.
RESERVED = ("mean", "n_real", "n_synthetic", "dim", "small_n")


class InceptionWeightsMissing(ConfigError):
    """The InceptionV3 weights file for the ``inception`` feature space is not on this machine."""


class SmallSampleWarning(UserWarning):
    """Fewer samples than feature dimensions: the covariance is singular and FID is biased and unstable."""


@dataclass(frozen=True)
class FidConfig:
    """How FID is measured after a generative method's run."""

    max_per_class: int = 200  # real held-out rows per cancer type (synthetic images are made for the same rows)
    bootstrap: int = 200  # bootstrap replicates for the confidence interval (0: no interval)
    ci: float = 0.95  # confidence level
    batch_size: int = 64  # images per feature-extractor call
    inception: str = "auto"  # "auto": when its weights file is found (else a warning), "on": required, "off"


FID_PRESETS: dict[str, FidConfig] = {
    "smoke": FidConfig(max_per_class=16, bootstrap=50),
    "cpu": FidConfig(),
    "gpu": FidConfig(max_per_class=1000),
    "paper": FidConfig(max_per_class=2500),
}


def fid_config(preset: str) -> FidConfig:
    """The FID settings of a preset (the cpu ones for an unknown preset name)."""
    return FID_PRESETS.get(preset, FidConfig())


def space_name(encoder_name: str) -> str:
    """A feature-space name usable in a metric name: ``timm:resnet18`` -> ``timm-resnet18``."""
    name = encoder_name.replace(":", "-").replace("/", "-").strip()
    if not name:
        raise ValueError(f"empty feature-space name from encoder {encoder_name!r}")
    return name


# ---------------------------------------------------------------------------------------------------------------
# feature extractors as torchmetrics ``feature=`` modules


class FeatureModule(nn.Module):
    """A frozen feature extractor for torchmetrics' ``feature=``: uint8 N x 3 x H x W -> float N x num_features."""

    num_features: int = 0
    space: str = ""

    def train(self, mode: bool = True) -> FeatureModule:
        return super().train(False)  # always eval: torchmetrics may call .train() on the metric


class EncoderFeatures(FeatureModule):
    """A benchmark encoder (fbank, uni, timm) as a feature module; the space is named after the encoder."""

    def __init__(self, encoder: Encoder, device: str = "cpu") -> None:
        super().__init__()
        self.encoder = encoder
        self.device_name = device
        self.num_features = int(encoder.dim)
        self.space = space_name(encoder.name)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"feature space {self.space!r}: expected uint8 N x 3 x H x W, got {x.dtype} "
                             f"{tuple(x.shape)}")
        images = x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return torch.from_numpy(self.encoder.embed(images, self.device_name)).float()


class InceptionFeatures(FeatureModule):
    """torch-fidelity's InceptionV3 (weights from a local file); ``inception`` is the 2048-d pool3 space."""

    def __init__(self, net: nn.Module, feature: str, weights: Path) -> None:
        super().__init__()
        self.net = net
        self.num_features = int(feature)
        self.space = INCEPTION if str(feature) == "2048" else f"{INCEPTION}{feature}"
        self.weights = weights
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return (out[0] if isinstance(out, (tuple, list)) else out).float()


class _Recording(FeatureModule):
    """Passes features through and keeps a copy (for the bootstrap)."""

    def __init__(self, inner: FeatureModule) -> None:
        super().__init__()
        self.inner = inner
        self.num_features = int(inner.num_features)
        self.seen: list[torch.Tensor] = []
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.seen.append(out.detach().double().cpu())
        return out


def encoder_features(encoder: Encoder, device: str = "cpu") -> EncoderFeatures:
    """A benchmark encoder as a torchmetrics feature module: uint8 N x 3 x H x W -> float N x ``encoder.dim``."""
    return EncoderFeatures(encoder, device)


def inception_weight_candidates() -> list[Path]:
    """Where the Inception weights are looked for, in order: $MEDIBENCH_INCEPTION_WEIGHTS, the torch hub cache."""
    import torch.hub

    paths: list[Path] = []
    env = os.environ.get(INCEPTION_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        paths += [path / INCEPTION_FILE, path / INCEPTION_FILE_FIDELITY] if path.is_dir() else [path]
    checkpoints = Path(torch.hub.get_dir()).expanduser() / "checkpoints"
    paths += [checkpoints / INCEPTION_FILE, checkpoints / INCEPTION_FILE_FIDELITY]
    return paths


def find_inception_weights() -> Path:
    """The local Inception weights file; InceptionWeightsMissing naming the expected file when there is none."""
    candidates = inception_weight_candidates()
    for path in candidates:
        if path.is_file():
            return path
    env = os.environ.get(INCEPTION_ENV, "").strip()
    if env:
        raise InceptionWeightsMissing(
            f"FID feature space 'inception': ${INCEPTION_ENV}={env!r} is not a file (nor a folder holding "
            f"{INCEPTION_FILE}); expected the InceptionV3 weights file {INCEPTION_FILE}"
        )
    raise InceptionWeightsMissing(
        f"FID feature space 'inception' needs the InceptionV3 weights file {INCEPTION_FILE} (nothing is downloaded "
        f"here); copy it to {candidates[-2]} or set ${INCEPTION_ENV}=FILE. Looked at: "
        + ", ".join(str(p) for p in candidates)
    )


def inception_features(weights: Path | str | None = None, feature: str = "2048") -> InceptionFeatures:
    """torch-fidelity's InceptionV3 as a torchmetrics feature module (uint8 N x 3 x H x W -> float N x feature)."""
    from benchmark.core._compat import ensure_torchvision

    if str(feature) not in INCEPTION_FEATURES:
        raise ValueError(f"inception feature {feature!r}: choose from {', '.join(INCEPTION_FEATURES)}")
    path = Path(weights).expanduser() if weights else find_inception_weights()
    if not path.is_file():
        raise InceptionWeightsMissing(f"FID feature space 'inception': weights file {path} does not exist "
                                      f"(expected {INCEPTION_FILE})")
    ensure_torchvision()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        net = FeatureExtractorInceptionV3(
            "inception-v3-compat", [str(feature)], feature_extractor_weights_path=str(path)
        )
    except (RuntimeError, KeyError, ValueError, EOFError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"FID feature space 'inception': {path} is not InceptionV3 weights "
                          f"({INCEPTION_FILE}): {first}") from None
    return InceptionFeatures(net, str(feature), path)


# ---------------------------------------------------------------------------------------------------------------
# distances


@contextmanager
def single_threaded_linalg() -> Iterator[None]:
    """Dense eigensolvers on one thread: on a shared 2-core machine LAPACK's geev (torchmetrics' FID) took 47 s with
    two threads and 4.5 s with one for 2048 dimensions, and 4.2 s vs 0.03 s for 222."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature rows ``a`` (n1 x d) and ``b`` (n2 x d).

    Exact for any n and d: tr sqrt(S_a S_b) is the nuclear norm of ``A B^T`` / sqrt((n1-1)(n2-1)) for centred rows
    A, B (when samples are fewer than dimensions), or of ``S_a^1/2 S_b^1/2`` otherwise.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature arrays must be n x d with the same d, got {a.shape} and {b.shape}")
    n1, n2, d = len(a), len(b), a.shape[1]
    if n1 < 2 or n2 < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {n1} and {n2}")
    ca, cb = a - a.mean(0), b - b.mean(0)
    mean_term = float(np.sum((a.mean(0) - b.mean(0)) ** 2))
    trace_term = float(np.sum(ca**2) / (n1 - 1) + np.sum(cb**2) / (n2 - 1))
    if n1 * n2 <= d * d:
        cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    else:
        def sqrt_psd(x: np.ndarray, n: int) -> np.ndarray:
            w, v = np.linalg.eigh(x.T @ x / (n - 1))
            return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

        cross = np.linalg.svd(sqrt_psd(ca, n1) @ sqrt_psd(cb, n2), compute_uv=False).sum()
    return mean_term + trace_term - 2.0 * float(cross)


def torchmetrics_fid(
    feature: nn.Module, real: np.ndarray, fake: np.ndarray, batch_size: int = 64
) -> tuple[float, np.ndarray, np.ndarray]:
    """torchmetrics FID of uint8 N x H x W x 3 image sets through ``feature``; also the features it saw."""
    from benchmark.core._compat import ensure_torchvision

    ensure_torchvision()
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, images in (("real", real), ("synthetic", fake)):
        if len(images) < 2:
            raise ValueError(f"FID needs at least 2 {name} images, got {len(images)}")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{name} images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    recording = _Recording(feature)
    metric = FrechetInceptionDistance(feature=recording, reset_real_features=True, normalize=False)
    feats = {}
    with torch.inference_mode():
        for is_real, images in ((True, real), (False, fake)):
            recording.seen.clear()
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
                metric.update(batch, real=is_real)
            feats[is_real] = torch.cat(recording.seen).numpy()
        with single_threaded_linalg():
            value = float(metric.compute())
    return value, feats[True], feats[False]


# ---------------------------------------------------------------------------------------------------------------
# per cancer type, with a bootstrap interval


@dataclass
class SpaceResult:
    """FID in one feature space: per cancer type and averaged, with intervals and sample counts."""

    space: str
    dim: int
    per_class: dict[str, dict[str, float]]  # cancer type -> fid, ci_low, ci_high, n_real, n_synthetic
    mean: dict[str, float]  # fid, ci_low, ci_high (NaN when no cancer type had enough samples)
    warnings: list[str]

    def metrics(self) -> dict[str, float]:
        """``fid/<space>/...`` metric names -> values (see the module docstring)."""
        p = f"fid/{self.space}"
        out: dict[str, float] = {}
        for ct, row in self.per_class.items():
            out[f"{p}/{ct}"] = row["fid"]
            for key in ("ci_low", "ci_high", "n_real", "n_synthetic"):
                out[f"{p}/{ct}/{key}"] = row[key]
        out[f"{p}/mean"] = self.mean["fid"]
        out[f"{p}/mean/ci_low"] = self.mean["ci_low"]
        out[f"{p}/mean/ci_high"] = self.mean["ci_high"]
        out[f"{p}/n_real"] = float(sum(r["n_real"] for r in self.per_class.values()))
        out[f"{p}/n_synthetic"] = float(sum(r["n_synthetic"] for r in self.per_class.values()))
        out[f"{p}/dim"] = float(self.dim)
        out[f"{p}/small_n"] = float(sum(1 for r in self.per_class.values() if min(r["n_real"], r["n_synthetic"])
                                        < self.dim))
        return out


def _interval(point: float, replicates: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval of the replicates, shifted by their bias (mean - point) so it brackets the estimate."""
    reps = replicates[np.isfinite(replicates)]
    if len(reps) < 2 or not np.isfinite(point):
        return float("nan"), float("nan")
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    bias = float(reps.mean()) - point
    return max(0.0, float(lo) - bias), max(0.0, float(hi) - bias)


def _gram_distance(k11: np.ndarray, k22: np.ndarray, k12: np.ndarray) -> float:
    """frechet_distance from the Gram matrices of the rows (X1 X1^T, X2 X2^T, X1 X2^T): cost independent of d."""
    n1, n2 = len(k11), len(k22)
    mean_term = k11.mean() + k22.mean() - 2.0 * k12.mean()
    trace_term = (np.trace(k11) - n1 * k11.mean()) / (n1 - 1) + (np.trace(k22) - n2 * k22.mean()) / (n2 - 1)
    centred = k12 - k12.mean(axis=0, keepdims=True) - k12.mean(axis=1, keepdims=True) + k12.mean()
    small = centred @ centred.T if n1 <= n2 else centred.T @ centred
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(small), 0, None)).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    return float(mean_term + trace_term - 2.0 * cross)


def bootstrap_replicates(pairs: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int) -> np.ndarray:
    """n_boot x len(pairs) Frechet distances, each replicate resampling every pair's real and synthetic rows."""
    rng = np.random.default_rng(seed)
    reps = np.full((n_boot, len(pairs)), np.nan)
    grams = []
    for fr, ff in pairs:
        fr, ff = np.asarray(fr, np.float64), np.asarray(ff, np.float64)
        # few samples in many dimensions: resample Gram matrices (exact, independent of d)
        grams.append((fr @ fr.T, ff @ ff.T, fr @ ff.T) if len(fr) * len(ff) <= fr.shape[1] ** 2 else None)
    for b in range(n_boot):
        for j, (fr, ff) in enumerate(pairs):
            i1, i2 = rng.integers(0, len(fr), len(fr)), rng.integers(0, len(ff), len(ff))
            if grams[j] is None:
                reps[b, j] = frechet_distance(fr[i1], ff[i2])
            else:
                k11, k22, k12 = grams[j]
                reps[b, j] = _gram_distance(k11[np.ix_(i1, i1)], k22[np.ix_(i2, i2)], k12[np.ix_(i1, i2)])
    return reps


def fid_per_class(
    feature: nn.Module,
    real: np.ndarray,
    fake: np.ndarray,
    cancer_types: Sequence[str],
    fake_cancer_types: Sequence[str] | None = None,
    cfg: FidConfig | None = None,
    seed: int = 0,
    space: str | None = None,
) -> SpaceResult:
    """FID between the real and synthetic images of each cancer type in one feature space, and their mean.

    ``cancer_types`` labels the rows of ``real`` (and of ``fake`` unless ``fake_cancer_types`` is given). A cancer
    type with fewer than 2 images on either side is left out with a warning; one with fewer images than feature
    dimensions is kept and warned about (SmallSampleWarning).
    """
    cfg = cfg or FidConfig()
    space = space or getattr(feature, "space", None) or "custom"
    real_ct = np.asarray(cancer_types, dtype=object)
    fake_ct = real_ct if fake_cancer_types is None else np.asarray(fake_cancer_types, dtype=object)
    if len(real_ct) != len(real) or len(fake_ct) != len(fake):
        raise ValueError(f"labels do not match images: {len(real_ct)} labels for {len(real)} real images, "
                         f"{len(fake_ct)} for {len(fake)} synthetic")
    bad = sorted({str(c) for c in real_ct} & set(RESERVED))
    if bad:
        raise ValueError(f"cancer type name(s) {bad} collide with FID metric names {RESERVED}")
    dim = int(feature.num_features)
    per_class: dict[str, dict[str, float]] = {}
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    notes: list[str] = []
    for ct in sorted(pd.unique(real_ct), key=str):
        r, f = real[real_ct == ct], fake[fake_ct == ct]
        if len(r) < 2 or len(f) < 2:
            notes.append(f"FID [{space}] {ct}: left out, {len(r)} real and {len(f)} synthetic images (need >= 2 each)")
            warnings.warn(notes[-1], SmallSampleWarning, stacklevel=2)
            continue
        value, fr, ff = torchmetrics_fid(feature, r, f, cfg.batch_size)
        feats[str(ct)] = (fr, ff)
        per_class[str(ct)] = {"fid": value, "n_real": float(len(r)), "n_synthetic": float(len(f))}
        if min(len(r), len(f)) < dim:
            notes.append(
                f"FID [{space}] {ct}: {len(r)} real / {len(f)} synthetic images for {dim} feature dimensions; the "
                f"covariance is singular and the estimate is biased upward and unstable (use >= {dim} per set)"
            )
            warnings.warn(notes[-1], SmallSampleWarning, stacklevel=2)
    with single_threaded_linalg():
        reps = bootstrap_replicates(list(feats.values()), cfg.bootstrap, seed)
    for j, ct in enumerate(feats):
        lo, hi = _interval(per_class[ct]["fid"], reps[:, j], cfg.ci)
        per_class[ct].update(ci_low=lo, ci_high=hi)
    values = [row["fid"] for row in per_class.values()]
    mean = float(np.mean(values)) if values else float("nan")
    lo, hi = _interval(mean, reps.mean(axis=1), cfg.ci) if feats else (float("nan"), float("nan"))
    return SpaceResult(space, dim, per_class, {"fid": mean, "ci_low": lo, "ci_high": hi}, notes)


# ---------------------------------------------------------------------------------------------------------------
# the runner's step: synthetic vs real held-out images


def select_conditions(metadata: pd.DataFrame, max_per_class: int, seed: int) -> np.ndarray:
    """Row positions of ``metadata``: at most ``max_per_class`` per cancer type, drawn with ``seed``, sorted."""
    if max_per_class < 2:
        raise ValueError(f"max_per_class must be >= 2 for FID, got {max_per_class}")
    rng = np.random.default_rng(seed)
    keep = []
    for _, rows in metadata.groupby("cancer_type", sort=True).indices.items():
        rows = np.asarray(rows)
        keep.append(rows if len(rows) <= max_per_class else rng.choice(rows, max_per_class, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def feature_spaces(
    probe: ProbeConfig, cfg: FidConfig, encoder: Encoder | None = None, device: str = "cpu"
) -> tuple[list[FeatureModule], list[str]]:
    """The feature modules to measure in (the probe's encoder, then inception) and notes on any left out."""
    from benchmark.evaluation.encoders import build_encoder

    if cfg.inception not in ("auto", "on", "off"):
        raise ConfigError(f"FID inception setting {cfg.inception!r}: choose from auto, on, off")
    modules: list[FeatureModule] = [encoder_features(encoder if encoder is not None else build_encoder(probe), device)]
    notes = []
    if cfg.inception != "off":
        try:
            modules.append(inception_features())
        except InceptionWeightsMissing as exc:
            if cfg.inception == "on":
                raise
            notes.append(f"FID in the inception space left out: no local {INCEPTION_FILE} (docs/metrics.md)")
            log.warning("%s", notes[-1])
            log.debug("%s", exc)  # where it was looked for, and how to provide it
    return modules, notes


def method_fid_config(method: Method, preset: str, cfg: FidConfig | None = None) -> FidConfig:
    """``cfg`` (default: the preset's FID settings), with the method's own ``fid_max_per_class`` cap when it
    declares one (e.g. ``--set method.fid_max_per_class=...``)."""
    cfg = cfg or fid_config(preset)
    cap = getattr(method.params, "fid_max_per_class", None)
    return cfg if cap is None else replace(cfg, max_per_class=int(cap))


def fid_in_spaces(real: np.ndarray, fake: np.ndarray, labels: np.ndarray, probe: ProbeConfig, cfg: FidConfig,
                  ctx: Context, encoder: Encoder | None = None) -> tuple[list[SpaceResult], list[str]]:
    """FID per cancer type between ``real`` and ``fake`` (rows labelled by ``labels``) in every feature space of
    the run, and the notes: spaces left out, then each space's small-sample warnings."""
    modules, notes = feature_spaces(probe, cfg, encoder, ctx.device)
    results = []
    for module in modules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSampleWarning)  # collected in result.warnings instead
            results.append(fid_per_class(module, real, fake, labels, cfg=cfg, seed=ctx.seed, space=module.space))
        notes += results[-1].warnings
    return results, notes


def evaluate_method(
    method: Method,
    split: Split,
    probe: ProbeConfig,
    ctx: Context,
    encoder: Encoder | None = None,
    cfg: FidConfig | None = None,
) -> dict[str, float]:
    """FID metrics of a generative method: images synthesized for the held-out rows vs the real ones, per class.

    The method synthesizes one image for each selected row of ``split.metadata`` (at most ``max_per_class`` per
    cancer type, drawn with ``ctx.seed``; ``method.params.fid_max_per_class`` overrides the preset's cap), so
    synthetic and real images share class, site and demographics.
    Notes on left-out spaces and small samples go into ``ctx.report["fid"]``.
    """
    cfg = method_fid_config(method, ctx.preset, cfg)
    # 1. the rows to compare: capped per class, seeded
    rows = select_conditions(split.metadata, cfg.max_per_class, ctx.seed)
    conditions = split.metadata.iloc[rows].reset_index(drop=True)
    # 2. synthetic images for exactly those rows
    fake = np.asarray(method.synthesize(conditions, ctx))
    if fake.dtype != np.uint8 or fake.ndim != 4 or fake.shape[-1] != 3 or len(fake) != len(conditions):
        raise ValueError(f"method {method.name!r}.synthesize returned {fake.dtype} {fake.shape} for "
                         f"{len(conditions)} rows; expected uint8 {len(conditions)} x H x W x 3")
    # 3. the real images of the same rows
    real = split.subset(rows).load().images
    # 4. every feature space: per cancer type, bootstrap interval, mean
    results, notes = fid_in_spaces(real, fake, conditions["cancer_type"].astype(str).to_numpy(), probe, cfg, ctx,
                                   encoder)
    metrics: dict[str, float] = {}
    for result in results:
        for note in result.warnings:  # on the smoke preset, small samples are the point: its notice says so
            log.log(logging.DEBUG if ctx.preset == "smoke" else logging.WARNING, "%s", note)
        metrics.update(result.metrics())
        log.info("FID [%s] mean %.3f (%s)", result.space, result.mean["fid"],
                 ", ".join(f"{ct} {r['fid']:.3f} n={int(r['n_real'])}" for ct, r in result.per_class.items()))
    ctx.report["fid"] = {"spaces": [r.space for r in results], "notes": notes, "max_per_class": cfg.max_per_class,
                         "bootstrap": cfg.bootstrap, "ci": cfg.ci}
    return metrics
