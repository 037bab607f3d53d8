"""Fixtures shared by the method tests."""

from __future__ import annotations

import pytest
import torch

from benchmark.config import PRESETS
from benchmark.registry import TASKS, load_plugins


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast, and far faster when other processes share the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smoke_nsclc():
    """(task, splits) of nsclc on the smoke preset's embedded data."""
    load_plugins()
    preset = PRESETS["smoke"]
    task = TASKS.get("nsclc")(preset.data, preset.split, None)
    return task, task.splits(0)
