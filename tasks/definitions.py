"""The benchmark's tasks: nsclc (LUAD vs LUSC), uterine (UCEC vs UCS) and heldout (pan-cancer, held-out site x race).

Every task reads its patches from the embedded generator (default), from a TCGA-UT copy (``data.root`` and
``data.metadata`` set) or from a CSV manifest of any cohort (``data.manifest``), and splits them the same way
(tasks/splits.py). A task of your own is a TOML file (tasks/task_file.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict

import numpy as np
import pandas as pd

from benchmark.core.cache import cached_array
from benchmark.core.data import METADATA_COLUMNS, Split
from benchmark.core.registry import TASKS
from benchmark.protocols import Task
from tasks import splits as splitting

log = logging.getLogger(__name__)

#: patch indices of true patches rendered for generation rows start here: far above any cohort's own, so no pixel
#: repeats a real patch
TRUE_PATCH_OFFSET = 1 << 40


class CancerTypeTask(Task):
    """Classify the cancer type of a patch; the group of a patch is its class x site x race."""

    def load(self) -> Split:
        """Every patch of the task's classes, images in memory, metadata with METADATA_COLUMNS (and a manifest's other
        columns)."""
        if self.data.source == "tcga-ut":
            return self._load_tcga_ut()
        if self.data.source == "manifest":
            return self._load_manifest()
        return self._load_embedded()

    def origin(self) -> str:
        """How messages about this task's data name it."""
        return f"task {self.name!r}"

    def manifest_columns(self) -> dict[str, tuple[str, ...]]:
        """The manifest columns the task needs, by where they were asked for (named in the error if one is absent)."""
        return {"split.heldout_keys": tuple(self.split.heldout_keys)}

    def _cache_path(self, kind: str, payload: dict):
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.cache_dir / "data" / f"{kind}-{self.name}-{digest}.npy"

    def cohort_spec(self):
        """The embedded generator's CohortSpec for this task and data config."""
        from tasks import embedded

        d = self.data
        return embedded.CohortSpec(
            cancer_types=tuple(self.classes),
            n_sites=d.sites_per_class * len(self.classes),
            n_patients=d.patients_per_class * len(self.classes),
            patches_per_patient=d.patches_per_patient,
            shortcut_strength=d.shortcut_strength,
            mixed_site_fraction=d.mixed_site_fraction,
            site_size_exponent=d.site_size_exponent,
            ambiguous_fraction=d.ambiguous_fraction,
            seed=d.generator_seed,
        )

    @property
    def has_ground_truth(self) -> bool:
        return self.data.source == "embedded"

    def true_patches(self, conditions, seed: int, salt: int):
        """Ground truth for generation rows (``cancer_type``, ``tissue_source_site``): new patients' tissue rendered
        by the embedded generator in the site's style, with the cohort's share of patches without tumour morphology
        (race has no visual effect in the generator). ``seed`` and ``salt`` pick the draw: two calls with different
        salts are different tissue, the same pair the same pixels. On a fixed cohort (TCGA-UT, a manifest) there is
        no generator: a ConfigError says so."""
        from benchmark.core.config import ConfigError
        from tasks import embedded

        if self.data.source != "embedded":
            raise ConfigError(f"{self.origin()} reads a fixed cohort ({self.data.source}): there is no generator to "
                              "render true patches of combinations its patients do not have")
        spec = self.cohort_spec()
        rng = np.random.default_rng([spec.seed, int(seed), int(salt), 0x0AC1E])
        first = TRUE_PATCH_OFFSET + (int(seed) % (1 << 12) << 28) + ((int(salt) % (1 << 6)) << 22)
        rows = pd.DataFrame({
            "patch_index": first + np.arange(len(conditions), dtype=np.int64),
            "tissue_source_site": conditions["tissue_source_site"].astype(str).to_numpy(),
            "cancer_type": conditions["cancer_type"].astype(str).to_numpy(),
            "ambiguous": rng.random(len(conditions)) < spec.ambiguous_fraction,
        })
        return embedded.render(rows, self.data.image_size, spec.seed)

    def _load_embedded(self) -> Split:
        from tasks import embedded

        d = self.data
        spec = self.cohort_spec()
        cohort = embedded.make_cohort(spec)
        size = d.image_size
        version = getattr(embedded, "VERSION", 0)
        path = self._cache_path("embedded", {"spec": asdict(spec), "size": size, "version": version})
        images = cached_array(
            path, lambda: embedded.render(cohort, size, d.generator_seed), (len(cohort), size, size, 3), np.uint8
        )
        meta = cohort[list(METADATA_COLUMNS)].reset_index(drop=True)
        return Split(images, meta, "all", {"data_source": "embedded", "cohort": asdict(spec)})

    def _load_tcga_ut(self) -> Split:
        from tasks import manifest, tcga_ut

        d = self.data
        index, report = tcga_ut.load_index(d.root, d.metadata, cancer_types=list(self.classes))
        return manifest.load_split(index, report, self.classes, **self._decoding("tcga-ut"), source=tcga_ut.SOURCE,
                                   where=d.root)

    def _load_manifest(self) -> Split:
        from tasks import manifest

        d = self.data
        index, report = manifest.load_index(d.manifest, self.classes, on_error=d.on_error, who=self.origin())
        for what, columns in self.manifest_columns().items():
            manifest.require_columns(report.columns, columns, what, d.manifest)
        return manifest.load_split(index, report, self.classes, **self._decoding("manifest"),
                                   source=manifest.SOURCE, where=d.manifest)

    def _decoding(self, folder: str) -> dict:
        d = self.data
        cache_dir = self.cache_dir / folder if self.cache_dir is not None else None
        return dict(image_size=d.image_size, on_error=d.on_error, max_patches_per_slide=d.max_patches_per_slide,
                    in_memory=d.in_memory, cache_dir=cache_dir, progress=self.progress)

    def splits(self, seed: int) -> dict[str, Split]:
        full = self.load()
        meta = full.metadata.copy()
        meta["label"] = meta["cancer_type"].map({c: i for i, c in enumerate(self.classes)}).astype("int64")
        meta["group"] = self.groups(meta)
        full = Split(full.images, meta, "all", full.info)
        assignment = splitting.assign_splits(meta, self.split, seed)
        info = dict(full.info, splits=splitting.describe(meta, assignment, self.split))
        out = {}
        for name in ("train", "val", "test_seen", "test_unseen"):
            part = full.subset((assignment == name).to_numpy(), name)
            out[name] = Split(part.images, part.metadata, name, info)
        return out


@TASKS.register("nsclc", "non-small-cell lung cancer: LUAD vs LUSC, held-out site x race combinations")
class NSCLC(CancerTypeTask):
    name = "nsclc"
    description = "LUAD vs LUSC"
    classes = ("LUAD", "LUSC")


@TASKS.register("uterine", "uterine cancer: UCEC (endometrioid) vs UCS (carcinosarcoma), held-out site x race")
class Uterine(CancerTypeTask):
    name = "uterine"
    description = "UCEC vs UCS"
    classes = ("UCEC", "UCS")


@TASKS.register("heldout", "pan-cancer, 8 cancer types, 30% of site x race combinations held out (the FID task)")
class Heldout(CancerTypeTask):
    name = "heldout"
    description = "8-way cancer type, held-out site x race combinations"
    classes = ("BRCA", "COAD", "KIRC", "LUAD", "LUSC", "PRAD", "UCEC", "UCS")

