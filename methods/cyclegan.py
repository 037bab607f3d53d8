"""CycleGAN site-to-site translation: the same counterfactual combinations as MeDi's ``fill`` plan, made by
translating real patches of class c from sites that have c into the style of sites that lack c.

Design: ONE generator conditioned on the target site, ONE discriminator with one PatchGAN head per site.
The reference CycleGAN (Zhu et al. 2017) trains a generator pair and a discriminator pair per domain pair, which
for S sites means S (S - 1) / 2 models: 210 for the 21 training sites of the cpu nsclc task, tens of thousands for
TCGA's hundreds of sites, and most pairs would see a handful of patches. Pooling sites into two groups would
scale, but could only translate "towards the pool", not into one named site as the fill plan asks. So:

* the generator is the reference ResNet generator whose instance norms are *conditional* instance norms
  (Dumoulin et al. 2017, "A learned representation for artistic style", built for many styles in one network):
  each site owns a scale and shift per normalized channel, about 2 x (sum of the norm widths) parameters, ~4 k per
  site at the cpu preset. A translation x -> site t is ``G(x, t)``; the cycle is ``G(G(x, t), s) ~ x`` with s the
  source site, and the identity loss is ``G(y, t) ~ y`` for a real patch y of site t (as in the reference);
* the discriminator is the reference PatchGAN whose last convolution has one output map per site; a patch
  judged as (real or translated) site t is scored by head t. Every head is a site-specific LSGAN discriminator
  as in the reference, sharing the lower layers, so a new site costs one output channel;
* every site is both a source and a target, so one forward cycle per step (source -> random target -> source)
  covers both directions of every pair; targets are drawn uniformly over the sites so small sites train too;
* the vocabulary is the training sites plus ``Unknown`` (a head trained on patches of every site), the
  counterpart of MeDi's 'Unknown' category: a condition naming a site the model never saw (e.g. the real
  held-out patches the runner's FID compares with) is translated towards the pooled style and counted.

Cost grows with the number of images, not with the number of site pairs, and the model is trained once per
training split and model seed (cached by ``model_key``), shared by every run that asks for the same two.
Defaults follow the reference implementation (ResNet generator, PatchGAN, LSGAN, lambda_cycle 10,
lambda_identity 0.5, Adam lr 2e-4 with beta1 0.5, an image pool of 50, constant then linearly decaying learning
rate), scaled to the preset's image size; the cpu preset trains 400 steps at lr 5e-4, which reached a closer colour
match than 1,200 at 2e-4 in a third of the time (``REFERENCE_RECIPE``). As in the reference nothing ties the
translation to the class: where a
target site only ever sent the other class, its discriminator head has only seen that class, which can pull the
morphology along with the stain (a known CycleGAN failure mode the benchmark is meant to expose).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.core.config import tunable
from benchmark.core.data import UNKNOWN, ImageSource, Split, concat
from benchmark.core.generation import PLAN_MODES, expand_plan, generation_plan
from benchmark.core.registry import METHODS
from benchmark.protocols import Context, Method
from benchmark.training import distributed
from benchmark.training.loop import Checkpoints, TrainingError, model_key, step_generator, train_loop

log = logging.getLogger(__name__)

MODEL_VERSION = "1"  # bump when a change makes cached models invalid
PRECISIONS = ("fp32", "bf16")
#: Params fields that do not change the trained model (left out of the model cache key).
NOT_IN_MODEL_KEY = ("plan", "ratio", "attributes", "sample_batch_size", "checkpoint_every", "log_every")


@dataclass(frozen=True)
class Params:
    """Hyperparameters of the site-conditioned CycleGAN (``--set method.<field>=...``).

    The defaults are the cpu preset; the reference implementation's values are noted (and are the paper preset).
    """

    # architecture (reference: ngf 64, 2 down-samplings, 9 residual blocks at 256 px / 6 at 128 px, ndf 64,
    # 3-layer PatchGAN, instance norm)
    ngf: int = 16  # generator width of the first layer
    n_downsampling: int = 2  # strided convolutions before the residual blocks (and as many up-samplings after)
    n_blocks: int = 6  # residual blocks at the lowest resolution
    ndf: int = 32  # discriminator width of the first layer
    n_layers_d: int = 2  # PatchGAN strided layers (3: 70x70 receptive field; 2: 34x34, for 32 px patches)
    # losses
    lambda_cycle: float = tunable(10.0, low=1.0, high=20.0)  # weight of the cycle-consistency L1 loss
    lambda_identity: float = 0.5  # identity loss weight, relative to lambda_cycle (as in the reference)
    # optimization
    lr: float = tunable(5e-4, low=5e-5, high=1e-3, log=True)  # Adam learning rate of both networks (reference: 2e-4)
    beta1: float = 0.5  # Adam beta1 (the reference's 0.5)
    beta2: float = 0.999  # Adam beta2
    batch_size: int = 32  # reference: 1
    steps: int = 400  # training steps (batches)
    decay_steps: int = 200  # the learning rate decays linearly to zero over the last decay_steps steps
    pool_size: int = 50  # history of translated images shown to the discriminator (0: none)
    flip: bool = True  # random horizontal flips of training patches (reference: on)
    precision: str = "fp32"  # "fp32" or "bf16" autocast
    # what augment() synthesizes
    plan: str = "fill"  # generation plan (benchmark.core.generation): fill or balance
    ratio: float = tunable(1.0, low=0.25, high=2.0)  # synthetic patches per real training patch
    attributes: tuple[str, ...] = ("tissue_source_site", "race")  # the plan's combinations (race: metadata only)
    # bookkeeping (not part of the model)
    sample_batch_size: int = 128  # patches translated per generator call
    checkpoint_every: int = 250  # training steps between resumable checkpoints
    log_every: int = 50  # training steps between logged losses

    def __post_init__(self) -> None:
        positive = ("ngf", "n_blocks", "ndf", "n_layers_d", "batch_size", "steps", "sample_batch_size",
                    "checkpoint_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"method.{name}={getattr(self, name)!r}: expected >= 1")
        if not 0 <= self.decay_steps <= self.steps:
            raise ValueError(f"method.decay_steps={self.decay_steps!r}: expected 0 <= decay_steps <= steps "
                             f"({self.steps})")
        if self.n_downsampling < 0 or self.pool_size < 0:
            raise ValueError(f"method.n_downsampling={self.n_downsampling!r} / method.pool_size="
                             f"{self.pool_size!r}: expected >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"method.precision={self.precision!r}: choose from {', '.join(PRECISIONS)}")
        if self.plan not in PLAN_MODES:
            raise ValueError(f"method.plan={self.plan!r}: choose from {', '.join(PLAN_MODES)}")
        if self.ratio < 0:
            raise ValueError(f"method.ratio={self.ratio!r}: expected >= 0")
        if "tissue_source_site" not in self.attributes:
            raise ValueError(f"method.attributes={self.attributes!r}: must include tissue_source_site (the "
                             "translation target)")

    def model_fields(self) -> dict[str, Any]:
        """The fields that determine the trained model (the model cache key)."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_IN_MODEL_KEY}


