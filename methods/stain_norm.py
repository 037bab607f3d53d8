"""Stain normalization (torchstain Macenko or Reinhard) of the training set and of every evaluation split.

The conventional answer to site-specific staining: map every patch onto the stain appearance of one reference, so
that colour no longer tells the site. The reference is chosen deterministically: by default the median-brightness
tissue patch of the training site with the most patches (``reference_site`` picks another site,
``reference_image`` a file). torchstain fits the reference; patches are then normalized in batches on torch
tensors by a vectorized form of torchstain's own per-image algorithm (``normalize_batch``; the tests check it
against torchstain image by image).

Patches whose stains cannot be estimated (background only, too little tissue, a degenerate stain plane, a
non-finite or out-of-range result) are kept as they were and counted per split and reason in the run record
(``method_report.stain_norm``), never a crash and never NaN pixels. The record also holds the between-site colour
distance of the training set before and after normalization (``site_colour_distance``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.core.cache import scratch_rows
from benchmark.core.config import tunable
from benchmark.core.data import ArrayImages, ImageSource, Split
from benchmark.core.registry import METHODS
from benchmark.protocols import Context, Method

log = logging.getLogger(__name__)

NORMALIZERS = ("macenko", "reinhard")
#: Why a patch was left unnormalized (index = the reason code ``normalize_batch`` returns; 0 = normalized).
REASONS: tuple[str, ...] = ("ok", "too_little_tissue", "degenerate_stains", "non_finite", "out_of_range")
_EPS = 1e-6  # numerical floor for eigenvalues, stain maxima and channel deviations
_RANGE_TOLERANCE = 0.5  # a normalized value outside [-0.5, 255.5] is out of range (not a rounding effect)
#: Pixels one torch call holds at most (2,048 patches at 32 px, 128 at 128 px): the float intermediates of a batch
#: are ~100 bytes a pixel, so this bounds a call's memory at ~200 MB whatever the image size.
BATCH_PIXELS = 2048 * 32 * 32


def rows_per_call(images: np.ndarray | ImageSource, most: int) -> int:
    """Patches a torch call takes: ``most``, fewer where their pixels would exceed BATCH_PIXELS."""
    height, width = images.shape[1:3]
    return max(1, min(int(most), BATCH_PIXELS // (int(height) * int(width))))


@dataclass(frozen=True)
class Params:
    """Hyperparameters of stain normalization (``--set method.<field>=...``)."""

    normalizer: str = tunable("macenko", choices=NORMALIZERS)  # macenko (stain vectors) or reinhard (LAB mean/std)
    reference_site: str = ""  # TSS code of the reference site; "" = the training site with the most patches
    reference_image: str = ""  # an RGB image file used as the reference instead of a training patch
    io: float = 240.0  # transmitted light intensity (Macenko's Io; also the tissue test of both normalizers)
    alpha: float = 1.0  # percentile of the robust extreme stain angles (Macenko)
    beta: float = 0.15  # optical density below which a pixel counts as background, in any channel
    min_tissue_fraction: float = 0.05  # a patch with fewer tissue pixels than this is left as it is
    batch_size: int = 512  # patches normalized per torch call (fewer at large image sizes: BATCH_PIXELS)

    def __post_init__(self) -> None:
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"method.normalizer={self.normalizer!r}: choose from {', '.join(NORMALIZERS)}")
        if not 0.0 < self.io <= 255.0:
            raise ValueError(f"method.io={self.io!r}: expected a light intensity in (0, 255]")
        if not 0.0 <= self.alpha < 50.0:
            raise ValueError(f"method.alpha={self.alpha!r}: expected a percentile in [0, 50)")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ValueError(f"method.min_tissue_fraction={self.min_tissue_fraction!r}: expected a value in [0, 1]")
        if self.batch_size < 1:
            raise ValueError(f"method.batch_size={self.batch_size!r}: expected >= 1")


# ---------------------------------------------------------------------------------------------------------------
# colour statistics (also used by the cyclegan method and the tests)


def mean_lab(images: np.ndarray | ImageSource, batch_size: int = 1024) -> np.ndarray:
    """Per-image mean CIELAB colour (L in [0, 100], a, b centred at 0) of uint8 N x H x W x 3 images: N x 3 (a
    lazy source is read a batch at a time; at most BATCH_PIXELS pixels a batch)."""
    import torch
    from torchstain.torch.utils.rgb2lab import rgb2lab

    out = np.zeros((len(images), 3), dtype=np.float64)
    batch_size = rows_per_call(images, batch_size)
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.require(images[start : start + batch_size], np.uint8, ["C", "W"])).float() / 255.0
        n, h, w, _ = batch.shape
        lab = rgb2lab(batch.permute(3, 0, 1, 2).reshape(3, n * h, w))  # torchstain works per pixel, channel first
        lab = lab.reshape(3, n, h * w).mean(dim=2).T.double()
        out[start : start + n] = (lab - torch.tensor([0.0, 128.0, 128.0], dtype=torch.float64)).numpy()
        out[start : start + n, 0] /= 2.55  # torchstain returns OpenCV's LAB scaling
    return out


def site_colour_distance(images: np.ndarray | ImageSource, sites: np.ndarray | pd.Series) -> float:
    """Mean pairwise Euclidean distance (CIE76 delta-E) between the sites' mean LAB colours.

    A site's colour is the mean of its patches' mean LAB colours; every site pair counts once, whatever its size.
    """
    lab = mean_lab(images)
    frame = pd.DataFrame(lab, columns=["L", "a", "b"])
    frame["site"] = np.asarray(sites)
    centres = frame.groupby("site")[["L", "a", "b"]].mean().to_numpy()
    if len(centres) < 2:
        raise ValueError(f"site colour distance needs at least two sites, got {len(centres)}")
    return float(np.mean([np.linalg.norm(centres[i] - centres[j]) for i, j in combinations(range(len(centres)), 2)]))


# ---------------------------------------------------------------------------------------------------------------
# batched normalization


def tissue_fraction(images: np.ndarray, io: float = 240.0, beta: float = 0.15) -> np.ndarray:
    """Share of pixels whose optical density is >= beta in every channel (Macenko's tissue test), per image."""
    import torch

    x = torch.from_numpy(np.require(images, np.uint8, ["C", "W"])).float()
    od = -torch.log((x + 1.0) / io)
    return (od >= beta).all(dim=-1).float().mean(dim=(1, 2)).numpy().astype(np.float64)


def _nearest_rank(sorted_values: Any, count: Any, q: float) -> Any:
    """torchstain's percentile (nearest rank k = 1 + round(q/100 (n-1))) of each row's first ``count`` values."""
    import torch

    k = 1 + torch.round(q / 100.0 * (count - 1).clamp(min=0).double()).long()
    return sorted_values.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)


