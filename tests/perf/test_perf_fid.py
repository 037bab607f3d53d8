"""FID feature throughput on this CPU: images per second through each feature space (in extra_info), on demand.

Run with ``python -m pytest tests/perf/test_perf_fid.py``. The inception space uses a random-weight file with
torch-fidelity's layout (the speed does not depend on the weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.evaluation import fid
from benchmark.evaluation.encoders import FilterBankEncoder
from tests.benchmark.test_fid import he_crops, random_inception_file  # noqa: F401  (fixture)

N_IMAGES = 64


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return he_crops(N_IMAGES, size=32, seed=0)


@pytest.fixture(scope="module")
def spaces(random_inception_file) -> dict[str, fid.FeatureModule]:  # noqa: F811
    return {"fbank": fid.encoder_features(FilterBankEncoder()), "inception": fid.inception_features(
        random_inception_file)}


@pytest.mark.parametrize("space", ["fbank", "inception"])
def test_feature_throughput(benchmark, spaces, images, space: str) -> None:
    module = spaces[space]
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return module(batch)

    feats = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert feats.shape == (N_IMAGES, module.num_features)
    benchmark.extra_info["images_per_second"] = round(N_IMAGES / benchmark.stats.stats.mean, 1)
    benchmark.extra_info["feature_dim"] = module.num_features


def test_bootstrap_cost(benchmark) -> None:
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(200, 2048)), rng.normal(size=(200, 2048))) for _ in range(2)]
    reps = benchmark.pedantic(fid.bootstrap_replicates, args=(pairs, 20, 0), rounds=2, warmup_rounds=0)
    assert reps.shape == (20, 2)
    benchmark.extra_info["seconds_per_replicate_per_class_2048d_n200"] = round(benchmark.stats.stats.mean / 40, 4)
