"""The two plug-in protocols, Task and Method, and the Context the runner hands to a method.

Methods never train the downstream classifier or compute metrics: the runner does that the same way for every
method, so the comparison is fair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from benchmark.core.config import DataConfig, SplitConfig
from benchmark.core.data import Split

SPLITS: tuple[str, ...] = ("train", "val", "test_seen", "test_unseen")
EVAL_SPLITS: tuple[str, ...] = ("val", "test_seen", "test_unseen")


class Task:
    """A classification problem over patches, with the splits and the group definition it is judged on."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ()  # cancer type codes, in label order
    metadata_columns: ClassVar[tuple[str, ...]] = ("tissue_source_site", "race", "gender", "age_at_index")
    group_columns: ClassVar[tuple[str, ...]] = ("cancer_type", "tissue_source_site", "race")
    # a task defined by a file (tasks/task_file.py): the file, the SHA-256 of its content (both enter the run config
    # and so the run hash) and the config values it sets, typed, applied before any --set
    # (e.g. {"split.heldout_fraction": 0.4})
    source_file: ClassVar[str] = ""
    source_sha256: ClassVar[str] = ""
    config_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, data: DataConfig, split: SplitConfig, cache_dir: Path | None = None, progress: bool = False):
        self.data = data
        self.split = split
        self.cache_dir = cache_dir
        self.progress = progress

    def splits(self, seed: int) -> dict[str, Split]:
        """train, val, test_seen, test_unseen: disjoint by patient; test_unseen holds the held-out keys."""
        raise NotImplementedError

    def groups(self, metadata: pd.DataFrame) -> pd.Series:
        """The group of each patch for worst-group accuracy: the values of ``group_columns`` joined by '|'."""
        return metadata[list(self.group_columns)].astype(str).agg("|".join, axis=1)

    #: whether :meth:`true_patches` can render ground truth (the embedded generator can; a fixed cohort cannot)
    @property
    def has_ground_truth(self) -> bool:
        return False

    def true_patches(self, conditions: pd.DataFrame, seed: int, salt: int) -> np.ndarray:
        """uint8 N x H x W x 3 true patches of the generation rows' class and site (the oracle's patches, the ground
        truth of counterfactual quality). Only a task with a generator has them."""
        raise NotImplementedError(f"task {self.name!r} has no generator to render true patches")


@dataclass
class Context:
    """What a method may use besides the data: device, seeds, where to cache, how to log."""

    device: str
    preset: str
    seed: int  # the sampling seed: generation plan, sampler noise, FID rows (RunConfig.seed_for("sampling"))
    task: Task
    run_dir: Path
    cache_dir: Path
    progress: bool = True
    log_metrics: Callable[[dict[str, float], int | None], None] = lambda metrics, step=None: None
    log_artifact: Callable[[Path], None] = lambda path: None
    report: dict[str, Any] = field(default_factory=dict)  # counts the method wants in the run record
    model_seed: int = 0  # a trained model's initial weights and batches (RunConfig.seed_for("model"))


class Method:
    """An augmentation strategy: fit on the training split, return it augmented, optionally transform eval splits."""

    name: ClassVar[str] = ""
    Params: ClassVar[type | None] = None  # a frozen dataclass of the method's hyperparameters, or None
    # fit and augment can run in several processes at once (``accelerate launch``): every process calls them, the
    # method shares the work out (benchmark.training.distributed). Otherwise the main process runs the method alone.
    multi_process: ClassVar[bool] = False

    def __init__(self, params: Any = None):
        self.params = params

    @classmethod
    def default_params(cls, preset: str) -> Any:
        """The method's hyperparameters for a preset (None when it has none)."""
        return cls.Params() if cls.Params is not None else None

    @property
    def generative(self) -> bool:
        """True when augment() adds synthetic images (the runner then reports FID)."""
        return False

    def fit(self, train: Split, ctx: Context) -> None:
        """Learn whatever the method needs from the training split (cache expensive models under ctx.cache_dir)."""

    def augment(self, train: Split, ctx: Context) -> Split:
        """Real training patches plus synthetic ones (``is_synthetic=True``)."""
        return train

    def transform_eval(self, split: Split, ctx: Context) -> Split:
        """Applied to val and test splits before evaluation; identity by default."""
        return split

    def synthesize(self, conditions: pd.DataFrame, ctx: Context) -> np.ndarray:
        """Generative methods: uint8 N x H x W x 3 images for the metadata rows ``conditions`` (after fit).

        Used by augment() with the generation plan's rows, and by the runner's FID evaluation with the metadata
        of real held-out patches (so synthetic and real images of the same class, site and race are compared).
        """
        raise NotImplementedError(f"method {self.name!r} does not synthesize images")


# The plug-in API in one import: what a method or task package needs besides the protocols above.
from benchmark.core.config import ConfigError, tunable  # noqa: E402
from benchmark.core.data import UNKNOWN, concat  # noqa: E402
from benchmark.core.registry import ENCODERS, METHODS, TASKS  # noqa: E402

__all__ = ["ENCODERS", "EVAL_SPLITS", "METHODS", "SPLITS", "TASKS", "UNKNOWN", "ConfigError", "Context", "Method",
           "Split", "Task", "concat", "tunable"]