PRESET_PARAMS: dict[str, Params] = {
    # seconds: a handful of steps of a tiny network
    "smoke": Params(ngf=8, n_blocks=1, ndf=8, n_layers_d=2, batch_size=8, steps=6, decay_steps=3, pool_size=4,
                    checkpoint_every=3, log_every=2),
    # 32 px, 0.53 M generator parameters, 400 steps of 32 at lr 5e-4 (~13 epochs of cpu nsclc): ~75 s on 2 cores.
    # The earlier 1200 steps at 2e-4 (REFERENCE_RECIPE) drifted away from the target sites' colour after ~450 steps
    # (delta-E 2.4 -> 4.7; `python -m benchmark perf --stages time_to_quality`); fp32 because bf16 autocast was no
    # faster for this network on this CPU (0.7x - 1.0x)
    "cpu": Params(),
    # 64 px on one GPU, about an hour
    "gpu": Params(ngf=64, n_blocks=6, ndf=64, n_layers_d=3, batch_size=8, steps=40_000, decay_steps=20_000, lr=2e-4,
                  precision="bf16", checkpoint_every=2000, log_every=200),
    # the reference implementation at 128 px (resnet_6blocks, 70x70 PatchGAN, batch 1, 100 + 100 epochs of
    # ~2000 images = 400 k steps)
    "paper": Params(ngf=64, n_blocks=6, ndf=64, n_layers_d=3, batch_size=1, steps=400_000, decay_steps=200_000,
                    lr=2e-4, precision="fp32", checkpoint_every=10_000, log_every=500),
}


# ---------------------------------------------------------------------------------------------------------------
# networks

