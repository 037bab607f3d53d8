"""Throughput of the default encoder against a reference in the same run (``pytest tests/perf``).

Target (issue: foundation): the default encoder embeds at least 500 patches/s at 64 x 64 on 2 cores. The
reference is a timm resnet18 (random weights, same input), a typical small CNN feature extractor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.evaluation.encoders import FilterBankEncoder

N = 512


@pytest.fixture(scope="module")
def patches():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, 64, 64, 3), dtype=np.uint8)


def test_fbank_throughput(benchmark, patches):
    torch.set_num_threads(2)
    enc = FilterBankEncoder()
    enc.embed(patches[:16])
    out = benchmark.pedantic(enc.embed, args=(patches,), rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == (N, enc.dim) and np.isfinite(out).all()
    benchmark.extra_info["patches_per_s"] = N / benchmark.stats.stats.mean


def test_reference_resnet18_throughput(benchmark, patches):
    from benchmark.core._compat import ensure_torchvision

    ensure_torchvision()
    import timm

    torch.set_num_threads(2)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float().div(255)

    def run():
        with torch.inference_mode():
            return model(x)

    out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape[0] == N
    benchmark.extra_info["patches_per_s"] = N / benchmark.stats.stats.mean