def _macenko(x: Any, ref: dict, p: Params) -> tuple[Any, Any]:
    """Batched Macenko on float N x P x 3 pixels: (normalized N x P x 3, reason codes N)."""
    import torch

    n, npix, _ = x.shape
    reasons = torch.zeros(n, dtype=torch.long)
    # 1. optical density; tissue = OD >= beta in every channel
    od = -torch.log((x + 1.0) / p.io)
    tissue = (od >= p.beta).all(dim=2)
    n_tissue = tissue.sum(dim=1)
    reasons[(n_tissue < max(3, int(np.ceil(p.min_tissue_fraction * npix))))] = 1
    # 2. covariance of the tissue pixels, its two leading eigenvectors span the stain plane
    w = tissue.unsqueeze(2).float()
    mean = (od * w).sum(dim=1) / n_tissue.clamp(min=1).unsqueeze(1)
    centred = (od - mean.unsqueeze(1)) * w
    cov = centred.transpose(1, 2) @ centred / (n_tissue - 1).clamp(min=1).view(n, 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    plane = evecs[:, :, 1:3]
    # 3. robust extreme angles in the plane -> the two stain vectors, haematoxylin first
    proj = od @ plane
    phi = torch.atan2(proj[..., 1], proj[..., 0]).masked_fill(~tissue, float("inf")).sort(dim=1).values
    phi_min = _nearest_rank(phi, n_tissue, p.alpha)
    phi_max = _nearest_rank(phi, n_tissue, 100.0 - p.alpha)
    v_min = (plane @ torch.stack((phi_min.cos(), phi_min.sin()), dim=1).unsqueeze(2).float()).squeeze(2)
    v_max = (plane @ torch.stack((phi_max.cos(), phi_max.sin()), dim=1).unsqueeze(2).float()).squeeze(2)
    first = (v_min[:, 0] > v_max[:, 0]).view(n, 1, 1)
    he = torch.where(first, torch.stack((v_min, v_max), dim=2), torch.stack((v_max, v_min), dim=2))
    degenerate = (
        (evals[:, 1] <= _EPS * evals[:, 2].abs().clamp(min=_EPS))  # no stain plane (one colour only)
        | ~((phi_max - phi_min).abs() > _EPS)  # both stain vectors the same (or undefined)
        | ~torch.isfinite(he).flatten(1).all(dim=1)
    )
    reasons[(reasons == 0) & degenerate] = 2
    he = torch.where((reasons != 0).view(n, 1, 1), ref["he"].expand_as(he), he)  # keeps lstsq defined; not used
    # 4. concentrations of every pixel, scaled so their 99th percentiles match the reference
    conc = torch.linalg.pinv(he) @ od.transpose(1, 2)  # N x 2 x P; least squares, ~50x faster than lstsq here
    k = 1 + round(0.99 * (npix - 1))
    max_c = conc.kthvalue(k, dim=2).values
    reasons[(reasons == 0) & (~torch.isfinite(max_c).all(dim=1) | (max_c <= _EPS).any(dim=1))] = 2
    conc = conc * (ref["max_c"] / max_c.clamp(min=_EPS)).unsqueeze(2)
    # 5. recompose with the reference stain vectors (values above 255 are clipped, as in torchstain)
    out = p.io * torch.exp(-(ref["he"] @ conc))
    out = torch.where(out > 255.0, torch.full_like(out, 255.0), out)
    return out.transpose(1, 2), reasons


def _lab_stats(lab: Any) -> tuple[Any, Any]:
    """Per-image mean and (unbiased) standard deviation of each LAB channel of N x 3 x P values."""
    return lab.mean(dim=2), lab.std(dim=2)


def _to_lab(x: Any) -> Any:
    """float N x P x 3 RGB in [0, 255] -> N x 3 x P LAB with torchstain's channel scaling (lab_split)."""
    from torchstain.torch.utils.rgb2lab import rgb2lab

    n, npix, _ = x.shape
    lab = rgb2lab((x / 255.0).permute(2, 0, 1).reshape(3, n * npix, 1)).reshape(3, n, npix).permute(1, 0, 2)
    return lab.sub(lab.new_tensor([0.0, 128.0, 128.0]).view(1, 3, 1)).div(lab.new_tensor([2.55, 1, 1]).view(1, 3, 1))


def _reinhard(x: Any, ref: dict, p: Params) -> tuple[Any, Any]:
    """Batched Reinhard on float N x P x 3 pixels: (normalized N x P x 3, reason codes N)."""
    import torch
    from torchstain.torch.utils.lab2rgb import lab2rgb

    n, npix, _ = x.shape
    reasons = torch.zeros(n, dtype=torch.long)
    # 1. the same tissue test as Macenko: a background-only patch has no stain to normalize
    od = -torch.log((x + 1.0) / p.io)
    n_tissue = (od >= p.beta).all(dim=2).sum(dim=1)
    reasons[n_tissue < max(3, int(np.ceil(p.min_tissue_fraction * npix)))] = 1
    # 2. standardize each LAB channel per image, rescale to the reference statistics
    lab = _to_lab(x)
    mu, sd = _lab_stats(lab)
    reasons[(reasons == 0) & ((sd <= _EPS).any(dim=1) | ~torch.isfinite(sd).all(dim=1))] = 2
    lab = (lab - mu.unsqueeze(2)) / sd.clamp(min=_EPS).unsqueeze(2) * ref["std"].view(1, 3, 1) + ref[
        "mean"
    ].view(1, 3, 1)
    # 3. back to RGB (torchstain's lab2rgb clamps to [0, 1])
    lab = lab.mul(lab.new_tensor([2.55, 1, 1]).view(1, 3, 1)).add(lab.new_tensor([0.0, 128.0, 128.0]).view(1, 3, 1))
    rgb = lab2rgb(lab.permute(1, 0, 2).reshape(3, n * npix, 1)).reshape(n, npix, 3) * 255.0  # lab2rgb: HWC out
    return rgb, reasons


def normalize_batch(
    images: np.ndarray, ref: dict, params: Params, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Normalize uint8 N x H x W x 3 images towards ``ref`` (see ``fit_reference``).

    Returns the uint8 images (failed patches unchanged) and a reason code per patch (index into REASONS, 0 = ok).
    """
    import torch

    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    if n == 0:
        return images.copy(), np.zeros(0, dtype=np.int64)
    x = torch.from_numpy(np.require(images, np.uint8, ["C", "W"])).to(device).float().reshape(n, h * w, 3)
    ref = {k: v.to(device) for k, v in ref.items()}
    with torch.no_grad():
        out, reasons = (_macenko if params.normalizer == "macenko" else _reinhard)(x, ref, params)
        reasons = reasons.to(out.device)
        finite = torch.isfinite(out).flatten(1).all(dim=1)
        reasons[(reasons == 0) & ~finite] = 3
        safe = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        in_range = ((safe >= -_RANGE_TOLERANCE) & (safe <= 255.0 + _RANGE_TOLERANCE)).flatten(1).all(dim=1)
        reasons[(reasons == 0) & ~in_range] = 4
        ok = (reasons == 0).view(n, 1, 1)
        result = torch.where(ok, safe.round().clamp(0, 255), x).to(torch.uint8).reshape(n, h, w, 3)
    return result.cpu().numpy(), reasons.cpu().numpy()


def fit_reference(image: np.ndarray, params: Params) -> dict:
    """torchstain's fit on one uint8 H x W x 3 reference image -> the tensors ``normalize_batch`` needs.

    Raises ValueError when the reference itself has no usable stain estimate.
    """
    import torch
    from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

    chw = torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).permute(2, 0, 1)
    if params.normalizer == "macenko":
        norm = TorchMacenkoNormalizer()
        try:
            norm.fit(chw, Io=params.io, alpha=params.alpha, beta=params.beta)
        except (RuntimeError, IndexError) as exc:  # e.g. kthvalue on zero tissue pixels
            raise ValueError(f"Macenko fit failed on the reference ({exc})") from None
        ref = {"he": norm.HERef.float(), "max_c": norm.maxCRef.float()}
    else:
        norm = TorchReinhardNormalizer()
        norm.fit(chw)
        ref = {"mean": norm.target_means.float(), "std": norm.target_stds.float()}
    for key, value in ref.items():
        if not torch.isfinite(value).all():
            raise ValueError(f"{params.normalizer} fit on the reference gave non-finite {key}: {value.tolist()}")
    if params.normalizer == "macenko" and (ref["max_c"] <= _EPS).any():
        raise ValueError(f"Macenko fit on the reference found no stain (max concentrations {ref['max_c'].tolist()})")
    if params.normalizer == "reinhard" and (ref["std"] <= _EPS).any():
        raise ValueError(f"Reinhard fit on the reference found a flat channel (stds {ref['std'].tolist()})")
    return ref


def read_reference_image(path: str | Path) -> np.ndarray:
    """An RGB image file as uint8 H x W x 3; a missing or unreadable file is a ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"method.reference_image={str(path)!r}: no such file")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"method.reference_image={str(path)!r}: not a readable image ({exc})") from None


