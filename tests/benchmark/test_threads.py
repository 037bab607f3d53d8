"""Thread budgets for processes that run side by side (``benchmark.core.threads``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmark.core import threads


@pytest.mark.parametrize(("cores", "processes", "expected"), [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 3, 5), (1, 4, 1)])
def test_share_splits_the_usable_cores(monkeypatch, cores, processes, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    assert threads.share(processes) == expected


def test_usable_cores_follows_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    assert threads.usable_cores() == len(os.sched_getaffinity(0))
    code = "from benchmark import threads; print(threads.usable_cores())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("taskset is not available")
    assert out.stdout.strip() == "1"


def test_limit_caps_torch_and_every_blas_pool():
    code = """
import json, numpy, sklearn.linear_model, torch
from threadpoolctl import threadpool_info
from benchmark.core import threads
threads.limit(1)
print(json.dumps({"torch": torch.get_num_threads(), "pools": [p["num_threads"] for p in threadpool_info()]}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["torch"] == 1 and seen["pools"] and all(n == 1 for n in seen["pools"])
