"""The one place that works around an environment problem: torchvision's CUDA-only wheel next to a CPU torch.

The only torchvision on the package registry is a CUDA build. With the CPU torch its C extension cannot load, and
``import torchvision`` then fails with ``RuntimeError: operator torchvision::nms does not exist`` while registering
fake kernels for ops the extension would have defined. That breaks ``import timm``, ``import torch_fidelity`` and
torchmetrics' FID. The fix: when (and only when) the extension cannot load, define the two op schemas the
pure-Python part of torchvision expects, before torchvision is first imported. Transforms, timm, torch-fidelity and
torchmetrics then work; torchvision's C++ ops (nms, roi_align, ...) stay unavailable, and nothing here uses them.

Call :func:`ensure_torchvision` before importing timm, torch_fidelity or torchvision.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_LIBRARY = None  # keeps the schema definitions alive for the process; None until the shim is applied
_CHECKED = False


def _extension_loads(package_dir: Path) -> bool:
    libs = sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd"))
    if not libs:
        return False
    try:
        torch.ops.load_library(str(libs[0]))
    except OSError:
        return False
    return True


def torchvision_shim_needed() -> bool:
    """True when torchvision is installed, not yet imported, and its C extension cannot load with this torch."""
    if "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    try:
        torch.ops.torchvision.nms  # noqa: B018 - defined already (extension loaded, or shim applied)
        return False
    except (AttributeError, RuntimeError):
        pass
    return not _extension_loads(Path(spec.origin).parent)


def ensure_torchvision() -> bool:
    """Make ``import torchvision`` work on a CPU-only torch; returns True if the shim was applied now."""
    global _LIBRARY, _CHECKED
    if _CHECKED:
        return False
    _CHECKED = True
    if not torchvision_shim_needed():
        return False
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    return True
