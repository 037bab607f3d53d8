"""No augmentation: the training set as it is. The reference every other method is compared with."""

from __future__ import annotations

from benchmark.core.registry import METHODS
from benchmark.protocols import Method


@METHODS.register("none", "no augmentation: the real training patches only (the baseline)")
class NoAugmentation(Method):
    name = "none"
