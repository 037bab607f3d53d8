"""Diffusion speed against plain references in the same run (``pytest tests/perf/test_perf_diffusion.py -s``).

1. Training images/s of our training step (accelerate bf16 autocast where it is faster, foreach AdamW, EMA) on the
   cpu preset's UNet against a plain fp32 diffusers loop on the same UNet and batch. Target: >= 1.5x.
2. Sampling: DDIM-50 (the paper's sampler) against DPM-Solver++ at fewer steps, images/s and FID in the default
   encoder's feature space against real training patches of the same class and site. Target: a setting with at
   most 20 steps whose FID is no worse than DDIM-50's. Needs a trained cpu-preset MeDi model: it is taken from the
   results cache (``results/cache``, as `run --method medi --task nsclc` leaves it) or trained (~15 min).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.config import PRESETS
from benchmark.protocols import Context
from methods.diffusion import MeDi, make_accelerator, resolve_mixed_precision
from tasks.definitions import NSCLC

RESULTS = Path("results")


def _unet(params):
    from benchmark._compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import UNet2DModel

    n = len(params.block_out_channels)
    return UNet2DModel(
        sample_size=32, block_out_channels=params.block_out_channels, layers_per_block=params.layers_per_block,
        down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n, add_attention=params.attention,
        norm_num_groups=params.norm_num_groups, class_embed_type="identity",
    )


def _throughput(step, n_steps: int, batch: int) -> float:
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    return n_steps * batch / (time.perf_counter() - start)


def test_training_throughput_against_plain_fp32_loop():
    torch.set_num_threads(2)
    params = MeDi.default_params("cpu")
    b, d_t = params.batch_size, params.block_out_channels[0] * 4
    x, noise = torch.randn(b, 3, 32, 32), torch.randn(b, 3, 32, 32)
    t, z = torch.randint(0, 1000, (b,)), torch.randn(b, d_t)

    # reference: the plain fp32 loop of the diffusers training examples
    ref = _unet(params)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=params.lr)

    def ref_step():
        loss = torch.nn.functional.mse_loss(ref(x, t, class_labels=z).sample, noise)
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()

    # ours: what methods/diffusion.train_diffusion does per step
    from diffusers.training_utils import EMAModel

    precision = resolve_mixed_precision(params.mixed_precision, "cpu")
    acc = make_accelerator(precision, "cpu")
    ours = _unet(params)
    opt = torch.optim.AdamW(ours.parameters(), lr=params.lr, foreach=True)
    ours, opt = acc.prepare(ours, opt)
    ema = EMAModel(list(ours.parameters()), decay=params.ema_decay, foreach=True)

    def our_step():
        with acc.autocast():
            pred = ours(x, t, class_labels=z).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        acc.backward(loss)
        acc.clip_grad_norm_(ours.parameters(), params.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(ours.parameters())

    ref_rate = _throughput(ref_step, 10, b)
    our_rate = _throughput(our_step, 10, b)
    print(f"\ntraining img/s: plain fp32 {ref_rate:.1f}, ours ({precision}) {our_rate:.1f}, "
          f"ratio {our_rate / ref_rate:.2f}x")
    assert our_rate > 0 and ref_rate > 0


@pytest.mark.parametrize("sampler, steps", [("ddim", 50), ("dpmpp", 10), ("dpmpp", 15), ("dpmpp", 20), ("ddim", 20)])
def test_sampler_speed_and_fid(sampler, steps, tmp_path):
    from benchmark.encoders import FilterBankEncoder
    from benchmark.fid import frechet_distance

    torch.set_num_threads(2)
    preset = PRESETS["cpu"]
    task = NSCLC(preset.data, preset.split, RESULTS / "cache")
    train = task.splits(preset.split.seed)["train"]
    params = replace(MeDi.default_params("cpu"), sampler=sampler, sampling_steps=steps)
    ctx = Context(device="cpu", preset="cpu", seed=0, task=task, run_dir=tmp_path, cache_dir=RESULTS / "cache")
    method = MeDi(params)
    method.fit(train, ctx)
    # synthesize the real training rows' conditions; compare in the default encoder's feature space
    real = train.metadata[~train.metadata["is_synthetic"]].reset_index(drop=True)
    rows = real.sample(n=min(512, len(real)), random_state=0)
    start = time.perf_counter()
    images = method.synthesize(rows, ctx)
    rate = len(rows) / (time.perf_counter() - start)
    enc = FilterBankEncoder()
    fid = frechet_distance(enc.embed(train.images[rows.index.to_numpy()]), enc.embed(images))
    print(f"\n{sampler}-{steps}: {rate:.1f} img/s, FID(fbank) {fid:.2f}, pixel std {images.std():.1f}")
    assert np.isfinite(fid)
