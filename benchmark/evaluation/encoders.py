"""Frozen feature extractors for the linear probe: ``fbank`` (default, no weights), ``uni`` and ``timm:<model>``.

Every encoder takes uint8 RGB patches, so real and synthetic images go through exactly the same resizing and
normalization (the authors' code fed real patches to UNI without ImageNet normalization and synthetic ones in
[-1, 1]; here that mismatch cannot happen).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmark.core.config import ConfigError, ProbeConfig
from benchmark.core.registry import ENCODERS

if TYPE_CHECKING:
    import torch


class Encoder:
    """A frozen image -> vector map (torch is imported when an encoder is built, so `list` stays fast)."""

    name: str = ""
    dim: int = 0

    def embed(self, images: np.ndarray, device: str = "cpu") -> np.ndarray:
        """uint8 N x H x W x 3 -> float32 N x dim."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Changes whenever the encoder's output would change (weights, version)."""
        return self.name


def to_tensor(images: np.ndarray, device: str) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


# ---------------------------------------------------------------------------------------------------------------
# fbank: the default encoder


# Ruifrok & Johnston optical-density vectors (rows: hematoxylin, eosin, residual), a fixed H&E basis.
_RUIFROK = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)


class FilterBankEncoder(Encoder):
    """Colour statistics + a scattering-like Gabor-modulus pyramid on the H and E optical-density channels.

    Stands in for a pathology foundation model: it sees staining (optical-density moments, colour covariance) and
    morphology (oriented texture energy at four scales, pooled globally and on a 2 x 2 grid; blob responses for
    nuclei; sharpness and high-frequency energy that reveal scanner blur, noise and JPEG artefacts). It has no
    learned weights, so it is deterministic and needs no download. Inputs are resized to 64 x 64 first, so the
    features mean the same at every preset's image size.
    """

    name = "fbank"
    SIZE = 64
    LEVELS = 4
    ORIENTATIONS = 4

    def __init__(self) -> None:
        import torch

        self._kernels = self._gabor_bank()
        self._deconv = torch.from_numpy(np.linalg.inv(_RUIFROK / np.linalg.norm(_RUIFROK, axis=1, keepdims=True)))
        self.dim = self.embed(np.zeros((1, 8, 8, 3), np.uint8)).shape[1]

    def _gabor_bank(self) -> torch.Tensor:
        """Complex Gabor kernels (real and imaginary parts as separate filters), 7 x 7, sigma 1.5, wavelength 4."""
        import torch

        half, sigma, wavelength = 3, 1.5, 4.0
        y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
        kernels = []
        for k in range(self.ORIENTATIONS):
            theta = math.pi * k / self.ORIENTATIONS
            u = x * math.cos(theta) + y * math.sin(theta)
            env = np.exp(-(x**2 + y**2) / (2 * sigma**2))
            for part in (np.cos(2 * math.pi * u / wavelength), np.sin(2 * math.pi * u / wavelength)):
                kern = env * part
                kern -= kern.mean()  # zero DC: responds to texture, not to brightness
                kernels.append(kern / np.abs(kern).sum())
        return torch.from_numpy(np.stack(kernels)[:, None])  # (2*O, 1, 7, 7)

    @staticmethod
    def _pool(maps: torch.Tensor) -> torch.Tensor:
        """Global mean and 2 x 2 grid means of each map: N x C x H x W -> N x 5C."""
        import torch
        import torch.nn.functional as F

        return torch.cat([maps.mean(dim=(2, 3)), F.adaptive_avg_pool2d(maps, 2).flatten(1)], dim=1)

    def embed(self, images: np.ndarray, device: str = "cpu") -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._embed(images, device)

    def _embed(self, images: np.ndarray, device: str) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        # 1. canonical size, optical density, H&E channels
        x = to_tensor(images, device)
        x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", antialias=True, align_corners=False)
        od = -torch.log(x.clamp(min=1 / 255.0))
        he = torch.einsum("nchw,cd->ndhw", od, self._deconv.to(device))[:, :2]
        # 2. staining: moments of optical density and RGB, colour covariance
        flat = od.flatten(2)
        centred = flat - flat.mean(dim=2, keepdim=True)
        cov = torch.einsum("ncp,ndp->ncd", centred, centred) / flat.shape[2]
        iu = torch.triu_indices(3, 3)
        skew = (centred**3).mean(2) / cov.diagonal(dim1=1, dim2=2).clamp(min=1e-6) ** 1.5
        tissue = (flat.sum(1) > 0.3).float().mean(1, keepdim=True)  # share of non-background pixels
        colour = [flat.mean(2), cov[:, iu[0], iu[1]], skew, tissue, x.flatten(2).mean(2), x.flatten(2).std(2)]
        # 3. morphology: Gabor modulus at four scales on H and E (a first-order scattering transform)
        kernels = self._kernels.to(device)
        texture, level = [], he
        n_orient = self.ORIENTATIONS
        for _ in range(self.LEVELS):
            c = level.shape[1]
            resp = F.conv2d(level.reshape(-1, 1, *level.shape[2:]), kernels, padding=3)
            resp = resp.reshape(level.shape[0], c, 2 * n_orient, *level.shape[2:])
            modulus = torch.hypot(resp[:, :, 0::2], resp[:, :, 1::2]).flatten(1, 2)
            texture.append(self._pool(modulus))
            texture.append(self._pool(level))  # low-pass (scattering order 0) at this scale
            level = F.avg_pool2d(level, 2)
        # 4. scanner: sharpness (gradient energy) and high-frequency residual (noise, JPEG)
        grey = x.mean(1, keepdim=True)
        gx, gy = grey[..., :, 1:] - grey[..., :, :-1], grey[..., 1:, :] - grey[..., :-1, :]
        residual = grey - F.avg_pool2d(grey, 3, stride=1, padding=1, count_include_pad=False)
        scanner = [t[:, None] for t in (gx.abs().mean((1, 2, 3)), gy.abs().mean((1, 2, 3)), residual.std((1, 2, 3)))]
        feats = torch.cat([*colour, *texture, *scanner], dim=1)
        return feats.float().cpu().numpy()

    def fingerprint(self) -> str:
        return "fbank-v1"