#: The cpu preset's training recipe before the time-to-quality benchmark: the reference of ``python -m benchmark
#: perf --stages time_to_quality``, selectable with --set method.<field>=... on any preset.
REFERENCE_RECIPE: dict[str, Any] = dict(steps=1200, decay_steps=600, lr=2e-4)


def reference_recipe(preset: str) -> dict[str, Any]:
    """The fields that turn a preset's parameters into the reference recipe (the cpu preset's; others unchanged)."""
    return dict(REFERENCE_RECIPE) if preset == "cpu" else {}


def _torch():
    import torch

    return torch


def build_networks(params: Params, n_domains: int, seed: int = 0) -> tuple[Any, Any]:
    """(generator, discriminator) for ``n_domains`` target sites, with the reference's N(0, 0.02) init."""
    import torch
    from torch import nn

    class CondInstanceNorm(nn.Module):
        """Instance norm whose scale and shift belong to the target site."""

        def __init__(self, channels: int):
            super().__init__()
            self.norm = nn.InstanceNorm2d(channels, affine=False)
            self.embed = nn.Embedding(n_domains, 2 * channels)
            with torch.no_grad():
                self.embed.weight[:, :channels] = 1.0
                self.embed.weight[:, channels:] = 0.0

        def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
            gamma, beta = self.embed(domain).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
            return self.norm(x) * gamma + beta

    class Block(nn.Module):
        """conv -> conditional instance norm -> ReLU (or nothing)."""

        def __init__(self, conv: nn.Module, channels: int, relu: bool = True):
            super().__init__()
            self.conv, self.norm, self.relu = conv, CondInstanceNorm(channels), relu

        def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
            x = self.norm(self.conv(x), domain)
            return torch.relu(x) if self.relu else x

    class ResBlock(nn.Module):
        def __init__(self, ch: int):
            super().__init__()
            self.a = Block(nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3)), ch)
            self.b = Block(nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3)), ch, relu=False)

        def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
            return x + self.b(self.a(x, domain), domain)

    class Generator(nn.Module):
        """The reference ResnetGenerator with site-conditional instance norms; output in [-1, 1]."""

        def __init__(self):
            super().__init__()
            ngf, layers = params.ngf, []
            layers.append(Block(nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7)), ngf))
            for i in range(params.n_downsampling):
                c = ngf * 2**i
                layers.append(Block(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), 2 * c))
            c = ngf * 2**params.n_downsampling
            layers += [ResBlock(c) for _ in range(params.n_blocks)]
            for i in range(params.n_downsampling):
                c = ngf * 2 ** (params.n_downsampling - i)
                up = nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1)
                layers.append(Block(up, c // 2))
            self.layers = nn.ModuleList(layers)
            self.out = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh())

        def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x, domain)
            return self.out(x)

    class Discriminator(nn.Module):
        """The reference NLayerDiscriminator (PatchGAN) with one output map per site."""

        def __init__(self):
            super().__init__()
            ndf, n = params.ndf, params.n_layers_d
            seq: list[nn.Module] = [nn.Conv2d(3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
            mult = 1
            for i in range(1, n + 1):
                prev, mult = mult, min(2**i, 8)
                stride = 2 if i < n else 1
                seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1), nn.InstanceNorm2d(ndf * mult),
                        nn.LeakyReLU(0.2, True)]
            self.net = nn.Sequential(*seq)
            self.heads = nn.Conv2d(ndf * mult, n_domains, 4, stride=1, padding=1)  # weights of one head per site

        def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
            """Scores of each image under its site's head only: B x h x w (cost independent of the site count)."""
            feats = self.net(x)
            cols = nn.functional.unfold(feats, kernel_size=4, padding=1)  # B x (C 4 4) x L
            w = self.heads.weight[domain].flatten(1).unsqueeze(1).to(cols.dtype)  # B x 1 x (C 4 4)
            out = torch.bmm(w, cols).squeeze(1) + self.heads.bias[domain].unsqueeze(1).to(cols.dtype)
            side = feats.shape[-1] - 1
            return out.view(len(x), feats.shape[-2] - 1, side)

    def init(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the replicate's model seed (Context.model_seed)
        g, d = Generator(), Discriminator()
        g.apply(init)
        d.apply(init)
    return g, d


def autocast(device: str, precision: str):
    """bf16 autocast on the device's type, or nothing for fp32."""
    torch = _torch()
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = device.split(":")[0]
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def to_tensor(images: np.ndarray, device: str) -> Any:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1] on ``device``."""
    torch = _torch()
    x = torch.from_numpy(np.require(images, np.uint8, ["C", "W"])).to(device)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()  # NCHW: ~15% faster than NHWC on CPU


def to_uint8(x: Any) -> np.ndarray:
    """float N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3 (rounded, clipped)."""
    return x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(_torch().uint8).permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------------------------------------------------------
# training


def lsgan_loss(score: Any, real: bool) -> Any:
    """Least-squares GAN loss (the reference's 'lsgan'): mean (score - 1)^2 for real, mean score^2 for fake."""
    return ((score - 1.0) ** 2).mean() if real else (score**2).mean()


def l1_loss(a: Any, b: Any) -> Any:
    """Mean absolute difference (cycle and identity losses)."""
    return (a - b).abs().mean()


class Trainer:
    """One site-conditioned CycleGAN being trained: networks, optimizers, image pool and the step function."""

    def __init__(self, params: Params, images: np.ndarray, domains: np.ndarray, n_domains: int, device: str,
                 seed: int = 0):
        torch = _torch()
        if len(images) != len(domains) or len(images) == 0:
            raise ValueError(f"need matching, non-empty images and domains, got {len(images)} and {len(domains)}")
        self.p, self.device, self.n_domains = params, device, n_domains
        # uint8 on the CPU (an array, or a view of the memory-mapped cohort): each step reads its batch's rows
        self.images = np.require(images, np.uint8, ["C", "W"]) if isinstance(images, np.ndarray) else images
        self.domains = torch.from_numpy(np.array(domains, dtype=np.int64))
        # real patches of each domain: rows order[start[d] : start[d] + count[d]]; the last domain (Unknown) = all
        known = n_domains - 1
        order = torch.argsort(self.domains, stable=True)
        counts = torch.bincount(self.domains, minlength=known)[:known]
        self.order = torch.cat([order, torch.arange(len(images))])
        self.start = torch.cat([torch.cumsum(counts, 0) - counts, torch.tensor([len(images)])])
        self.count = torch.cat([counts, torch.tensor([len(images)])])
        self.targets = torch.cat([torch.nonzero(counts).flatten(), torch.tensor([known])])  # domains with patches
        self.seed = seed
        self.G, self.D = build_networks(params, n_domains, seed)
        self.G.to(device)
        self.D.to(device)
        betas = (params.beta1, params.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=params.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=params.lr, betas=betas)
        self.pool = torch.zeros((0, 3, images.shape[1], images.shape[2]))
        self.pool_domains = torch.zeros(0, dtype=torch.long)

    def lr_at(self, step: int) -> float:
        """Constant, then linear decay to zero over the last ``decay_steps`` steps (the reference's 'linear')."""
        p = self.p
        constant = p.steps - p.decay_steps
        return p.lr * (1.0 - max(0, step - constant) / float(p.decay_steps + 1))

    def _batch(self, idx: Any, flips: Any) -> Any:
        x = to_tensor(np.asarray(self.images[idx.numpy()]), self.device)
        return _flip(x, flips.to(self.device))

    def _query_pool(self, fake: Any, domains: Any, g: Any) -> tuple[Any, Any]:
        """The reference ImagePool: fill up to pool_size, then return a stored image instead with probability 1/2."""
        torch = _torch()
        if self.p.pool_size == 0:
            return fake, domains
        out, out_dom = fake.detach().float().cpu().clone(), domains.cpu().clone()
        coins = torch.rand(len(fake), generator=g)
        slots = torch.randint(0, self.p.pool_size, (len(fake),), generator=g)
        for i in range(len(fake)):
            if len(self.pool) < self.p.pool_size:
                self.pool = torch.cat([self.pool, out[i : i + 1]])
                self.pool_domains = torch.cat([self.pool_domains, out_dom[i : i + 1]])
            elif coins[i] > 0.5:
                j = int(slots[i])
                kept, kept_dom = self.pool[j].clone(), self.pool_domains[j].clone()
                self.pool[j], self.pool_domains[j] = out[i], out_dom[i]
                out[i], out_dom[i] = kept, kept_dom
        return out.to(self.device), out_dom.to(self.device)

    def step(self, step: int) -> dict[str, float]:
        """One generator and one discriminator update; returns the losses (``loss`` = their sum) and ``images``."""
        torch = _torch()
        p, dev = self.p, self.device
        g = step_generator(self.seed, step)
        b = p.batch_size
        # 1. a batch of sources, a target site for each, and a real patch of that target site; with several processes
        # (accelerate launch) every one draws the same global batch and keeps its share
        src_idx = torch.randint(0, len(self.images), (b,), generator=g)
        target = self.targets[torch.randint(0, len(self.targets), (b,), generator=g)]
        pick = (torch.rand(b, generator=g, dtype=torch.float64) * self.count[target]).long()
        real_idx = self.order[self.start[target] + pick.clamp(max=self.count[target] - 1)]
        flips = torch.rand(2, b, generator=g) < (0.5 if p.flip else 0.0)
        mine = distributed.share(b)
        src_idx, target, real_idx, flips = src_idx[mine], target[mine], real_idx[mine], flips[:, mine]
        x, y = self._batch(src_idx, flips[0]), self._batch(real_idx, flips[1])
        src, tgt = self.domains[src_idx].to(dev), target.to(dev)
        lr = self.lr_at(step)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        # 2. generator: fool the target head, cycle back to the source site, leave a target-site patch as it is
        self.D.requires_grad_(False)
        with autocast(dev, p.precision):
            fake = self.G(x, tgt)
            rec = self.G(fake, src)
            idt = self.G(y, tgt) if p.lambda_identity > 0 else None
            score = self.D(fake, tgt).float()
        loss_gan = lsgan_loss(score, True)
        loss_cycle = p.lambda_cycle * l1_loss(rec.float(), x)
        loss_idt = (
            p.lambda_cycle * p.lambda_identity * l1_loss(idt.float(), y) if idt is not None
            else torch.zeros((), device=dev)
        )
        loss_g = loss_gan + loss_cycle + loss_idt
        # the losses of the global batch (the mean of the processes' shares; the same values in one process)
        g_parts = distributed.mean(torch.stack([loss_gan, loss_cycle, loss_idt, loss_g]).detach().float())
        if not torch.isfinite(g_parts[3]):
            return {"loss": float(g_parts[3]), "images": b}
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        distributed.average_gradients(self.G.parameters())
        self.opt_g.step()
        # 3. discriminator: real target-site patches vs translated ones (from the history pool, which every process
        # keeps whole: it is fed the global batch's translations and hands each process its share back)
        self.D.requires_grad_(True)
        fake_pool, fake_dom = self._query_pool(distributed.concat(fake.detach()), distributed.concat(tgt), g)
        fake_pool, fake_dom = fake_pool[mine], fake_dom[mine]
        with autocast(dev, p.precision):
            real_score = self.D(y, tgt).float()
            fake_score = self.D(fake_pool.to(x.dtype), fake_dom).float()
        loss_d = 0.5 * (lsgan_loss(real_score, True) + lsgan_loss(fake_score, False))
        d_loss = float(distributed.mean(loss_d.detach().float().view(1))[0])
        if not math.isfinite(d_loss):
            return {"loss": d_loss, "images": b}
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        distributed.average_gradients(self.D.parameters())
        self.opt_d.step()
        loss_gan_v, loss_cycle_v, loss_idt_v, loss_g_v = (float(v) for v in g_parts)
        return {
            "loss": loss_g_v + d_loss,
            "images": b,
            "loss_g_gan": loss_gan_v,
            "loss_cycle": loss_cycle_v,
            "loss_identity": loss_idt_v,
            "loss_d": d_loss,
            "lr": lr,
        }

    def state(self) -> dict:
        """Everything a resumed run needs (networks, optimizers, image pool)."""
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "pool": self.pool.clone(),
            "pool_domains": self.pool_domains.clone(),
        }

    def load_state(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.pool, self.pool_domains = state["pool"].clone(), state["pool_domains"].clone()


def _flip(x: Any, flips: Any) -> Any:
    """Horizontally flip the images of a batch where ``flips`` is True."""
    torch = _torch()
    return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)


