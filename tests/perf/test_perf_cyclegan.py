"""CycleGAN training throughput at the cpu preset (32 px, 21 sites as in cpu nsclc): images/s in extra_info,
fp32 against bf16 autocast, and the training time it implies against the preset's 20-minute budget."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from methods.cyclegan import CycleGAN, Trainer

N_SITES = 21
STEPS_PER_ROUND = 5
BUDGET_MINUTES = 20.0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_throughput_cpu_preset(benchmark, precision: str, threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params = replace(CycleGAN.default_params("cpu"), precision=precision)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(640, 32, 32, 3), dtype=np.uint8)
        domains = rng.integers(0, N_SITES, size=640)
        trainer = Trainer(params, images, domains, N_SITES + 1, "cpu")
        counter = iter(range(10**9))
        trainer.step(next(counter))  # one-time oneDNN set-up

        def run() -> None:
            for _ in range(STEPS_PER_ROUND):
                trainer.step(next(counter))

        benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    finally:
        torch.set_num_threads(before)
    images_per_s = STEPS_PER_ROUND * params.batch_size / benchmark.stats.stats.mean
    minutes = params.steps * params.batch_size / images_per_s / 60
    benchmark.extra_info.update(
        images_per_second=round(images_per_s, 1), threads=threads, precision=precision,
        estimated_training_minutes=round(minutes, 1),
    )
    if precision == CycleGAN.default_params("cpu").precision and threads == 1:  # the default, on one core alone
        assert minutes < BUDGET_MINUTES, f"cpu preset would train for {minutes:.1f} min ({images_per_s:.0f} img/s)"
