"""The shortcut is real and measured: the reason the benchmark exists.

The ``none`` method's linear probe is trained on the embedded data, then evaluated on a crossed counterfactual set:
fresh patches of BOTH classes at every single-type training site (the generator can render any site x class).
If the probe reads the site instead of the tissue, it is right on the site's primary class and wrong on the other
one. The primary class is the cohort design's (``embedded.site_primaries``): with shortcut strength 0.9 a site
sends its primary class 95% of the time and the gap is large; with strength 0 the designation is drawn but has
no effect on the data (a randomized control), and the gap vanishes within noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.core.data import METADATA_COLUMNS, Split
from benchmark.core.registry import METHODS, TASKS
from benchmark.orchestration.runner import Probe, build_config
from tasks import embedded


def crossed_gap(strength: float, generator_seed: int) -> tuple[float, float]:
    """(gap, its standard error): mean over single-type sites of acc(primary class) - acc(other class)."""
    cfg = build_config(
        "none", "nsclc", "smoke", 0, "cpu",
        [f"data.shortcut_strength={strength}", f"data.generator_seed={generator_seed}", "data.sites_per_class=12",
         "data.patients_per_class=240", "data.patches_per_patient=4", "data.site_size_exponent=0",
         "data.mixed_site_fraction=0", "data.ambiguous_fraction=0.4"],
    )
    task = TASKS.get("nsclc")(cfg.data, cfg.split)
    splits = task.splits(cfg.seed_for("split"))
    method = METHODS.get("none")()
    train = method.augment(splits["train"], None)
    probe = Probe(cfg, None).fit(train)
    # 1. the design's primary class of each single-type site seen in training
    spec = task.cohort_spec()
    primaries = embedded.site_primaries(spec)
    sites = sorted(s for s in set(train.metadata["tissue_source_site"]) if primaries[s] is not None)
    # 2. crossed counterfactual patches: every site x both classes, fresh patch indices
    per_cell = 24
    rows = []
    for s_i, site in enumerate(sites):
        for label, cancer_type in enumerate(task.classes):
            for k in range(per_cell):
                rows.append({"patch_index": 10_000_000 + (s_i * 2 + label) * per_cell + k, "tissue_source_site": site,
                             "cancer_type": cancer_type, "label": label})
    cells = pd.DataFrame(rows)
    rng = np.random.default_rng(generator_seed)
    cells["ambiguous"] = rng.random(len(cells)) < cfg.data.ambiguous_fraction
    images = embedded.render(cells, cfg.data.image_size, cfg.data.generator_seed)
    full = cells.assign(project_id="TCGA-" + cells["cancer_type"], race="Unknown", gender="Unknown",
                        age_at_index=np.nan, patient_id="CF", slide_id="CF", is_synthetic=False, source="embedded")
    pred = probe.predict_proba(Split(images, full[list(METADATA_COLUMNS)], "crossed"), 2).argmax(1)
    cells["correct"] = pred == cells["label"].to_numpy()
    # 3. per site: accuracy on the majority class minus accuracy on the minority class
    gaps = []
    for site in sites:
        majority = task.classes.index(primaries[site])
        acc = cells[cells.tissue_source_site == site].groupby("label")["correct"].mean()
        gaps.append(acc[majority] - acc[1 - majority])
    gaps = np.asarray(gaps)
    return float(gaps.mean()), float(gaps.std(ddof=1) / np.sqrt(len(gaps)))


@pytest.mark.slow
def test_probe_learns_the_site_shortcut_and_not_without_it():
    """Averaged over three generated cohorts (each deterministic), so no single cohort's luck decides."""
    strong = [crossed_gap(0.9, seed) for seed in (0, 1, 2)]
    control = [crossed_gap(0.0, seed) for seed in (0, 1, 2)]
    gap_strong = float(np.mean([g for g, _ in strong]))
    gap_none = float(np.mean([g for g, _ in control]))
    se_none = float(np.sqrt(np.sum([se**2 for _, se in control])) / 3)
    # with the shortcut: a clear gap in every cohort
    assert gap_strong > 0.2, strong
    assert all(g > 0.1 for g, _ in strong), strong
    # without it: the gap vanishes within noise
    assert abs(gap_none) < max(0.05, 2.5 * se_none), control
    assert gap_strong - gap_none > 0.15
