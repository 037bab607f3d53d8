"""The positive control: true patches of exactly the combinations MeDi's generation plan fills.

What a perfect generator would add. On the embedded data the generator renders them (ground truth: the same
world, the same site styles, new patients' tissue), in the plan MeDi makes for the same training split and
sampling seed, so the oracle differs from ``medi`` only in where the pixels come from. Its gain over ``none`` is
the ceiling a generator is read against (the leaderboard shows each method's gain as a fraction of it), and a
benchmark that cannot detect it cannot detect anything. It also synthesizes for the FID evaluation: the FID of true
patches is the floor of the FID scale at the sample size used.

A fixed cohort (TCGA-UT, a manifest) has no generator: the method is refused there with a message saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.core.config import ConfigError
from benchmark.core.data import Split, concat
from benchmark.core.generation import PLAN_MODES, expand_plan, generation_plan
from benchmark.core.registry import METHODS
from benchmark.protocols import Context, Method

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ControlParams:
    """The generation plan a control method follows: MeDi's, for the preset (see :func:`medi_plan_params`)."""

    attributes: tuple[str, ...] = ("tissue_source_site", "race")  # the combinations the plan fills
    plan: str = "fill"  # fill | balance, as method.plan of medi
    synthetic_ratio: float = 1.0  # added patches per real training patch, as medi's


def medi_plan_params(preset: str) -> ControlParams:
    """The plan settings of ``medi`` on ``preset``, so a control adds exactly the rows MeDi would synthesize."""
    from methods.diffusion import MeDi

    p = MeDi.default_params(preset)
    return ControlParams(tuple(p.attributes), p.plan, p.synthetic_ratio)


def control_plan(params: ControlParams, train: Split, ctx: Context) -> pd.DataFrame:
    """MeDi's generation plan for ``train`` (same classes, attributes, mode, ratio and sampling seed)."""
    if params.plan not in PLAN_MODES:
        raise ConfigError(f"method.plan={params.plan!r} is invalid: expected one of {', '.join(PLAN_MODES)}")
    if params.synthetic_ratio < 0:
        raise ConfigError(f"method.synthetic_ratio={params.synthetic_ratio!r} is invalid: expected >= 0")
    return generation_plan(train.metadata, list(ctx.task.classes), list(params.attributes), params.plan,
                           params.synthetic_ratio, ctx.seed)


@METHODS.register("oracle", "positive control: true patches (the embedded generator) of exactly the combinations "
                            "medi fills")
class Oracle(Method):
    name = "oracle"
    Params = ControlParams

    @classmethod
    def default_params(cls, preset: str) -> ControlParams:
        return medi_plan_params(preset)

    @property
    def generative(self) -> bool:
        return True

    def fit(self, train: Split, ctx: Context) -> None:
        source = getattr(getattr(ctx.task, "data", None), "source", "?")
        if not getattr(ctx.task, "has_ground_truth", False):
            raise ConfigError(f"method 'oracle' needs the embedded generator to render true patches of the missing "
                              f"combinations; task {ctx.task.name!r} reads a fixed cohort ({source}), which has no "
                              "patients of those combinations outside its evaluation splits")

    def augment(self, train: Split, ctx: Context) -> Split:
        plan = control_plan(self.params, train, ctx)
        rows = expand_plan(plan, train.metadata, self.name, ctx.seed)
        ctx.report["n_synthetic"] = len(rows)
        ctx.report["plan"] = plan.to_dict(orient="records")[:200]
        if len(rows) == 0:
            log.warning("oracle: empty generation plan (no missing combinations); training set unchanged")
            return train
        return concat([train, Split(self.synthesize(rows, ctx), rows, "synthetic")], "train")

    def synthesize(self, conditions: pd.DataFrame, ctx: Context) -> np.ndarray:
        """True patches of the rows' (cancer type, site) from the task's generator (``Task.true_patches``)."""
        self._calls = getattr(self, "_calls", 0) + 1  # the augmentation's patches and the FID's are new tissue each
        return ctx.task.true_patches(conditions, ctx.seed, self._calls)
