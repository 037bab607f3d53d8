"""Training of the generative models: the resumable loop with its checkpoints (``loop``) and the multi-process
helpers under ``accelerate launch`` (``distributed``). Depends on ``benchmark.core`` only.

``benchmark.training`` was one module in 0.1: its names (``train_loop``, ``Checkpoints``, ...) still resolve here
with a DeprecationWarning; import them from ``benchmark.training.loop``."""

import importlib
import warnings


def __getattr__(name: str) -> object:
    loop = importlib.import_module("benchmark.training.loop")
    if name.startswith("__") or not hasattr(loop, name):
        raise AttributeError(f"module 'benchmark.training' has no attribute {name!r}")
    warnings.warn(f"benchmark.training.{name} moved to benchmark.training.loop.{name}", DeprecationWarning,
                  stacklevel=2)
    return getattr(loop, name)
