"""Diffusion augmentation: MeDi (class + metadata conditioning) and CLS (class only), on diffusers.

One method registered twice. A pixel-space ``UNet2DModel`` with ``class_embed_type="identity"`` receives a
conditioning vector ``z_cond`` that it adds to its timestep embedding (``z_final = z_t + z_cond``). ``z_cond`` is
built by :class:`ConditionEncoder` from learned embeddings of the class and of k metadata attributes:

- ``concat`` (the paper's, default): the class gets d_t/(1+k) dimensions plus the remainder, each attribute
  d_t/(1+k); the pieces are concatenated to width d_t;
- ``additive``: every embedding is d_t wide and they are summed;
- ``linear``: the concatenation is passed through a learned linear map d_t -> d_t.

Categorical vocabularies come from the training metadata plus ``Unknown``; numeric attributes (age) go through a
sinusoidal encoding and a linear layer. An attribute is any metadata column: the schema's site, race, gender and age,
or a column of a cohort's own manifest (``--set method.attributes=tissue_source_site,scanner``). ``cls`` is exactly
this model with k = 0.

Training follows the authors' recipe (DDPM 1000 steps, linear betas, MSE; AdamW betas (0.95, 0.999), weight decay
1e-6, cosine schedule with warm-up, gradient clipping 1.0, EMA, class-balanced sampling), runs through accelerate
(device placement, mixed precision, ``accelerate launch`` for several GPUs), and is cached by a hash of the
training parameters, the training data and the model seed, so runs that share all three only sample.

Two departures for the small presets (the ``paper`` preset keeps the paper's epsilon objective on [-1, 1] pixels):
the model predicts v (``prediction_type``) and sees each RGB channel standardized with the training set's mean and
std (``normalize``). With the paper's setting, the cpu preset's 1 M-parameter UNet after 3,000 steps denoised real
patches well at every noise level, yet its DDIM samples came out grey noise (mean RGB (123, 125, 128) against the
real (183, 134, 170)) and DPM-Solver++ samples saturated: an epsilon model's x0 estimate near t = T is its error
times 1/sqrt(alpha_bar) (~150), and H&E's far-from-grey mean colour must be injected exactly there. With both
changes the same UNet gives H&E-like samples after 500 steps.

A third, for time: the small presets weight the loss with Min-SNR-gamma (``loss_weighting``) and train at lr 1e-3
for 1,500 steps. On the cpu preset this reaches the FID that the earlier recipe (plain MSE, lr 5e-4, 3,000 steps;
``REFERENCE_RECIPE``) reached at its end after ~45% of the steps; a cosine noise schedule was worse, lr 2e-3 no
better (``python -m benchmark perf --stages time_to_quality``; README, "Time to quality").
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from benchmark.core.config import tunable
from benchmark.core.data import UNKNOWN, Split, concat
from benchmark.core.generation import class_totals, expand_plan, generation_plan
from benchmark.core.registry import METHODS
from benchmark.protocols import Context, Method

log = logging.getLogger(__name__)

MODEL_VERSION = "diffusion-v1"  # bump when a change makes cached models invalid
NUMERIC = ("age_at_index",)
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}  # method.noise_schedule -> diffusers' name
CATEGORICAL = ("tissue_source_site", "race", "gender")
#: metadata columns that describe a patch's identity or origin, not a condition to generate for
RESERVED_COLUMNS = ("label", "cancer_type", "project_id", "patient_id", "slide_id", "is_synthetic", "source", "group",
                    "path")


@dataclass(frozen=True)
class DiffusionParams:
    """Every hyperparameter of the diffusion methods (cpu-preset defaults; see ``PRESETS``).

    ``tunable(...)`` fields carry the range ``python -m benchmark tune`` searches."""

    # conditioning
    attributes: tuple[str, ...] = ("tissue_source_site", "race")  # () = class only (cls)
    cond_mode: str = "concat"  # concat | additive | linear
    # condition dropout for classifier-free guidance (off in the paper): during training the class is replaced by
    # its learned null token with probability class_dropout and each metadata attribute, independently, with
    # probability meta_dropout, so one network learns p(x | class, metadata), p(x | class), p(x | metadata) and p(x)
    class_dropout: float = 0.0  # rate at which training drops the class to its null token (0: the paper)
    meta_dropout: float = 0.0  # rate at which training drops each metadata attribute, independently (0: the paper)
    # UNet
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # UNet channels per resolution level (one level per entry)
    layers_per_block: int = 1  # resnet layers in each down / up block
    attention: bool = False  # self-attention in the lowest-resolution blocks
    # GroupNorm groups. Keep >= 4 channels per group in the first level, as the paper's UNet (128 channels, 32
    # groups): with one channel per group (32 channels, 32 groups) GroupNorm is an instance norm, the resnets'
    # conditioning bias (added before norm2) and any per-channel offset before norm_out are erased, and the
    # model cannot make an image's mean colour depend on the site (measured: a changed site embedding moved the
    # output's mean colour 100x less than with 8 groups; tests/methods/test_diffusion.py)
    norm_num_groups: int = 8
    # training
    steps: int = 1500  # training steps (batches)
    batch_size: int = 32  # training images per step (class-balanced draws)
    lr: float = tunable(1e-3, low=1e-4, high=2e-3, log=True)  # peak AdamW learning rate (warm-up, then cosine decay)
    adam_beta1: float = 0.95  # AdamW betas and weight decay: the authors' values
    adam_beta2: float = 0.999  # AdamW beta2
    weight_decay: float = 1e-6  # AdamW weight decay
    warmup_fraction: float = 0.01  # share of the steps the learning rate warms up over, before its cosine decay
    grad_clip: float = 1.0  # gradient norm clipping (0 = off)
    ema: bool = True  # sample from an exponential moving average of the weights
    ema_decay: float = 0.999  # the EMA's decay (diffusers warms it up: min(decay, (1 + step) / (10 + step)))
    mixed_precision: str = "auto"  # auto (fp16/bf16 on CUDA; fp32 on CPU, where bf16 measured slower), no, bf16, fp16
    num_train_timesteps: int = 1000  # diffusion steps of the training noise schedule
    # linear: the paper's betas (DDPM); cosine: Nichol & Dhariwal's alpha_bar schedule ("squaredcos_cap_v2"), which
    # destroys a small image's information less abruptly than the linear one. Training and sampling use the same one
    noise_schedule: str = "linear"
    # none: plain MSE (the paper's); min_snr: Min-SNR-gamma (Hang et al. 2023), the loss of each noise level
    # weighted by min(SNR, gamma) / (SNR + 1) for v (/ SNR for epsilon): the low-noise levels, easy and
    # conflicting with the rest, stop dominating the gradient; reported to converge ~3x faster
    loss_weighting: str = "min_snr"
    snr_gamma: float = 5.0  # Min-SNR's gamma (5 in the paper that proposed it)
    flips: bool = True  # random flips and 90-degree rotations (histology has no orientation)
    # channel: diffuse each RGB channel standardized with the training set's mean and std; none: [-1, 1] pixels as in
    # the paper. H&E patches are far from grey (mean ~(0.44, 0.05, 0.33) in [-1, 1]); an epsilon model trained for
    # the cpu preset's few thousand steps cannot pull a trajectory that starts at grey noise to that colour, and
    # its samples came out grey (measured: mean RGB (123, 125, 128) against the real (183, 134, 170)).
    normalize: str = "channel"
    # epsilon: the paper's objective; v_prediction (Salimans & Ho 2022): well conditioned at high noise levels,
    # where a small epsilon model's x0 estimate is off by 1/sqrt(alpha_bar) times its error
    prediction_type: str = "v_prediction"
    checkpoint_every: int = 500  # training steps between resumable checkpoints
    preview_every: int = 500  # a small sample grid (MLflow artifact) every N training steps; 0 = none
    # sampling and the generation plan (not part of the trained model's cache key)
    # DPM-Solver++ 20 reached DDIM-50's FID on the cpu preset's model (and 10 steps already did) at 2.6x the speed
    # (python -m benchmark perf --preset cpu --stages sampling); the gpu and paper presets keep the paper's DDIM-50
    sampler: str = "dpmpp"  # ddim (the paper's) | dpmpp (DPM-Solver++)
    sampling_steps: int = tunable(20, low=10, high=50)
    # classifier-free guidance at sampling (off in the paper; needs a model trained with condition dropout):
    # joint: eps = eps(0) + guidance_scale * (eps(class, meta) - eps(0)); 1 = the plain conditional model, one pass
    # composed (Composable Diffusion, Liu et al. 2022): one direction per concept, each with its own weight,
    #   eps = eps(0) + class_guidance * (eps(class) - eps(0)) + meta_guidance * (eps(meta) - eps(0)),
    # three passes per step. On a combination the training data lacks, the joint conditional has never seen the
    # pair; the composed form asks for "this class" and "this site" separately, the product of two experts each
    # of which has seen its own condition (the frontier: python -m benchmark guidance)
    guidance: str = "joint"  # joint | composed (above)
    guidance_scale: float = tunable(1.0, low=1.0, high=3.0, requires="class_dropout")  # joint: w (1 = unguided)
    class_guidance: float = 1.0  # composed: the class direction's weight w_c
    meta_guidance: float = 1.0  # composed: the metadata direction's weight w_m (site, race, ... together)
    sample_batch_size: int = 64  # the fastest on a 2-core CPU (310 img/s per UNet call at 32-64, 220 at 128)
    plan: str = "fill"  # fill (counterfactual combinations, the paper's OOD mode) | balance
    synthetic_ratio: float = tunable(1.0, low=0.25, high=2.0)  # synthetic patches per real training patch
    fid_max_per_class: int = 256  # cap on generated images per class for the FID evaluation


SAMPLING_FIELDS = frozenset(
    {"sampler", "sampling_steps", "guidance", "guidance_scale", "class_guidance", "meta_guidance",
     "sample_batch_size", "plan", "synthetic_ratio",
     "fid_max_per_class", "preview_every"}
)

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        block_out_channels=(16, 32), norm_num_groups=4, steps=12, batch_size=16, checkpoint_every=6, preview_every=6,
        sampling_steps=4, sample_batch_size=64, synthetic_ratio=0.5, fid_max_per_class=16, ema_decay=0.9,
    ),
    "cpu": {},
    "gpu": dict(
        block_out_channels=(64, 128, 256, 256), layers_per_block=2, attention=True, norm_num_groups=16,
        steps=60_000, lr=2e-4,
        checkpoint_every=5000, preview_every=5000, ema_decay=0.9999, fid_max_per_class=1000, sample_batch_size=256,
        sampler="ddim", sampling_steps=50,
    ),
    "paper": dict(
        block_out_channels=(128, 256, 512, 512, 1024, 1024), layers_per_block=2, attention=False, norm_num_groups=32,
        steps=800_000,
        batch_size=32, lr=1e-4, ema_decay=0.9999, mixed_precision="fp16", checkpoint_every=10_000,
        preview_every=20_000, normalize="none", prediction_type="epsilon", loss_weighting="none",
        sample_batch_size=128, sampler="ddim",
        sampling_steps=50,
        fid_max_per_class=5000,
    ),
}

# The cpu preset's training recipe before the time-to-quality benchmark chose a faster one: the reference of
# `python -m benchmark perf --stages time_to_quality`, and selectable on any preset, e.g. on cpu with
# --set method.steps=3000 method.lr=0.0005 method.noise_schedule=linear method.loss_weighting=none
REFERENCE_RECIPE: dict[str, Any] = dict(steps=3000, lr=5e-4, noise_schedule="linear", loss_weighting="none")


def reference_recipe(preset: str) -> dict[str, Any]:
    """The fields that turn a preset's diffusion parameters into the reference recipe: all of ``REFERENCE_RECIPE``
    on the cpu preset; on the others its objective (schedule, weighting) at the preset's own length and rate."""
    if preset == "cpu":
        return dict(REFERENCE_RECIPE)
    return {k: v for k, v in REFERENCE_RECIPE.items() if k in ("noise_schedule", "loss_weighting")}