def choose_reference(train: Split, params: Params) -> tuple[np.ndarray, dict]:
    """The reference patch of the training split and a description of it (deterministic).

    The site is ``params.reference_site`` or the one with the most patches (ties: smallest code); the patch is
    its median-brightness patch among those with enough tissue (ties: first in split order).
    """
    meta = train.metadata.reset_index(drop=True)
    real = ~meta["is_synthetic"].astype(bool).to_numpy()
    sites = meta["tissue_source_site"].astype(str)
    counts = sites[real].value_counts()
    if counts.empty:
        raise ValueError("stain normalization needs real training patches to choose a reference; the split has none")
    if params.reference_site:
        site = params.reference_site
        if site not in counts.index:
            raise ValueError(
                f"method.reference_site={site!r} is not a training site; "
                f"choose from: {', '.join(sorted(counts.index))}"
            )
    else:
        site = sorted(counts.index, key=lambda s: (-counts[s], s))[0]
    idx = np.flatnonzero(real & (sites == site).to_numpy())
    site_images = train.subset(idx).images  # a view, read a batch at a time below: a site can be most of a cohort
    tissue, brightness = np.zeros(len(idx)), np.zeros(len(idx))
    step = rows_per_call(site_images, params.batch_size)
    for start in range(0, len(idx), step):
        batch = np.asarray(site_images[start : start + step])
        tissue[start : start + len(batch)] = tissue_fraction(batch, params.io, params.beta)
        brightness[start : start + len(batch)] = batch.reshape(len(batch), -1).mean(axis=1)
    candidates = np.flatnonzero(tissue >= max(params.min_tissue_fraction, 1e-9))
    if len(candidates) == 0:
        raise ValueError(f"reference site {site!r} has no patch with tissue fraction >= {params.min_tissue_fraction}")
    median = np.median(brightness[candidates])
    order = candidates[np.lexsort((np.arange(len(candidates)), np.abs(brightness[candidates] - median)))]
    last_error = ""
    for pos in order:  # the median patch, or the nearest one whose stains can be estimated
        image = np.asarray(site_images[pos : pos + 1])[0]
        try:
            fit_reference(image, params)
        except ValueError as exc:
            last_error = str(exc)
            continue
        row = meta.iloc[idx[pos]]
        return image, {
            "site": site,
            "index": int(idx[pos]),
            "slide_id": str(row["slide_id"]),
            "brightness": round(float(brightness[pos]), 2),
            "tissue_fraction": round(float(tissue[pos]), 4),
        }
    raise ValueError(f"no patch of reference site {site!r} gives a usable stain estimate (last: {last_error})")


