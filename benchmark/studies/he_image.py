"""Real H&E pixels for the benchmark's own measurements and tests: the 1000 x 1000 tumour image shipped inside the
tiatoolbox wheel (Macenko's reference target).

Only the wheel file is fetched from the package registry (``pip download --no-deps``, ~4 MB), never the package and
its dependencies; the PNG is extracted once into a data folder (the tests use ``tests/.data``; ``perf`` uses
``$MEDIBENCH_DATA``, else ``~/.cache/medibench``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

TIATOOLBOX_WHEEL = "tiatoolbox==2.1.3"
MEMBER = "tiatoolbox/data/target_image.png"
FILE_NAME = "he_target_image.png"


def default_dir() -> Path:
    """Where ``perf`` keeps the image: ``$MEDIBENCH_DATA`` or ``~/.cache/medibench``."""
    return Path(os.environ.get("MEDIBENCH_DATA") or "~/.cache/medibench").expanduser()


def fetch(data_dir: Path | None = None) -> Path:
    """Extract the H&E image into ``data_dir`` (downloading the wheel if needed) and return its path; RuntimeError
    saying what to do when the registry cannot be reached."""
    data_dir = Path(data_dir) if data_dir is not None else default_dir()
    path = data_dir / FILE_NAME
    if path.exists():
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(data_dir.glob("tiatoolbox-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(data_dir), TIATOOLBOX_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(data_dir.glob("tiatoolbox-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise RuntimeError(f"could not fetch the real H&E image ({' '.join(cmd[2:])}: {last}); put the "
                               f"{TIATOOLBOX_WHEEL} wheel or the PNG {MEMBER} as {FILE_NAME} into {data_dir}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        data = zf.read(MEMBER)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def load(data_dir: Path | None = None) -> np.ndarray:
    """The image as a uint8 H x W x 3 array."""
    from PIL import Image

    with Image.open(fetch(data_dir)) as im:
        return np.asarray(im.convert("RGB"))