def validate(p: DiffusionParams) -> None:
    """Fail loudly on values the model cannot use."""
    from benchmark.core.config import ConfigError

    checks = [
        (p.cond_mode in ("concat", "additive", "linear"), "method.cond_mode", p.cond_mode, "concat, additive, linear"),
        (p.sampler in ("ddim", "dpmpp"), "method.sampler", p.sampler, "ddim or dpmpp"),
        (p.plan in ("fill", "balance"), "method.plan", p.plan, "fill or balance"),
        (p.normalize in ("channel", "none"), "method.normalize", p.normalize, "channel or none"),
        (p.noise_schedule in ("linear", "cosine"), "method.noise_schedule", p.noise_schedule, "linear or cosine"),
        (p.loss_weighting in ("none", "min_snr"), "method.loss_weighting", p.loss_weighting, "none or min_snr"),
        (p.snr_gamma > 0, "method.snr_gamma", p.snr_gamma, "> 0"),
        (p.prediction_type in ("epsilon", "v_prediction"), "method.prediction_type", p.prediction_type,
         "epsilon or v_prediction"),
        (p.mixed_precision in ("auto", "no", "bf16", "fp16"), "method.mixed_precision", p.mixed_precision,
         "auto, no, bf16, fp16"),
        (all(isinstance(a, str) and a.strip() and a not in RESERVED_COLUMNS for a in p.attributes),
         "method.attributes", p.attributes,
         f"metadata column names, e.g. {(*CATEGORICAL, *NUMERIC)} or a manifest's own column, none of "
         f"{RESERVED_COLUMNS}"),
        (len(set(p.attributes)) == len(p.attributes), "method.attributes", p.attributes, "no repeats"),
        (all(c % p.norm_num_groups == 0 for c in p.block_out_channels), "method.norm_num_groups", p.norm_num_groups,
         f"a divisor of every block_out_channels entry {p.block_out_channels}"),
        (p.steps > 0 and p.batch_size > 0, "method.steps/batch_size", (p.steps, p.batch_size), "> 0"),
        (0.0 <= p.class_dropout < 1.0, "method.class_dropout", p.class_dropout, "in [0, 1)"),
        (0.0 <= p.meta_dropout < 1.0, "method.meta_dropout", p.meta_dropout, "in [0, 1)"),
        (p.guidance in ("joint", "composed"), "method.guidance", p.guidance, "joint or composed"),
        (p.guidance != "joint" or p.guidance_scale == 1.0 or (p.class_dropout > 0 and
                                                              (p.meta_dropout > 0 or not p.attributes)),
         "method.guidance_scale", p.guidance_scale,
         "1.0 unless the model was trained with method.class_dropout > 0 and method.meta_dropout > 0 (the "
         "unconditional prediction guidance starts from)"),
        (p.guidance != "composed" or (p.attributes and p.class_dropout > 0 and p.meta_dropout > 0),
         "method.guidance", p.guidance,
         "joint unless the model conditions on metadata (medi) and was trained with method.class_dropout > 0 and "
         "method.meta_dropout > 0 (composed guidance needs p(x | class) and p(x | metadata))"),
        (p.sampling_steps >= 1, "method.sampling_steps", p.sampling_steps, ">= 1"),
        (p.synthetic_ratio >= 0, "method.synthetic_ratio", p.synthetic_ratio, ">= 0"),
    ]
    for ok, key, value, expected in checks:
        if not ok:
            raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


