"""Diffusion speed against plain references in the same run (``pytest tests/perf/test_perf_diffusion.py -s``).

The measurements are ``benchmark.studies.perf``'s stages (the same code ``python -m benchmark perf`` runs):

1. Training images/s of our training step (as methods/diffusion.train_diffusion: resolved precision, fused AdamW,
   clipping, EMA) on the cpu preset's UNet against a plain fp32 diffusers loop on the same UNet and batch.
   Target: >= 1.5x (not reachable on a CPU without AMX; see the README).
2. Sampling: DPM-Solver++ 20 steps against DDIM-50 (the paper's), images/s, and with the trained cpu-preset nsclc
   MeDi model in ``results/cache`` (as `run --method medi --task nsclc` leaves it) each sampler's FID in the default
   encoder's space. Target: a setting with at most 20 steps whose FID is no worse than DDIM-50's.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from benchmark.studies import perf

RESULTS = Path("results")


def test_training_throughput_against_plain_fp32_loop():
    torch.set_num_threads(2)
    row = perf.stage_diffusion_train("cpu")
    print(f"\ntraining img/s: {row.reference_label} {row.reference:.1f}, {row.ours_label} {row.ours:.1f}, "
          f"ratio {row.ratio:.2f}x")
    assert row.ours > 0 and row.reference > 0


def test_sampler_speed_and_fid():
    torch.set_num_threads(2)
    row = perf.stage_sampling("cpu", RESULTS)
    print(f"\nsampling img/s: {row.reference_label} {row.reference:.1f}, {row.ours_label} {row.ours:.1f}; {row.note}")
    assert row.ours > 0 and row.reference > 0
    for name, result in row.extra.items():
        if isinstance(result, dict):
            assert math.isfinite(result["fid_fbank"]), name