# ---------------------------------------------------------------------------------------------------------------
# timm models from local weights (uni is one)


def _load_state_dict(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def file_digest(path: Path) -> str:
    """Cheap identity of a weights file: size, mtime and the hash of its first MiB."""
    st = path.stat()
    with open(path, "rb") as fh:
        head = hashlib.blake2b(fh.read(1 << 20), digest_size=8).hexdigest()
    return f"{st.st_size}-{int(st.st_mtime)}-{head}"


class TimmEncoder(Encoder):
    """A timm model built offline, weights loaded from a local file, ImageNet-normalized, resized to its input."""

    def __init__(self, name: str, model_name: str, weights: Path, model_kwargs: dict | None = None):
        import torch

        from benchmark.core._compat import ensure_torchvision

        ensure_torchvision()
        import timm

        self.name = name
        self.weights = weights
        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **(model_kwargs or {}))
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ConfigError(f"encoder {name!r}: {exc}") from None
        state = _load_state_dict(weights)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.startswith(("head.", "fc.", "classifier."))]
        if missing or unexpected:
            raise ConfigError(
                f"encoder {name!r}: weights file {weights} does not fit {model_name}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        self.model.eval().requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
        self.dim = int(self.model.num_features)

    def embed(self, images: np.ndarray, device: str = "cpu") -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            self.model.to(device)
            x = to_tensor(images, device)
            if x.shape[-1] != self.input_size:
                x = F.interpolate(x, size=(self.input_size,) * 2, mode="bicubic", antialias=True, align_corners=False)
            x = (x.clamp(0, 1) - self.mean.to(device)) / self.std.to(device)
            return self.model(x).float().cpu().numpy()

    def fingerprint(self) -> str:
        return f"{self.name}-{file_digest(self.weights)}"


UNI_ENV = "MEDIBENCH_UNI_WEIGHTS"
UNI_HUB_REPO = "models--MahmoodLab--UNI"


def uni_weight_candidates(configured: str) -> list[Path]:
    """Where UNI weights are looked for, in order: --set probe.encoder_weights, $MEDIBENCH_UNI_WEIGHTS, hub cache."""
    paths = [Path(p).expanduser() for p in (configured, os.environ.get(UNI_ENV, "")) if p]
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    paths += sorted(hub.expanduser().glob(f"{UNI_HUB_REPO}/snapshots/*/pytorch_model.bin"))
    return paths


@ENCODERS.register("fbank", "default: colour + Gabor-modulus pyramid on H&E optical density; no weights, fast")
def _fbank(cfg: ProbeConfig) -> Encoder:
    return FilterBankEncoder()


@ENCODERS.register("uni", "UNI ViT-L/16 pathology foundation model from a local weights file (gated; docs/plugins.md)")
def _uni(cfg: ProbeConfig) -> Encoder:
    candidates = uni_weight_candidates(cfg.encoder_weights)
    found = [p for p in candidates if p.is_file()]
    if not found:
        looked = ", ".join(str(p) for p in candidates) or "nothing configured"
        raise ConfigError(
            f"encoder 'uni' needs its weights file (pytorch_model.bin from the gated MahmoodLab/UNI repository); "
            f"set --set probe.encoder_weights=FILE or ${UNI_ENV}, or put it in the hub cache. Looked at: {looked}"
        )
    kwargs = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}
    return TimmEncoder("uni", "vit_large_patch16_224", found[0], kwargs)


@ENCODERS.register("timm", "timm:<model>: any timm architecture with weights from --set probe.encoder_weights=FILE")
def _timm(cfg: ProbeConfig, model_name: str = "") -> Encoder:
    if not model_name:
        raise ConfigError("encoder 'timm' needs a model name: --set probe.encoder=timm:<model>, e.g. timm:resnet18")
    weights = Path(cfg.encoder_weights).expanduser() if cfg.encoder_weights else None
    if weights is None or not weights.is_file():
        raise ConfigError(
            f"encoder 'timm:{model_name}' needs a local weights file (no downloads here): "
            f"--set probe.encoder_weights=FILE (got {cfg.encoder_weights!r})"
        )
    return TimmEncoder(f"timm:{model_name}", model_name, weights)


def build_encoder(cfg: ProbeConfig) -> Encoder:
    """The encoder named by ``cfg.encoder`` (``timm:<model>`` selects the timm entry)."""
    name, _, arg = cfg.encoder.partition(":")
    factory = ENCODERS.get(name)
    return factory(cfg, arg) if arg else factory(cfg)
