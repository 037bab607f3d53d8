"""Augmentation methods, one file each; importing this package registers them."""

from methods import (
    cyclegan,  # noqa: F401
    diffusion,  # noqa: F401  (medi, cls)
    duplicate,  # noqa: F401  (negative control)
    none,  # noqa: F401
    oracle,  # noqa: F401  (positive control)
    stain_norm,  # noqa: F401
)