# ---------------------------------------------------------------------------------------------------------------
# conditioning


def guidance_mix(p: DiffusionParams) -> list[tuple[bool, bool, float]]:
    """The noise prediction at sampling as a weighted sum of predictions under condition variants: a list of (keep
    the class, keep the metadata, weight). The weights sum to 1, so an unguided model is [(True, True, 1.0)]."""
    if p.guidance == "composed":
        wc, wm = p.class_guidance, p.meta_guidance
        return [(False, False, 1.0 - wc - wm), (True, False, wc), (False, True, wm)]
    if p.guidance_scale != 1.0:
        return [(True, True, p.guidance_scale), (False, False, 1.0 - p.guidance_scale)]
    return [(True, True, 1.0)]


def concat_widths(d_t: int, k: int) -> list[int]:
    """Widths of the class and k attribute embeddings in concat mode: d_t/(1+k) each, the remainder to the class."""
    base = d_t // (1 + k)
    return [d_t - base * k] + [base] * k


def _torch_modules():
    import torch
    from torch import nn

    class SinusoidalEncoding(nn.Module):
        """A number (e.g. age in years) -> sin/cos features at geometric frequencies; NaN -> a learned token."""

        def __init__(self, width: int, scale: float = 100.0):
            super().__init__()
            half = max(1, width // 2)
            self.register_buffer("freqs", torch.exp(-math.log(10_000.0) * torch.arange(half) / half) * 1000 / scale)
            self.proj = nn.Linear(2 * half, width)
            self.unknown = nn.Parameter(torch.zeros(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            nan = torch.isnan(x)
            arg = torch.nan_to_num(x, 0.0)[:, None] * self.freqs[None]
            out = self.proj(torch.cat([arg.sin(), arg.cos()], dim=1))
            return torch.where(nan[:, None], self.unknown.expand_as(out), out)

    class ConditionEncoder(nn.Module):
        """Class + metadata -> z_cond of width d_t (concat / additive / linear)."""

        def __init__(self, n_classes: int, vocabularies: dict[str, list[str]], numeric: list[str], d_t: int,
                     mode: str):
            super().__init__()
            self.mode = mode
            self.categorical = list(vocabularies)
            self.numeric = list(numeric)
            k = len(self.categorical) + len(self.numeric)
            widths = concat_widths(d_t, k) if mode in ("concat", "linear") else [d_t] * (1 + k)
            # one extra index per table: the "dropped" token for classifier-free guidance
            self.class_embedding = nn.Embedding(n_classes + 1, widths[0])
            self.attribute_embeddings = nn.ModuleDict(
                {a: nn.Embedding(len(v) + 1, w) for (a, v), w in zip(vocabularies.items(), widths[1:], strict=False)}
            )
            self.numeric_encoders = nn.ModuleDict(
                {a: SinusoidalEncoding(w) for a, w in zip(self.numeric, widths[1 + len(self.categorical):],
                                                           strict=True)}
            )
            self.linear = nn.Linear(d_t, d_t) if mode == "linear" else None
            self.d_t = d_t

        def forward(self, labels: torch.Tensor, codes: dict[str, torch.Tensor]) -> torch.Tensor:
            parts = [self.class_embedding(labels)]
            parts += [self.attribute_embeddings[a](codes[a]) for a in self.categorical]
            parts += [self.numeric_encoders[a](codes[a]) for a in self.numeric]
            if self.mode == "additive":
                return torch.stack(parts).sum(0)
            z = torch.cat(parts, dim=1)
            return self.linear(z) if self.linear is not None else z

    return SinusoidalEncoding, ConditionEncoder


class Vocabulary:
    """Categorical attribute values seen in training, plus ``Unknown``; unseen values map to ``Unknown``."""

    def __init__(self, values: dict[str, list[str]]):
        self.values = {a: sorted(set(v) - {UNKNOWN}) + [UNKNOWN] for a, v in values.items()}

    @classmethod
    def from_metadata(cls, meta: pd.DataFrame, attributes: list[str]) -> Vocabulary:
        return cls({a: meta[a].astype(str).tolist() for a in attributes})

    def encode(self, attribute: str, values: pd.Series) -> np.ndarray:
        index = {v: i for i, v in enumerate(self.values[attribute])}
        unknown = index[UNKNOWN]
        return np.array([index.get(str(v), unknown) for v in values], dtype=np.int64)

    def dropped(self, attribute: str) -> int:
        """Index of the classifier-free-guidance token (one past the vocabulary)."""
        return len(self.values[attribute])


# ---------------------------------------------------------------------------------------------------------------
# the method


def torch_max_abs(mean, std) -> float:
    """max over channels of max(|(-1 - mean) / std|, |(1 - mean) / std|)."""
    return float(max(((-1 - mean) / std).abs().max(), ((1 - mean) / std).abs().max()))


def resolve_mixed_precision(setting: str, device: str) -> str:
    """auto -> fp16/bf16 on CUDA, fp32 elsewhere.

    On the CPU, bf16 autocast was measured slower than fp32 for the cpu preset's UNet even with native avx512_bf16
    (83 vs 108 img/s, 56 with channels_last; tests/perf/test_perf_diffusion.py): without AMX tiles oneDNN's bf16
    convolutions do not beat its fp32 ones at these channel widths, and autocast adds casts. ``bf16`` stays
    selectable for CPUs with AMX, where it pays."""
    import torch

    if setting != "auto":
        return setting
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(precision: str, device: str):
    """An Accelerator for this training run. accelerate keeps one process-wide state; a single-process run that asks
    for another precision than the previous run (sweeps, tests) resets it. Under ``accelerate launch`` the
    launcher's settings stand and a mismatch is an error."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", precision) != precision:
        if AcceleratorState().num_processes > 1:
            raise ValueError(
                f"accelerate was launched with mixed_precision={state.get('_mixed_precision')!r}, the run asks "
                f"for {precision!r}: set method.mixed_precision to match the launch config"
            )
        AcceleratorState._reset_state(reset_partial_state=True)
    from accelerate.utils import DataLoaderConfiguration

    # split_batches: method.batch_size is the global batch, shared out over the processes; without it accelerate's
    # scheduler wrapper would step the learning-rate schedule once per process per step
    return Accelerator(mixed_precision=precision, cpu=device == "cpu",
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


class DiffusionModel:
    """The trained pieces: UNet, condition encoder, vocabulary, noise schedule config; sampling lives here too."""

    def __init__(self, params: DiffusionParams, classes: list[str], vocab: Vocabulary, image_size: int, seed: int = 0):
        import torch

        from benchmark.core._compat import ensure_torchvision

        ensure_torchvision()
        from diffusers import UNet2DModel

        _, ConditionEncoder = _torch_modules()
        self.params = params
        self.seed = seed  # the replicate's model seed: initial weights, batches and noise of training
        self.classes = list(classes)
        self.vocab = vocab
        self.image_size = image_size
        self.pixel_mean = torch.zeros(3)  # per-channel statistics in [-1, 1] units (identity unless normalize)
        self.pixel_std = torch.ones(3)
        self.numeric = [a for a in params.attributes if a in NUMERIC]
        self.d_t = params.block_out_channels[0] * 4  # UNet2DModel's time-embedding width
        n = len(params.block_out_channels)
        down, up = ["DownBlock2D"] * n, ["UpBlock2D"] * n
        if params.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        vocabularies = {a: vocab.values[a] for a in params.attributes if a not in NUMERIC}
        with torch.random.fork_rng(devices=[]):  # initial weights depend on the model seed only
            torch.manual_seed(seed)
            self.unet = UNet2DModel(
                sample_size=image_size,
                in_channels=3,
                out_channels=3,
                block_out_channels=tuple(params.block_out_channels),
                layers_per_block=params.layers_per_block,
                down_block_types=tuple(down),
                up_block_types=tuple(up),
                add_attention=params.attention,
                norm_num_groups=params.norm_num_groups,
                class_embed_type="identity",
            )
            self.cond = ConditionEncoder(len(classes), vocabularies, self.numeric, self.d_t, params.cond_mode)

    # -- conditioning tensors
    def codes(self, meta: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        index = {c: i for i, c in enumerate(self.classes)}
        unknown_classes = sorted(set(meta["cancer_type"]) - set(index))
        if unknown_classes:
            raise ValueError(f"cannot condition on classes {unknown_classes}: the model knows {self.classes}")
        labels = meta["cancer_type"].map(index).to_numpy(dtype=np.int64)
        codes: dict[str, np.ndarray] = {}
        for a in self.params.attributes:
            if a in NUMERIC:
                codes[a] = pd.to_numeric(meta[a], errors="coerce").to_numpy(dtype=np.float32)
            else:
                codes[a] = self.vocab.encode(a, meta[a])
        return labels, codes

    def dropped_codes(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        labels = np.full(n, len(self.classes), dtype=np.int64)
        codes = {
            a: (np.full(n, np.nan, np.float32) if a in NUMERIC else np.full(n, self.vocab.dropped(a), np.int64))
            for a in self.params.attributes
        }
        return labels, codes

    def masked_codes(self, labels: np.ndarray, codes: dict[str, np.ndarray], keep_class: bool, keep_meta: bool):
        """``labels`` and ``codes`` with the class (metadata) replaced by the null tokens unless kept."""
        dl, dc = self.dropped_codes(len(labels))
        return (labels if keep_class else dl), (codes if keep_meta else dc)

    def z_cond(self, labels, codes, device):
        import torch

        t_labels = torch.tensor(labels, device=device)
        t_codes = {a: torch.tensor(v, device=device) for a, v in codes.items()}
        return self.cond(t_labels, t_codes)

    def modules(self):
        return [self.unet, self.cond]

    def state_tensors(self) -> dict:
        out = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        out.update({f"cond.{k}": v for k, v in self.cond.state_dict().items()})
        out.update({"norm.mean": self.pixel_mean, "norm.std": self.pixel_std})
        return out

    #: Pixels a batch of set_normalization holds (4,096 patches at 32 px; float64: 100 MB for the batch).
    NORMALIZATION_PIXELS = 4096 * 32 * 32

    def set_normalization(self, images: np.ndarray, batch_size: int | None = None) -> None:
        """Per-channel mean and std of ``images`` (uint8 NHWC, or a view of a mapped file) in [-1, 1] units, if
        ``params.normalize``; two passes over batches (the std about the mean, as numpy computes it) of at most
        NORMALIZATION_PIXELS pixels, so the memory grows neither with the cohort nor with the image size."""
        import torch

        if self.params.normalize != "channel" or len(images) == 0:
            return
        n = len(images) * int(np.prod(images.shape[1:3]))
        if batch_size is None:
            batch_size = max(1, self.NORMALIZATION_PIXELS // int(np.prod(images.shape[1:3])))

        def pixels(start: int) -> np.ndarray:
            return np.asarray(images[start : start + batch_size], dtype=np.float64).reshape(-1, 3) / 127.5 - 1.0

        starts = range(0, len(images), batch_size)
        mean = sum(pixels(a).sum(axis=0) for a in starts) / n
        var = sum(((pixels(a) - mean) ** 2).sum(axis=0) for a in starts) / n
        self.pixel_mean = torch.tensor(mean, dtype=torch.float32)
        self.pixel_std = torch.tensor(np.maximum(np.sqrt(var), 1e-3), dtype=torch.float32)

    def to_model_space(self, x):
        """[-1, 1] pixels (N, 3, H, W) -> what the diffusion model sees."""
        return (x - self.pixel_mean.to(x.device).view(1, 3, 1, 1)) / self.pixel_std.to(x.device).view(1, 3, 1, 1)

    def to_pixel_space(self, x):
        return x * self.pixel_std.to(x.device).view(1, 3, 1, 1) + self.pixel_mean.to(x.device).view(1, 3, 1, 1)

    def clip_range(self) -> float:
        """The largest |value| a [-1, 1] pixel takes in model space (DDIM's x0 clipping range)."""
        return float(torch_max_abs(self.pixel_mean, self.pixel_std))

    def load_tensors(self, tensors: dict) -> None:
        self.unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
        self.cond.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("cond.")})
        if "norm.mean" in tensors:
            self.pixel_mean, self.pixel_std = tensors["norm.mean"].float(), tensors["norm.std"].float()

    def predict(self, x, t, z):
        return self.unet(x, t, class_labels=z).sample

    # -- sampling
    def noise_scheduler(self):
        """The training noise schedule (DDPM), which every sampler's schedule is built from."""
        from diffusers import DDPMScheduler

        return DDPMScheduler(num_train_timesteps=self.params.num_train_timesteps,
                             beta_schedule=BETA_SCHEDULES[self.params.noise_schedule],
                             prediction_type=self.params.prediction_type)

    def scheduler(self, sampler: str):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        ddpm = self.noise_scheduler()
        if sampler == "ddim":
            return DDIMScheduler.from_config(ddpm.config, clip_sample_range=self.clip_range())
        return DPMSolverMultistepScheduler.from_config(ddpm.config, algorithm_type="dpmsolver++", solver_order=2)

    def sample(self, meta: pd.DataFrame, device: str, seed: int, progress: bool = False,
               shard: bool = False) -> np.ndarray:
        """uint8 N x H x W x 3 images conditioned on the rows of ``meta``. Each batch's noise depends on the seed and
        the batch's position only, so ``shard`` (every process of a multi-process run samples its share of the
        batches and the main process gets the whole result: distributed.fill_batches) gives the images one process
        would."""
        import torch
        from tqdm.auto import tqdm

        from benchmark.training import distributed

        p = self.params
        n = len(meta)
        out = np.zeros((n, self.image_size, self.image_size, 3), dtype=np.uint8)
        if n == 0:
            return out
        labels, codes = self.codes(meta)
        mix = guidance_mix(p)
        precision = resolve_mixed_precision(p.mixed_precision, device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        for m in self.modules():
            m.to(device).eval()
        starts = distributed.batch_starts(n, p.sample_batch_size, shard)
        bar = tqdm(total=sum(min(n, s + p.sample_batch_size) - s for s in starts),
                   desc=f"sampling ({p.sampler}, {p.sampling_steps} steps)", disable=not progress, leave=False)
        coefs = [w for _, _, w in mix]

        def make(start: int, stop: int) -> np.ndarray:
            gen = torch.Generator("cpu").manual_seed(seed * 7919 + start)
            x = torch.randn((stop - start, 3, self.image_size, self.image_size), generator=gen).to(device)
            lab, cod = labels[start:stop], {a: v[start:stop] for a, v in codes.items()}
            # one UNet call per step for every condition variant of the guidance mix (stacked on the batch)
            z = torch.cat([self.z_cond(*self.masked_codes(lab, cod, keep_class, keep_meta), device)
                           for keep_class, keep_meta, _ in mix])
            sched = self.scheduler(p.sampler)
            sched.set_timesteps(p.sampling_steps, device=device)
            for t in sched.timesteps:
                xin = torch.cat([x] * len(mix))
                with torch.autocast(device_type=device if device != "mps" else "cpu", dtype=dtype,
                                    enabled=dtype is not None):
                    out_all = self.predict(xin, t, z).float()
                eps = sum(w * part for w, part in zip(coefs, out_all.chunk(len(mix)), strict=True))
                x = sched.step(eps, t, x).prev_sample
            pixels = (self.to_pixel_space(x).clamp(-1, 1) + 1) * 127.5
            bar.update(stop - start)
            return pixels.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

        with torch.inference_mode():
            distributed.fill_batches(out, p.sample_batch_size, make, shard)
        bar.close()
        return out


def train_diffusion(model: DiffusionModel, train: Split, ckpt, ctx: Context, stop_after: int | None = None,
                    observe: Callable[[int], None] | None = None, observe_every: int = 0) -> dict:
    """Train ``model`` on ``train`` (resuming from ``ckpt``), save the final weights, return training stats.

    ``stop_after`` ends training early after that many steps without saving final weights (an interruption).
    ``observe(step)`` is called every ``observe_every`` steps (and after the last) with the EMA weights in
    ``model``, which it may sample from (the time-to-quality benchmark); the training weights are restored after.
    """
    import time

    import torch
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    from benchmark.training.loop import step_generator, train_loop

    p = model.params
    # 1. accelerate: device placement and mixed precision (fp16/bf16 autocast on CUDA; fp32 on CPU, measured faster)
    precision = resolve_mixed_precision(p.mixed_precision, ctx.device)
    accelerator = make_accelerator(precision, ctx.device)
    device = accelerator.device
    # several processes (``accelerate launch``): each computes its share of every global batch, DDP averages the
    # gradients, so the update is the one-process update of the same global batch
    from benchmark.training import distributed

    world = accelerator.num_processes
    share = distributed.share(p.batch_size)
    torch.manual_seed(model.seed)
    params = [q for m in model.modules() for q in m.parameters()]
    optimizer = torch.optim.AdamW(
        params, lr=p.lr, betas=(p.adam_beta1, p.adam_beta2), weight_decay=p.weight_decay,
        **({"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}),  # fused: one kernel
    )
    lr_sched = get_cosine_schedule_with_warmup(optimizer, max(1, int(p.warmup_fraction * p.steps)), p.steps)
    unet, cond, optimizer, lr_sched = accelerator.prepare(model.unet, model.cond, optimizer, lr_sched)
    ema = EMAModel(params, decay=p.ema_decay, foreach=True) if p.ema else None
    alphas = model.noise_scheduler().alphas_cumprod.to(device)
    # 2. the images stay where they are (an array, or a view of the memory-mapped cohort): each step reads its
    # batch's rows; class-balanced sampling weights (1 / count(class))
    model.set_normalization(train.images)
    images = train.images
    labels, codes = model.codes(train.metadata)
    counts = np.bincount(labels, minlength=len(model.classes)).astype(np.float64)
    weights = torch.as_tensor(1.0 / np.maximum(counts[labels], 1.0))
    drop_labels, drop_codes = model.dropped_codes(len(labels))

    def batch(step: int):
        g = step_generator(model.seed, step)
        idx = torch.multinomial(weights, p.batch_size, replacement=True, generator=g)
        rows = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])).permute(0, 3, 1, 2).contiguous()
        x = model.to_model_space(rows.float().div_(127.5).sub_(1.0))
        if p.flips:
            k = int(torch.randint(0, 4, (1,), generator=g))
            x = torch.rot90(x, k, dims=(2, 3))
            flip = torch.rand(p.batch_size, generator=g) < 0.5
            x[flip] = x[flip].flip(3)
        lab = labels[idx.numpy()]
        cod = {a: v[idx.numpy()] for a, v in codes.items()}
        if p.class_dropout > 0 or p.meta_dropout > 0:  # classifier-free guidance: each condition dropped on its own
            u = torch.rand(1 + len(cod), p.batch_size, generator=g).numpy()
            rates = np.array([p.class_dropout] + [p.meta_dropout] * len(cod))[:, None]
            drop = u < rates
            lab = np.where(drop[0], drop_labels[: p.batch_size], lab)
            cod = {a: np.where(drop[i + 1], drop_codes[a][: p.batch_size], v) for i, (a, v) in enumerate(cod.items())}
        noise = torch.randn(x.shape, generator=g)
        t = torch.randint(0, p.num_train_timesteps, (p.batch_size,), generator=g)
        # the global batch is drawn in every process alike; each keeps its share
        return (x[share].to(device), lab[share], {a: v[share] for a, v in cod.items()}, noise[share].to(device),
                t[share].to(device))

    # 3. one optimisation step
    def step_fn(step: int) -> dict[str, float]:
        unet.train()
        cond.train()
        x, lab, cod, noise, t = batch(step)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x + (1 - a).sqrt() * noise
        with accelerator.autocast():
            z = cond(torch.tensor(lab, device=device), {k: torch.tensor(v, device=device) for k, v in cod.items()})
            pred = unet(noisy, t, class_labels=z).sample
        target = noise if p.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x
        per_image = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        loss = (per_image * loss_weights(alphas[t], p)).mean()
        value = distributed.mean(loss.detach().reshape(1)).item()  # the global batch's loss
        if not math.isfinite(value):
            return {"loss": value, "images": p.batch_size}
        accelerator.backward(loss)
        if p.grad_clip > 0:
            accelerator.clip_grad_norm_(params, p.grad_clip)
        optimizer.step()
        lr_sched.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        if p.preview_every and (step + 1) % p.preview_every == 0 and accelerator.is_main_process:
            preview(step + 1)
        if observe is not None and ((step + 1) % observe_every == 0 or step + 1 == p.steps):
            with ema_weights():
                observe(step + 1)
        return {"loss": value, "images": p.batch_size, "lr": lr_sched.get_last_lr()[0]}

    # periodic sample grids (EMA weights, a few DPM-Solver++ steps): how training is going, in MLflow
    preview_rows = _preview_conditions(train.metadata, model.classes, p.attributes)

    @contextlib.contextmanager
    def ema_weights():
        """The EMA weights in the model for the duration (sampling mid-training), the training weights after."""
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        try:
            yield
        finally:
            if ema is not None:
                ema.restore(params)

    def preview(step: int) -> None:
        from benchmark.core.images import sample_grid_png

        saved = model.params
        try:
            with ema_weights():
                model.params = replace(saved, sampler="dpmpp", sampling_steps=10, guidance="joint",
                                       guidance_scale=1.0)
                images = model.sample(preview_rows, ctx.device, seed=0)
        finally:
            model.params = saved
        png = sample_grid_png(images, preview_rows, f"{kind} at step {step} (EMA weights, DPM-Solver++ 10 steps)",
                              classes=model.classes)
        path = ctx.run_dir / "figures" / "training" / f"samples_step{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        ctx.log_artifact(path)

    def get_state() -> dict:
        state = {
            "unet": accelerator.unwrap_model(unet).state_dict(),
            "cond": accelerator.unwrap_model(cond).state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_sched.state_dict(),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        return state

    def set_state(state: dict) -> None:
        accelerator.unwrap_model(unet).load_state_dict(state["unet"])
        accelerator.unwrap_model(cond).load_state_dict(state["cond"])
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])

    # 4. the loop (resume, checkpoints, NaN guard, progress), then the EMA weights become the model
    kind = "medi" if p.attributes else "cls"
    started = time.time()
    reached = train_loop(
        checkpoints=ckpt,
        total_steps=p.steps,
        step_fn=step_fn,
        get_state=get_state,
        set_state=set_state,
        checkpoint_every=p.checkpoint_every,
        desc=f"{ctx.task.name}: training {kind} ({PRECISION_LABEL.get(precision, precision)})",
        progress=ctx.progress,
        log_metrics=ctx.log_metrics,
        log_every=max(1, min(50, p.steps // 10)),
        stop_after=stop_after,
    )
    if reached < p.steps:
        ckpt.save(reached, get_state())
        return {"stopped_at": reached}
    if ema is not None:
        ema.copy_to(params)
    model.unet = accelerator.unwrap_model(unet).float()
    model.cond = accelerator.unwrap_model(cond).float()
    stats = {"train_seconds": round(time.time() - started, 1), "train_steps": p.steps, "precision": precision}
    if world > 1:
        stats["processes"] = world
    ckpt.save_final(model.state_tensors(), {"steps": p.steps, **stats})
    accelerator.wait_for_everyone()
    return stats


PRECISION_LABEL = {"no": "fp32"}


def loss_weights(alpha_bar, p: DiffusionParams):
    """Per-image weight of the denoising loss at noise level ``alpha_bar`` (a tensor): 1 for ``loss_weighting=none``;
    Min-SNR-gamma otherwise, min(SNR, gamma) / (SNR + 1) for v-prediction and min(SNR, gamma) / SNR for epsilon,
    SNR = alpha_bar / (1 - alpha_bar). Both forms equal Min-SNR's min(SNR, gamma) on the x0 loss."""
    import torch

    if p.loss_weighting == "none":
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    clipped = torch.clamp(snr, max=p.snr_gamma)
    return clipped / (snr + 1) if p.prediction_type == "v_prediction" else clipped / snr


def _preview_conditions(meta: pd.DataFrame, classes: list[str], attributes: Sequence[str], n_values: int = 4,
                        per_cell: int = 4) -> pd.DataFrame:
    """Rows for the training-time sample grids: each class at the ``n_values`` most frequent values of the first
    categorical attribute (the site, when conditioned on), the other attributes at that value's most frequent value
    (median for numeric ones), ``per_cell`` each; class-only models get ``n_values * per_cell`` per class."""
    categorical = [a for a in attributes if a not in NUMERIC]
    axis = "tissue_source_site" if "tissue_source_site" in categorical else (categorical[0] if categorical else None)
    values = meta[axis].astype(str).value_counts().index[:n_values] if axis else [None]
    rows = []
    for c in classes:
        for v in values:
            row: dict[str, Any] = {"cancer_type": c}
            if axis is not None:
                at = meta[meta[axis].astype(str) == v]
                for a in attributes:
                    if a == axis:
                        row[a] = v
                    elif a in NUMERIC:
                        row[a] = float(pd.to_numeric(at[a], errors="coerce").median()) if len(at) else np.nan
                    else:
                        row[a] = at[a].astype(str).mode().iloc[0] if len(at) else UNKNOWN
            rows += [row] * (per_cell if axis is not None else n_values * per_cell)
    out = pd.DataFrame(rows)
    for a in ("tissue_source_site", "race", "gender"):  # the grid's captions name the site and race
        if a not in out:
            out[a] = UNKNOWN
    return out


class DiffusionMethod(Method):
    """Shared by medi and cls: fit (or load the cached model), then synthesize the generation plan."""

    Params = DiffusionParams
    default_attributes: tuple[str, ...] = ("tissue_source_site", "race")
    multi_process = True  # training and sampling share out over the processes of ``accelerate launch``

    def __init__(self, params: DiffusionParams | None = None):
        super().__init__(params or self.default_params("cpu"))
        validate(self.params)
        self.model: DiffusionModel | None = None

    @classmethod
    def default_params(cls, preset: str) -> DiffusionParams:
        base = DiffusionParams(attributes=cls.default_attributes)
        return replace(base, **PRESETS.get(preset, {}))

    @property
    def generative(self) -> bool:
        return True

    def training_params(self) -> dict:
        return {k: v for k, v in asdict(self.params).items() if k not in SAMPLING_FIELDS}

    # 1. fit
    def fit(self, train: Split, ctx: Context) -> None:
        ckpt = self._prepare(train, ctx)
        if self._load_cached(ckpt, ctx):
            return
        with ckpt.exclusive():  # one trainer per model; other processes (sweep workers) wait, then load it
            if self._load_cached(ckpt, ctx):
                return
            ctx.report["model_reused"] = False
            stats = train_diffusion(self.model, train, ckpt, ctx)
            ctx.report.update(stats)

    def load(self, train: Split, ctx: Context) -> bool:
        """Load the model trained on ``train`` with these parameters if the cache has it; never trains."""
        return self._load_cached(self._prepare(train, ctx), ctx)

    def _prepare(self, train: Split, ctx: Context):
        """Build the untrained model for ``train`` and return its checkpoint folder (content-addressed)."""
        from benchmark.training.loop import Checkpoints, model_key

        absent = [a for a in self.params.attributes if a not in train.metadata.columns]
        if absent:
            from benchmark.core.config import ConfigError

            extra = [c for c in train.metadata.columns if c not in RESERVED_COLUMNS]
            raise ConfigError(f"method.attributes names {absent}, which task {ctx.task.name!r} does not have; its "
                              f"metadata columns: {extra}")
        attrs = [a for a in self.params.attributes if a not in NUMERIC]
        vocab = Vocabulary.from_metadata(train.metadata, attrs)
        classes = list(ctx.task.classes)
        key = model_key(self.name, self.training_params(), train.fingerprint(), MODEL_VERSION,
                        {"classes": classes, "device_kind": "gpu" if ctx.device == "cuda" else ctx.device,
                         "seed": ctx.model_seed})
        folder = ctx.cache_dir / "models" / "diffusion" / key
        self.model = DiffusionModel(self.params, classes, vocab, train.image_size, ctx.model_seed)
        ctx.report["model_dir"] = str(folder)
        ctx.report["model_parameters"] = sum(p.numel() for m in self.model.modules() for p in m.parameters())
        return Checkpoints(folder)

    def _load_cached(self, ckpt, ctx: Context) -> bool:
        from benchmark.training import distributed

        if not distributed.broadcast(ckpt.is_done()):  # several processes: the main one decides for all
            return False
        self.model.load_tensors(ckpt.load_final())
        ctx.report["model_reused"] = True
        try:  # how it was trained, as a run that trains it reports (models cached before this have steps only)
            meta = json.loads((ckpt.folder / "done.json").read_text())
        except (OSError, ValueError):
            meta = {}
        ctx.report.update({k: meta[k] for k in ("train_seconds", "train_steps", "precision") if k in meta})
        log.info("%s: reusing trained model %s", self.name, ckpt.folder)
        return True

    # 2. augment with the generation plan
    def plan(self, train: Split, ctx: Context) -> pd.DataFrame:
        p = self.params
        classes = list(ctx.task.classes)
        # cls generates the same number per class as medi would, so the two differ only in conditioning
        keys = [a for a in (self.params.attributes or MeDi.default_attributes) if a not in NUMERIC]
        plan = generation_plan(train.metadata, classes, keys, p.plan, p.synthetic_ratio, ctx.seed)
        if not self.params.attributes:
            return class_totals(plan, classes)
        return plan

    def augment(self, train: Split, ctx: Context) -> Split:
        plan = self.plan(train, ctx)
        rows = expand_plan(plan, train.metadata, self.name, ctx.seed)
        ctx.report["n_synthetic"] = len(rows)
        ctx.report["plan"] = plan.to_dict(orient="records")[:200]
        if len(rows) == 0:
            log.warning("%s: empty generation plan (no missing combinations); training set unchanged", self.name)
            return train
        images = self.synthesize(rows, ctx, shard=True)  # every process of a multi-process run makes its share
        synthetic = Split(images, rows, "synthetic")
        return concat([train, synthetic], "train")

    def synthesize(self, conditions: pd.DataFrame, ctx: Context, shard: bool = False) -> np.ndarray:
        """Images for the rows of ``conditions``; ``shard``: called by every process of a multi-process run, each
        samples its share (only the augmentation is; the main process alone samples for the FID)."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: synthesize() called before fit()")
        meta = conditions.copy()
        if not self.params.attributes:  # cls: only the class is used; drop the rest explicitly
            for a in CATEGORICAL:
                meta[a] = UNKNOWN
        return self.model.sample(meta, ctx.device, ctx.seed, progress=ctx.progress, shard=shard)


@METHODS.register("medi", "MeDi: diffusion conditioned on class + metadata (site, race); fills missing combinations")
class MeDi(DiffusionMethod):
    name = "medi"
    default_attributes = ("tissue_source_site", "race")


@METHODS.register("cls", "class-only diffusion (MeDi with no metadata attributes): same plan size, no site control")
class CLS(DiffusionMethod):
    name = "cls"
    default_attributes = ()



#: medi_cg's fields on top of medi's: condition dropout in training and composed guidance at sampling, the point the
#: guidance frontier chose on its validation draws of true patches (python -m benchmark guidance --task nsclc
#: --preset cpu, reports/guidance/nsclc_cpu: the lowest FID to true patches of the unseen cells, 0.48 against medi's
#: 0.79, keeping both of medi's fidelities, class 0.73 vs 0.67 and site 0.71 vs 0.56); the same on every preset
#: until a preset's own frontier says otherwise
GUIDED: dict[str, Any] = dict(class_dropout=0.1, meta_dropout=0.1, guidance="composed", class_guidance=2.0,
                              meta_guidance=1.5)


@METHODS.register("medi_cg", "MeDi with per-attribute condition dropout and composed guidance (class and metadata "
                  "weighted apart): a MeDiBench variant beyond the paper")
class MeDiCG(MeDi):
    """MeDi trained with the class and each metadata attribute dropped independently, sampled with one guidance
    direction per concept (Composable Diffusion): the class is asked for apart from the site, so a class at a site
    that never sent it need not be read off the site. ``medi`` stays the paper's (no dropout, no guidance)."""

    name = "medi_cg"

    @classmethod
    def default_params(cls, preset: str) -> DiffusionParams:
        return replace(super().default_params(preset), **GUIDED)