# ---------------------------------------------------------------------------------------------------------------
# the method


@METHODS.register("stain_norm", "stain normalization (torchstain Macenko or Reinhard) of train and evaluation patches")
class StainNormalization(Method):
    """Normalizes every patch, training and evaluation, towards one deterministic reference."""

    name = "stain_norm"
    Params = Params

    def __init__(self, params: Params | None = None):
        super().__init__(params if params is not None else Params())
        self.reference: dict | None = None

    @classmethod
    def default_params(cls, preset: str) -> Params:
        """The same parameters at every preset: normalization has nothing to train."""
        return Params()

    def fit(self, train: Split, ctx: Context) -> None:
        """Choose and fit the reference (a training patch or ``reference_image``)."""
        p = self.params
        if p.reference_image:
            image = read_reference_image(p.reference_image)
            try:
                self.reference = fit_reference(image, p)
            except ValueError as exc:
                raise ValueError(f"method.reference_image={p.reference_image!r}: {exc}") from None
            about: dict[str, Any] = {"image": str(p.reference_image), "shape": list(image.shape)}
        else:
            image, about = choose_reference(train, p)
            self.reference = fit_reference(image, p)
        about["normalizer"] = p.normalizer
        log.info("stain_norm: reference %s", about)
        self._report(ctx)["reference"] = about

    def augment(self, train: Split, ctx: Context) -> Split:
        """The training split, normalized (no synthetic patches)."""
        out = self._normalize(train, ctx)
        report = self._report(ctx)
        before = site_colour_distance(train.images, train.metadata["tissue_source_site"])
        after = site_colour_distance(out.images, out.metadata["tissue_source_site"])
        report["train_site_colour_distance"] = {"before": round(before, 3), "after": round(after, 3)}
        ctx.log_metrics({"stain_norm/site_colour_distance_before": before,
                         "stain_norm/site_colour_distance_after": after}, None)
        self._sample_grid(train, out, ctx)
        return out

    def transform_eval(self, split: Split, ctx: Context) -> Split:
        """The evaluation split normalized towards the same reference."""
        return self._normalize(split, ctx)

    # -----------------------------------------------------------------------------------------------------------

    @staticmethod
    def _report(ctx: Context) -> dict:
        return ctx.report.setdefault("stain_norm", {"reference": {}, "failed": {}, "n": {}})

    def _normalize(self, split: Split, ctx: Context) -> Split:
        """``split`` normalized a batch at a time; the normalized pixels go to a scratch file of the cache folder,
        mapped (cache.scratch_rows), so that neither the split nor its normalized copy is ever held in memory."""
        if self.reference is None:
            raise RuntimeError("stain_norm: fit() must run before augment() / transform_eval()")
        p = self.params
        name = split.name or "split"
        reasons = np.zeros(len(split), dtype=np.int8)
        if not len(split):
            self._count(ctx, name, reasons)
            return split

        step = rows_per_call(split.images, p.batch_size)

        def fill(out) -> None:
            for start, batch in zip(range(0, len(split), step), split.batches(step), strict=True):
                out[start : start + len(batch)], reasons[start : start + len(batch)] = normalize_batch(
                    batch, self.reference, p, ctx.device)

        shape = (len(split), split.image_size, split.image_size, 3)
        pixels = scratch_rows(ctx.cache_dir / "stain_norm", f"{name}.npy", shape, np.uint8, fill)
        self._count(ctx, name, reasons)
        return split.with_images(ArrayImages(pixels))

    def _count(self, ctx: Context, name: str, reasons: np.ndarray) -> None:
        counts = {REASONS[r]: int((reasons == r).sum()) for r in range(1, len(REASONS)) if (reasons == r).any()}
        report = self._report(ctx)
        report["failed"][name] = counts
        report["n"][name] = len(reasons)
        if counts:
            log.info("stain_norm: %s: %d of %d patch(es) kept unnormalized %s", name, sum(counts.values()),
                     len(reasons), counts)

    def _sample_grid(self, before: Split, after: Split, ctx: Context, n_sites: int = 8) -> None:
        """A PNG: for the largest training sites, one patch before (top row) and after (bottom row)."""
        from PIL import Image

        sites = before.metadata["tissue_source_site"].astype(str)
        chosen = sites.value_counts().index[:n_sites]
        idx = [int(np.flatnonzero((sites == s).to_numpy())[0]) for s in chosen]
        if not idx:
            return
        top = np.concatenate([np.asarray(before.images[i : i + 1])[0] for i in idx], axis=1)
        bottom = np.concatenate([after.images[i] for i in idx], axis=1)
        grid = np.concatenate([top, bottom], axis=0)
        scale = max(1, 96 // before.image_size)
        path = Path(ctx.run_dir) / "stain_norm_samples.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
        ctx.log_artifact(path)
