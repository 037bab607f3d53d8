"""HED colour augmentation for MeDiBench, installed as a plug-in (entry point ``medibench.methods``)."""

from medibench_hed_jitter.method import HEDJitter, Params, hed_jitter, hed_to_rgb, random_coefficients, rgb_to_hed

__all__ = ["HEDJitter", "Params", "hed_jitter", "hed_to_rgb", "random_coefficients", "rgb_to_hed"]