# ---------------------------------------------------------------------------------------------------------------
# the method


@METHODS.register("cyclegan", "CycleGAN translation of real patches into sites that lack their class (fill plan)")
class CycleGAN(Method):
    """Translates real patches into the style of sites that lack their class (the fill plan's combinations)."""

    name = "cyclegan"
    Params = Params
    multi_process = True  # training and translation share out over the processes of ``accelerate launch``

    def __init__(self, params: Params | None = None):
        super().__init__(params if params is not None else Params())
        self.generator: Any = None
        self.vocabulary: list[str] = []  # training sites, then Unknown
        self.train_split: Split | None = None

    @classmethod
    def default_params(cls, preset: str) -> Params:
        """The preset's parameters (smoke: seconds; cpu: 32 px within 20 min on 2 cores; gpu; paper: reference)."""
        if preset not in PRESET_PARAMS:
            raise ValueError(f"unknown preset {preset!r} for cyclegan; choose from: {', '.join(PRESET_PARAMS)}")
        return PRESET_PARAMS[preset]

    @property
    def generative(self) -> bool:
        return True

    # -----------------------------------------------------------------------------------------------------------
    # fit: the model cache, training with checkpoints and resume

    def _prepare(self, train: Split) -> tuple[np.ndarray, np.ndarray]:
        """Keep the real training patches (the translation sources); their images and site indices."""
        real = train.subset(~train.metadata["is_synthetic"].astype(bool).to_numpy(), "train")  # a view, not read
        if len(real) == 0:
            raise ValueError("cyclegan needs real training patches; the training split has none")
        self.train_split = real
        sites = real.metadata["tissue_source_site"].astype(str)
        self.vocabulary = sorted(set(sites) - {UNKNOWN}) + [UNKNOWN]
        index = {s: i for i, s in enumerate(self.vocabulary)}
        return real.images, sites.map(index).to_numpy(dtype=np.int64)

    def model_dir(self, train: Split, ctx: Context) -> Path:
        """Where the model trained on ``train`` with these parameters lives (content-addressed)."""
        key = model_key(self.name, self.params.model_fields(), train.fingerprint(), MODEL_VERSION,
                        {"seed": ctx.model_seed})
        return Path(ctx.cache_dir) / "models" / self.name / key

    def fit(self, train: Split, ctx: Context) -> None:
        """Load the cached model for this training split and parameters, or train it (resuming a killed run)."""
        self.train(train, ctx)

    def train(self, train: Split, ctx: Context, stop_after: int | None = None) -> bool:
        """Train (or load) the model; ``stop_after`` interrupts after that many steps. True when it is complete."""
        images, domains = self._prepare(train)
        ckpts = Checkpoints(self.model_dir(train, ctx))
        report = ctx.report.setdefault(self.name, {})
        report.update(model_dir=str(ckpts.folder), n_sites=len(self.vocabulary) - 1)
        with ckpts.exclusive():  # one trainer per model; other processes wait, then load it
            return self._load_or_train(train, ctx, images, domains, ckpts, report, stop_after)

    def _load_or_train(self, train: Split, ctx: Context, images: np.ndarray, domains: np.ndarray,
                       ckpts: Checkpoints, report: dict, stop_after: int | None) -> bool:
        generator, _ = build_networks(self.params, len(self.vocabulary), ctx.model_seed)
        # 1. a finished model: load it (several processes: the main one decides for all)
        if distributed.broadcast(ckpts.is_done()):
            import json

            meta = json.loads((ckpts.folder / "done.json").read_text())
            if meta.get("vocabulary") != self.vocabulary:
                raise TrainingError(f"cached model {ckpts.folder} was trained on sites {meta.get('vocabulary')}, "
                                    f"not {self.vocabulary}; delete it to retrain")
            generator.load_state_dict(ckpts.load_final())
            self.generator = generator.to(ctx.device).eval()
            report.update(trained=False, train_seconds=meta.get("train_seconds"),
                          generator_params=meta.get("generator_params"))
            log.info("cyclegan: using the cached model %s", ckpts.folder)
            return True
        # 2. train, resuming from the newest checkpoint if a previous run was interrupted
        p = self.params
        trainer = Trainer(p, images, domains, len(self.vocabulary), ctx.device, ctx.model_seed)
        started = time.time()
        reached = train_loop(
            checkpoints=ckpts,
            total_steps=p.steps,
            step_fn=trainer.step,
            get_state=trainer.state,
            set_state=trainer.load_state,
            checkpoint_every=p.checkpoint_every,
            desc=f"cyclegan {train.image_size}px",
            progress=ctx.progress,
            log_metrics=ctx.log_metrics,
            log_every=p.log_every,
            stop_after=stop_after,
        )
        seconds = time.time() - started
        if reached < p.steps:
            ckpts.save(reached, trainer.state())
            log.info("cyclegan: stopped at step %d of %d (checkpoint kept)", reached, p.steps)
            return False
        # 3. the final weights (generator only) and what they were trained on
        n_params = sum(t.numel() for t in trainer.G.parameters())
        ckpts.save_final(trainer.G.state_dict(), {"vocabulary": self.vocabulary, "steps": p.steps,
                                                  "train_seconds": round(seconds, 1), "generator_params": n_params,
                                                  "params": asdict(p)})
        self.generator = trainer.G.eval()
        report.update(trained=True, train_seconds=round(seconds, 1), generator_params=n_params)
        ctx.log_metrics({"cyclegan/train_seconds": seconds}, p.steps)
        return True

    # -----------------------------------------------------------------------------------------------------------
    # synthesis

    def _sources(self, conditions: pd.DataFrame, seed: int) -> tuple[np.ndarray, dict[str, int]]:
        """For each row, a real training patch of its class from another site (deterministic in ``seed``)."""
        meta = self.train_split.metadata
        classes = meta["cancer_type"].astype(str).to_numpy()
        sites = meta["tissue_source_site"].astype(str).to_numpy()
        rng = np.random.default_rng([seed, 0xC1C1E])
        out = np.zeros(len(conditions), dtype=np.int64)
        same_site = 0
        wanted = zip(conditions["cancer_type"].astype(str), conditions["tissue_source_site"].astype(str), strict=True)
        for i, (c, t) in enumerate(wanted):
            pool = np.flatnonzero((classes == c) & (sites != t))
            if len(pool) == 0:
                pool = np.flatnonzero(classes == c)
                same_site += 1
                if len(pool) == 0:
                    known = sorted(set(classes))
                    raise ValueError(f"cyclegan: no training patch of class {c!r} to translate; classes: {known}")
            out[i] = pool[rng.integers(len(pool))]
        return out, {"same_site_sources": same_site}

    def translate(self, images: np.ndarray | ImageSource, sites: list[str] | np.ndarray, ctx: Context,
                  shard: bool = False) -> np.ndarray:
        """uint8 images translated into the style of ``sites`` (unknown sites: the pooled 'Unknown' style);
        ``shard``: called by every process of a multi-process run, each translates its share of the batches and the
        main process gets them all (distributed.fill_batches)."""
        torch = _torch()
        if self.generator is None:
            raise RuntimeError("cyclegan: fit() must run before translating")
        index = {s: i for i, s in enumerate(self.vocabulary)}
        domains = torch.tensor([index.get(str(s), index[UNKNOWN]) for s in sites], dtype=torch.long)
        out = np.empty(images.shape, dtype=np.uint8)
        bs = self.params.sample_batch_size

        def make(start: int, stop: int) -> np.ndarray:
            x = to_tensor(np.asarray(images[start:stop]), ctx.device)
            with autocast(ctx.device, self.params.precision):
                y = self.generator(x, domains[start:stop].to(ctx.device))
            if not torch.isfinite(y).all():
                raise TrainingError(f"cyclegan: the generator produced non-finite pixels (batch at {start}); "
                                    "the cached model is unusable, delete it to retrain")
            return to_uint8(y)

        with torch.no_grad():
            distributed.fill_batches(out, bs, make, shard)
        return out

    def synthesize(self, conditions: pd.DataFrame, ctx: Context) -> np.ndarray:
        """Real patches of each row's class from other training sites, translated into the row's site."""
        images, _ = self._synthesize(conditions, ctx, "synthesize")
        return images

    def _synthesize(self, conditions: pd.DataFrame, ctx: Context, purpose: str,
                    shard: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Images and source rows; counts (unknown target sites, same-site sources) add up under ``purpose``."""
        if self.train_split is None:
            raise RuntimeError("cyclegan: fit() must run before synthesize()")
        src, counts = self._sources(conditions, ctx.seed)
        targets = conditions["tissue_source_site"].astype(str).to_numpy()
        counts["unknown_target_sites"] = int(sum(t not in self.vocabulary[:-1] for t in targets))
        counts["n"] = len(conditions)
        tally = ctx.report.setdefault(self.name, {}).setdefault(purpose, {})
        for key, value in counts.items():
            tally[key] = tally.get(key, 0) + value
        if len(conditions) == 0:
            size = self.train_split.image_size
            return np.zeros((0, size, size, 3), dtype=np.uint8), src
        # the sources stay a view of the training split (a mapped cohort is read a batch at a time)
        images = self.translate(self.train_split.subset(src).images, targets, ctx, shard=shard)
        return images, src

    def augment(self, train: Split, ctx: Context) -> Split:
        """Real training patches plus the plan's translations (``is_synthetic=True``, target metadata)."""
        p = self.params
        plan = generation_plan(train.metadata, ctx.task.classes, p.attributes, p.plan, p.ratio, ctx.seed)
        conditions = expand_plan(plan, train.metadata, self.name, ctx.seed)
        images, src = self._synthesize(conditions, ctx, "augment", shard=True)
        if len(conditions) == 0:
            return train
        self._report_colour_shift(images, src, conditions, ctx)
        if distributed.is_main():
            self._sample_grid(ctx)
        return concat([train, Split(images, conditions, "synthetic")], "train")

    def _report_colour_shift(self, images: np.ndarray, src: np.ndarray, conditions: pd.DataFrame,
                             ctx: Context) -> None:
        """How far translations moved towards their target sites' mean colour (CIELAB delta-E)."""
        from methods.stain_norm import mean_lab

        real = self.train_split
        real_lab = mean_lab(real.images)  # in batches
        centres = pd.DataFrame(real_lab).groupby(real.metadata["tissue_source_site"].astype(str).to_numpy()).mean()
        targets = conditions["tissue_source_site"].astype(str)
        known = targets.isin(centres.index).to_numpy()
        if not known.any():
            return
        centre = centres.loc[targets[known]].to_numpy()
        before = np.linalg.norm(real_lab[src[known]] - centre, axis=1)
        after = np.linalg.norm(mean_lab(images[known]) - centre, axis=1)
        shift = {
            "distance_to_target_before": round(float(before.mean()), 3),
            "distance_to_target_after": round(float(after.mean()), 3),
            "share_moved_closer": round(float((after < before).mean()), 4),
        }
        ctx.report.setdefault(self.name, {})["colour_shift"] = shift
        ctx.log_metrics({f"cyclegan/{k}": v for k, v in shift.items()}, None)
        log.info("cyclegan: mean delta-E to the target site's colour %.2f -> %.2f", before.mean(), after.mean())

    def _sample_grid(self, ctx: Context, n_targets: int = 6, n_sources: int = 6) -> Path | None:
        """A labelled PNG: the first row shows a real patch of each target site; below, each source patch (left
        column, labelled with its site and class) translated into every target site."""
        from benchmark.core.images import grid_png, mosaic

        real = self.train_split
        sites = real.metadata["tissue_source_site"].astype(str)
        classes = real.metadata["cancer_type"].astype(str)
        counts = sites.value_counts()
        targets = sorted(counts.index[:n_targets], key=lambda s: (-counts[s], s))
        if not targets:
            return None
        # sources: the first patch of the largest sites, alternating classes where possible
        src_idx: list[int] = []
        for label in sorted(real.metadata["label"].unique()):
            rows = np.flatnonzero(real.metadata["label"].to_numpy() == label)
            seen: set[str] = set()
            for i in rows:
                if sites.iloc[i] not in seen and len(seen) < math.ceil(n_sources / 2):
                    seen.add(sites.iloc[i])
                    src_idx.append(int(i))
        src_idx = src_idx[:n_sources]
        imgs = real.images  # the few rows shown are read where they are used
        cells = {(0, 1 + c): imgs[[int(np.flatnonzero((sites == t).to_numpy())[0])]] for c, t in enumerate(targets)}
        labels = ["real patch of the target site"]
        for r, i in enumerate(src_idx, start=1):
            translated = self.translate(np.repeat(imgs[i : i + 1], len(targets), axis=0), targets, ctx)
            cells[(r, 0)] = imgs[i : i + 1]
            for c in range(len(targets)):
                cells[(r, 1 + c)] = translated[c : c + 1]
            labels.append(f"{classes.iloc[i]} from {sites.iloc[i]}")
        canvas = mosaic(cells, len(labels), 1 + len(targets), per_cell=1, tile=64)
        png = grid_png(canvas, labels, ["source patch", *targets],
                       "cyclegan: source patches (left) translated into each target site", col_title="target site")
        path = Path(ctx.run_dir) / "figures" / "cyclegan_samples.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        ctx.log_artifact(path)
        return path
