"""HED jitter: jittered copies of the training patches, with random haematoxylin and eosin stain amounts.

Tellez et al. 2019 ("Quantifying the effects of data augmentation and stain color normalization in convolutional
neural networks for computational pathology", Medical Image Analysis 58) perturb each patch in HED space: colour
deconvolution with Ruifrok and Johnston's stain matrix (as scikit-image's ``rgb2hed``), then every stain channel
``s`` becomes ``alpha * s + beta`` with ``alpha ~ U(1 - sigma, 1 + sigma)`` and ``beta ~ U(-sigma, sigma)``, then
back to RGB (``hed2rgb``), clipped to [0, 255]. Stain amounts use scikit-image's units (optical density divided
by -ln(1e-6), so beta = 0.05 adds 0.69 optical density); unlike ``rgb2hed``, negative amounts are kept, so that
``sigma = 0`` gives back every pixel. On H&E tiles the default sigma = 0.05 moves pixels by about 28 grey levels on
average (Tellez et al.'s own code, which adds 2 to the intensities before the logarithm, by about 15).

The method keeps the real training patches and adds ``copies`` jittered copies of each (``is_synthetic=True``,
``source="hed_jitter"``, the metadata of their original); evaluation patches are left as they are. The draws
come from the run's sampling seed (``ctx.seed``), all of them before any pixel is touched, so a fixed seed gives
the same images whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.protocols import Context, Method, Split, concat, tunable

#: Ruifrok and Johnston's optical-density vectors of haematoxylin, eosin and DAB (rows), as scikit-image's
#: ``skimage.color.rgb_from_hed``; its inverse maps optical density to stain amounts.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_FLOOR = 1e-6  # darkest intensity (scikit-image's): keeps the logarithm finite; -ln(_FLOOR) is the OD unit
_LOG_FLOOR = np.log(_FLOOR)


@dataclass(frozen=True)
class Params:
    """Hyperparameters of HED jitter (``--set method.<field>=...``)."""

    sigma: float = tunable(0.05, low=0.0, high=0.1)  # alpha ~ U(1-sigma, 1+sigma), beta ~ U(-sigma, sigma) per stain
    copies: int = tunable(1, low=1, high=4)  # jittered copies of every real training patch added to the split
    perturb_dab: bool = False  # also jitter the DAB channel (in H&E only a residual); default: H and E only
    batch_size: int = 256  # patches converted per numpy call (the result does not depend on it)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sigma < 1.0:
            raise ValueError(f"method.sigma={self.sigma!r}: expected a value in [0, 1) (alpha must stay positive)")
        if self.copies < 1:
            raise ValueError(f"method.copies={self.copies!r}: expected >= 1")
        if self.batch_size < 1:
            raise ValueError(f"method.batch_size={self.batch_size!r}: expected >= 1")


# ---------------------------------------------------------------------------------------------------------------
# colour deconvolution


def _mix(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``x @ matrix`` over the last axis, written out so every pixel is computed alone (no BLAS summation order)."""
    m = matrix.astype(x.dtype)
    return x[..., 0:1] * m[0] + x[..., 1:2] * m[1] + x[..., 2:3] * m[2]


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] (... x 3) -> haematoxylin, eosin and DAB amounts (... x 3), scikit-image's units, unclipped."""
    return _mix(np.log(np.maximum(rgb, _FLOOR)) / _LOG_FLOOR, HED_FROM_RGB)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Stain amounts (... x 3) -> RGB in [0, 1] (clipped), the inverse of :func:`rgb_to_hed`."""
    return np.clip(np.exp(_mix(hed, RGB_FROM_HED) * _LOG_FLOOR), 0.0, 1.0)


def random_coefficients(
    n: int, sigma: float, rng: np.random.Generator, perturb_dab: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta), each n x 3: alpha ~ U(1-sigma, 1+sigma), beta ~ U(-sigma, sigma); DAB kept unless asked."""
    alpha = rng.uniform(1.0 - sigma, 1.0 + sigma, size=(n, 3))
    beta = rng.uniform(-sigma, sigma, size=(n, 3))
    if not perturb_dab:
        alpha[:, 2], beta[:, 2] = 1.0, 0.0
    return alpha, beta


def hed_jitter(images: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x 3 images with stain amounts ``alpha * s + beta`` (alpha, beta: N x 3): uint8, same shape."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
    if alpha.shape != (len(images), 3) or beta.shape != (len(images), 3):
        raise ValueError(f"expected alpha and beta of shape ({len(images)}, 3), got {alpha.shape} and {beta.shape}")
    hed = rgb_to_hed(images.astype(np.float64) / 255.0)
    hed = hed * alpha[:, None, None, :] + beta[:, None, None, :]
    return np.rint(hed_to_rgb(hed) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# the method


class HEDJitter(Method):
    """HED colour augmentation (Tellez et al. 2019): copies with random haematoxylin and eosin amounts."""

    name = "hed_jitter"
    Params = Params

    def __init__(self, params: Params | None = None):
        super().__init__(params if params is not None else Params())

    @classmethod
    def default_params(cls, preset: str) -> Params:
        """The same parameters at every preset: nothing to train."""
        return Params()

    def augment(self, train: Split, ctx: Context) -> Split:
        """The real training patches followed by ``copies`` jittered copies of each (``is_synthetic=True``)."""
        p = self.params
        # 1. the real patches, and every coefficient drawn up front from the sampling seed
        real = train.subset(~train.metadata["is_synthetic"].astype(bool).to_numpy(), "train")
        n = len(real)
        if n == 0:
            return train
        rng = np.random.default_rng(ctx.seed)
        alpha, beta = random_coefficients(n * p.copies, p.sigma, rng, p.perturb_dab)
        # 2. jitter copy by copy, batch by batch
        out = np.empty((n * p.copies, *real.images.shape[1:]), dtype=np.uint8)
        change = 0.0
        for copy in range(p.copies):
            for start, batch in zip(range(0, n, p.batch_size), real.batches(p.batch_size), strict=True):
                rows = slice(copy * n + start, copy * n + start + len(batch))
                out[rows] = hed_jitter(batch, alpha[rows], beta[rows])
                change += float(np.abs(out[rows].astype(np.int16) - batch).sum())
        # 3. the copies carry their original's metadata, marked as made by this method
        meta = real.metadata.iloc[np.tile(np.arange(n), p.copies)].reset_index(drop=True)
        meta["is_synthetic"] = True
        meta["source"] = self.name
        mean_change = change / out.size
        ctx.report[self.name] = {"n_real": n, "n_jittered": len(out), "sigma": p.sigma,
                                 "mean_abs_pixel_change": round(mean_change, 3)}
        ctx.log_metrics({f"{self.name}/mean_abs_pixel_change": mean_change}, None)
        return concat([train, Split(out, meta, "synthetic")], "train")
