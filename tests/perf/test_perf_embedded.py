"""Throughput of the embedded generator (tests/perf is not collected by default; run ``pytest tests/perf``)."""

from __future__ import annotations

import pytest

from tasks import embedded as E


@pytest.mark.parametrize("size", [32, 64])
def test_render_throughput(benchmark, size):
    """Patches per second of render at 32 and 64 px on one core (torch/BLAS threads pinned to 1)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    cohort = E.make_cohort(
        E.CohortSpec(cancer_types=tuple(E.CANCER_TYPES), n_sites=48, n_patients=480, patches_per_patient=1)
    ).iloc[:192]
    imgs = benchmark.pedantic(E.render, args=(cohort, size, 0), rounds=3, iterations=1, warmup_rounds=1)
    assert imgs.shape == (len(cohort), size, size, 3)
    benchmark.extra_info["patches_per_s"] = len(cohort) / benchmark.stats.stats.mean
