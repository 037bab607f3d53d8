"""MeDiBench: augmentation strategies against shortcut learning in computational pathology.

The package by concern (each imports only those below it; tests/test_layers.py checks):
``cli`` (``__main__``) > ``studies`` > ``orchestration`` > ``report`` > ``plugins`` > ``methods``, ``tasks`` >
``training``, ``evaluation`` > ``protocols`` (the plug-in API) > ``core``.

The flat modules of 0.1 (``benchmark.stats``, ``benchmark.runner``, ...) moved into these packages; importing one
by its old name still works and warns (DeprecationWarning) with the new name; the old names go in 0.3.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

#: old flat module -> where it lives now
MOVED: dict[str, str] = {
    **{m: f"benchmark.core.{m}" for m in ("config", "registry", "data", "cache", "provenance", "interrupts", "threads",
                                          "generation", "tracking", "_compat")},
    **{m: f"benchmark.evaluation.{m}" for m in ("encoders", "metrics", "stats", "fid", "endpoints",
                                                "counterfactual")},
    "distributed": "benchmark.training.distributed",
    **{m: f"benchmark.orchestration.{m}" for m in ("runner", "sweep", "launchers", "tune", "freeze", "ui")},
    **{m: f"benchmark.studies.{m}" for m in ("compare", "quality", "perf", "guidance")},
    "reporting": "benchmark.report",
}


def _moved(old: str) -> object:
    new = MOVED[old]
    warnings.warn(f"benchmark.{old} moved to {new}: import it from there (the old name goes in MeDiBench 0.3)",
                  DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import benchmark.stats`` (an old name) gives the module under its new name, with a DeprecationWarning."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.partition(".")
        if prefix == "benchmark" and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return _moved(spec.name.partition(".")[2])

    def exec_module(self, module) -> None:  # the module is the new one, already executed
        pass


def __getattr__(name: str) -> object:  # ``from benchmark import stats``
    if name in MOVED:
        return _moved(name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
