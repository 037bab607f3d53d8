"""Augmentation methods, one file each; importing this package registers them."""

from methods import none  # noqa: F401
from methods import stain_norm  # noqa: F401
