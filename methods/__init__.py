"""Augmentation methods, one file each; importing this package registers them."""

from methods import (
    cyclegan,  # noqa: F401
    diffusion,  # noqa: F401  (medi, cls)
    none,  # noqa: F401
    stain_norm,  # noqa: F401
)
