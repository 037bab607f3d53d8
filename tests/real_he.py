"""Real H&E pixels for tests (:mod:`benchmark.studies.he_image`), kept in ``tests/.data/`` (git-ignored)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.studies import he_image

DATA_DIR = Path(__file__).parent / ".data"
IMAGE_PATH = DATA_DIR / he_image.FILE_NAME


def fetch() -> Path:
    """Extract the H&E image (downloading the wheel if needed) and return its path."""
    return he_image.fetch(DATA_DIR)


def load() -> np.ndarray:
    """The image as a uint8 H x W x 3 array."""
    return he_image.load(DATA_DIR)


if __name__ == "__main__":
    print(fetch())
