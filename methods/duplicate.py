"""The negative control: as many added patches as MeDi's plan, drawn again from the real training patches.

No new information: the probe sees the same patients, a few of their patches twice. A benchmark that reports a
difference between ``duplicate`` and ``none`` is reading the size of the training set, or noise, not augmentation.
"""

from __future__ import annotations

import numpy as np

from benchmark.core.data import Split, concat
from benchmark.core.registry import METHODS
from benchmark.protocols import Context, Method
from methods.oracle import ControlParams, control_plan, medi_plan_params


@METHODS.register("duplicate", "negative control: as many patches as medi adds, resampled from the real training "
                               "patches")
class Duplicate(Method):
    name = "duplicate"
    Params = ControlParams

    @classmethod
    def default_params(cls, preset: str) -> ControlParams:
        return medi_plan_params(preset)

    def augment(self, train: Split, ctx: Context) -> Split:
        n = int(control_plan(self.params, train, ctx)["n"].sum())
        ctx.report["n_synthetic"] = n
        if n == 0:
            return train
        rng = np.random.default_rng([int(ctx.seed), 0xD0B1E])
        real = np.flatnonzero(~train.metadata["is_synthetic"].astype(bool).to_numpy())
        extra = train.subset(rng.choice(real, n, replace=True), "duplicates")
        meta = extra.metadata.copy()
        meta["is_synthetic"] = True  # counted as added patches; their pixels and patients are real ones
        meta["source"] = self.name
        return concat([train, Split(extra.images, meta, "duplicates")], "train")
