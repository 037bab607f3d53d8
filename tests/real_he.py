"""Real H&E pixels for tests: the 1000x1000 tumour image shipped inside the tiatoolbox wheel.

Only the wheel file is fetched from the package registry (``pip download --no-deps``, ~4 MB), never the package
and its heavy dependencies; the PNG is extracted once into ``tests/.data/`` (git-ignored).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

TIATOOLBOX_WHEEL = "tiatoolbox==2.1.3"
MEMBER = "tiatoolbox/data/target_image.png"
DATA_DIR = Path(__file__).parent / ".data"
IMAGE_PATH = DATA_DIR / "he_target_image.png"


def fetch() -> Path:
    """Extract the H&E image (downloading the wheel if needed) and return its path."""
    if IMAGE_PATH.exists():
        return IMAGE_PATH
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    wheels = sorted(DATA_DIR.glob("tiatoolbox-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(DATA_DIR), TIATOOLBOX_WHEEL],
            check=True,
        )
        wheels = sorted(DATA_DIR.glob("tiatoolbox-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as zf:
        data = zf.read(MEMBER)
    tmp = IMAGE_PATH.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(IMAGE_PATH)
    return IMAGE_PATH


def load() -> np.ndarray:
    """The image as a uint8 H x W x 3 array."""
    from PIL import Image

    with Image.open(fetch()) as im:
        return np.asarray(im.convert("RGB"))


if __name__ == "__main__":
    print(fetch())
