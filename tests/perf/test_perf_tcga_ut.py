"""Decode throughput of TCGA-UT patches: real 256x256 H&E JPEGs resized to 64x64 (patches/s in extra_info)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.tcga_ut import PathImages, decode_all
from tests.real_he import load as load_he

N_PATCHES = 240


@pytest.fixture(scope="module")
def jpeg_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    he = load_he()
    folder: Path = tmp_path_factory.mktemp("tcga_ut_perf") / "Lung_adenocarcinoma" / "TCGA-05-4244-01Z-00-DX1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_PATCHES):
        y, x = rng.integers(0, he.shape[0] - 256, size=2)
        tile = he[y : y + 256, x : x + 256]
        tile = tile[::-1] if i % 2 else tile
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(np.ascontiguousarray(tile)).save(path, quality=90)  # TCGA-UT-like JPEG, ~20 kB
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("workers", [1, 2])
def test_decode_throughput_256_to_64(benchmark, jpeg_paths: list[str], workers: int) -> None:
    images = PathImages(jpeg_paths, 64)

    def run() -> np.ndarray:
        return decode_all(images, None, workers=workers, progress=False)[0]

    pixels = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert pixels.shape == (N_PATCHES, 64, 64, 3)
    benchmark.extra_info["patches_per_second"] = round(N_PATCHES / benchmark.stats.stats.mean, 1)
    benchmark.extra_info["workers"] = workers
