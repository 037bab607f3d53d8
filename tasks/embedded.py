"""Embedded TCGA-like data: a procedural, deterministic H&E patch generator with the TCGA metadata schema.

The benchmark runs with zero downloads on this source. It reproduces the structure that makes TCGA hard:

* **Cohort** (``make_cohort``): patients grouped into tissue source sites (TSS) with long-tailed (Zipf-like)
  sizes. Each non-mixed site has a primary cancer type; with ``shortcut_strength`` s a patient there has the
  primary type with probability ``s + (1 - s) / K`` (K types), else one of the others uniformly; mixed sites send
  all types uniformly. Counts within a site are stratified (they follow these probabilities up to rounding).
  Race is drawn per patient from a site-specific skewed distribution (mostly white; some sites with many black
  or asian patients; some sites that rarely report race), gender and age per patient from cancer-type priors
  (uterine types female, prostate male). Identifiers follow TCGA barcodes (``TCGA-05-4244``,
  ``TCGA-05-4244-01Z-00-DX1``).
* **Class signal = morphology only** (``render``): each patch is a continuous scene (in micrometres) of nuclei,
  cytoplasm, cell borders, stroma fibres, lumens, keratin, necrosis and vessels, drawn per cancer type with
  within-class variability (architecture, cellularity, scale, orientation, some stroma-only, necrotic or
  partly empty patches). The scene gives haematoxylin and eosin concentration maps which are rasterized at the
  requested resolution (the same scene at every size; detail finer than a pixel is averaged, not aliased).
* **Site signal = the hospital's process** (``site_style``): several factors at once, not colour alone: stain
  vectors (hue) and concentration scaling of H and E, section thickness (global optical density scale) and its
  unevenness, white balance of the illumination (I0 per channel) and vignetting, scanner pixel-size calibration
  (apparent magnification), scanner blur or sharpening, sensor noise, JPEG quality and chroma subsampling, and
  fixation retraction clefts around epithelium. Colour is applied by Beer-Lambert optics:
  ``RGB = I0 * exp(-thickness * (cH * OD_H + cE * OD_E))`` per channel.
* **Race, gender and age have NO visual effect**: pixels depend only on ``(seed, patch_index, site, cancer
  type)``. Any correlation between demographics and appearance runs through the site (as in TCGA), which is
  exactly the shortcut the benchmark probes.

Resolution notes: the scene is resolution independent; blur is specified in micrometres, so it fades at
low resolution, and sensor noise and JPEG artefacts are scaled as if the patch had been downsampled from a
128 px scan (the physical pipeline of TCGA patch datasets).
"""

from __future__ import annotations

import functools
import io
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.data import METADATA_COLUMNS

CANCER_TYPES: dict[str, str] = {
    "LUAD": "lung adenocarcinoma: acinar glands with open lumens lined by vesicular nuclei; lepidic alveolar walls",
    "LUSC": "lung squamous cell carcinoma: solid nests of large polygonal pink cells, cell borders, keratin pearls",
    "UCEC": "uterine endometrioid carcinoma: crowded back-to-back glands with stratified columnar nuclei",
    "UCS": "uterine carcinosarcoma: biphasic, glands in dense fascicles of atypical spindle cells",
    "BRCA": "breast invasive ductal carcinoma: cords and nests of pleomorphic cells in dense desmoplastic stroma",
    "COAD": "colon adenocarcinoma: large glands of tall columnar cells with cigar nuclei and dirty luminal necrosis",
    "KIRC": "clear cell renal carcinoma: nests of clear cells with crisp membranes and a delicate capillary network",
    "PRAD": "prostate adenocarcinoma: small crowded round glands, prominent nucleoli, smooth-muscle stroma",
}
PROJECT_IDS: dict[str, str] = {code: f"TCGA-{code}" for code in CANCER_TYPES}
#: Bumped whenever the cohort or the pixels produced for a given spec and seed change (keys downstream caches).
VERSION: int = 2
SIZES: tuple[int, ...] = (32, 64, 128, 256)
RACES: tuple[str, ...] = ("white", "black or african american", "asian", "Unknown")

_FIELD_UM = 128.0  # nominal field of view of one patch in micrometres (a 128 px patch at 1 um / px)
_REFERENCE_SIZE = 128  # the resolution at which noise and JPEG are specified
_UTERINE = ("UCEC", "UCS")
# female share and age (mean, sd) per cancer type, roughly as in TCGA clinical tables
_FEMALE_SHARE = {
    "LUAD": 0.54,
    "LUSC": 0.26,
    "UCEC": 1.0,
    "UCS": 1.0,
    "BRCA": 0.99,
    "COAD": 0.47,
    "KIRC": 0.35,
    "PRAD": 0.0,
}
_AGE = {
    "LUAD": (65.5, 10.0),
    "LUSC": (67.5, 8.5),
    "UCEC": (64.0, 11.0),
    "UCS": (70.0, 9.0),
    "BRCA": (58.5, 13.0),
    "COAD": (66.5, 12.5),
    "KIRC": (60.5, 12.0),
    "PRAD": (61.0, 7.0),
}
# site race profiles (white, black, asian, Unknown) and how often a site has each profile
_RACE_PROFILES = np.array(
    [[0.82, 0.07, 0.03, 0.08], [0.42, 0.48, 0.02, 0.08], [0.30, 0.03, 0.60, 0.07], [0.22, 0.03, 0.02, 0.73]]
)
_RACE_PROFILE_P = np.array([0.70, 0.12, 0.06, 0.12])
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SITE_CODES: tuple[str, ...] = tuple(a + b for a in _ALNUM for b in _ALNUM if a + b != "00")
_MIN_PATIENTS_PER_SITE = 2
# Macenko reference stain vectors (optical density per RGB channel, unit norm) and the hue range sites span
_H_BLUE, _H_PURPLE = np.array([0.70, 0.66, 0.27]), np.array([0.47, 0.77, 0.44])
_E_MAGENTA, _E_ORANGE = np.array([0.30, 0.88, 0.37]), np.array([0.08, 0.72, 0.69])


# ----------------------------------------------------------------------------------------------------------------
# cohort
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortSpec:
    """What ``make_cohort`` draws: cancer types, sites, patients and how strongly site predicts type."""

    cancer_types: tuple[str, ...] = ("LUAD", "LUSC")
    n_sites: int = 24
    n_patients: int = 240
    patches_per_patient: int = 8
    shortcut_strength: float = 0.9  # 0: site independent of cancer type; 1: single-type sites (except mixed)
    mixed_site_fraction: float = 0.2  # share of sites that send all cancer types, whatever the strength
    site_size_exponent: float = 1.1  # Zipf exponent of patients per site (0: equal sizes)
    ambiguous_fraction: float = 0.25  # share of patches without tumour morphology (stroma, inflammation, vessels)
    seed: int = 0

    def __post_init__(self) -> None:
        types = self.cancer_types
        if not isinstance(types, tuple) or not all(isinstance(t, str) for t in types):
            raise ValueError(f"cancer_types must be a tuple of str, got {types!r}")
        unknown = [t for t in types if t not in CANCER_TYPES]
        if unknown:
            raise ValueError(f"cancer_types has unknown codes {unknown}; valid: {sorted(CANCER_TYPES)}")
        if len(types) < 2 or len(set(types)) != len(types):
            raise ValueError(f"cancer_types needs at least 2 distinct codes, got {types!r}")
        for name in ("n_sites", "n_patients", "patches_per_patient", "seed"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.patches_per_patient < 1:
            raise ValueError(f"patches_per_patient must be >= 1, got {self.patches_per_patient}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name, lo, hi in (
            ("shortcut_strength", 0.0, 1.0),
            ("mixed_site_fraction", 0.0, 0.9),
            ("site_size_exponent", 0.0, 4.0),
            ("ambiguous_fraction", 0.0, 0.9),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
        if not 2 <= self.n_sites <= len(_SITE_CODES):
            raise ValueError(f"n_sites must be in [2, {len(_SITE_CODES)}], got {self.n_sites}")
        n_single = self.n_sites - _n_mixed(self)
        if n_single < 2 * len(types):
            raise ValueError(
                f"n_sites={self.n_sites} leaves {n_single} single-type sites with mixed_site_fraction="
                f"{self.mixed_site_fraction}; need >= 2 per cancer type ({2 * len(types)})"
            )
        if self.n_patients < _MIN_PATIENTS_PER_SITE * self.n_sites:
            raise ValueError(
                f"n_patients={self.n_patients} is too small for n_sites={self.n_sites}: need >= "
                f"{_MIN_PATIENTS_PER_SITE} per site ({_MIN_PATIENTS_PER_SITE * self.n_sites})"
            )


def _n_mixed(spec: CohortSpec) -> int:
    return int(round(spec.mixed_site_fraction * spec.n_sites))


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def _allocate(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """Integer counts summing to ``total``, each >= ``minimum``, proportional to weights (largest remainder)."""
    rest = total - minimum * len(weights)
    share = rest * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: rest - counts.sum()]] += 1
    return counts + minimum


def _assign_primaries(sizes: np.ndarray, single: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Primary type per site (-1 for mixed sites): >= 2 sites per type, patient totals balanced greedily."""
    primary = np.full(len(sizes), -1, dtype=np.int64)
    order = [i for i in np.argsort(-sizes, kind="stable") if single[i]]
    n_sites_of, patients_of = np.zeros(k, np.int64), np.zeros(k, np.float64)
    tie = rng.random(k) * 1e-3
    for rank, site in enumerate(order):
        remaining = len(order) - rank
        deficit = np.maximum(0, 2 - n_sites_of)
        candidates = np.flatnonzero(deficit > 0) if remaining <= deficit.sum() else np.arange(k)
        t = candidates[np.argmin(patients_of[candidates] + tie[candidates])]
        primary[site] = t
        n_sites_of[t] += 1
        patients_of[t] += sizes[site]
    return primary


def _site_types(n: int, primary: int, k: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Cancer type index of each of a site's n patients (stratified counts, shuffled)."""
    if primary < 0:
        n_primary, others = 0, np.arange(k)
    else:
        p = strength + (1.0 - strength) / k
        n_primary = max(1, min(n, int(math.floor(n * p + rng.random()))))
        others = np.array([t for t in range(k) if t != primary])
    rest = n - n_primary
    counts = np.full(len(others), rest // len(others))
    counts[rng.permutation(len(others))[: rest % len(others)]] += 1
    types = np.concatenate([np.full(n_primary, max(primary, 0)), np.repeat(others, counts)])
    return rng.permutation(types)


def _participant_codes(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct 4-character TCGA participant codes (mostly digits, some 'A' + 3 alphanumerics)."""
    codes: list[str] = []
    seen: set[str] = set()
    while len(codes) < n:
        if rng.random() < 0.7:
            code = f"{int(rng.integers(1000, 10000)):04d}"
        else:
            code = "A" + "".join(_ALNUM[int(i)] for i in rng.integers(0, 36, 3))
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


def _sites(spec: CohortSpec) -> tuple:
    """Steps 1-2 of make_cohort: (rng, codes, sizes, race probabilities, single-type mask, primary type index)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _crc("cohort")]))
    # 1. sites: distinct 2-character codes, long-tailed sizes in random order, race profile per site
    codes = np.sort(rng.choice(np.array(_SITE_CODES), spec.n_sites, replace=False))
    weights = rng.permutation(1.0 / np.arange(1, spec.n_sites + 1) ** spec.site_size_exponent)
    sizes = _allocate(spec.n_patients, weights, _MIN_PATIENTS_PER_SITE)
    profiles = rng.choice(len(_RACE_PROFILES), spec.n_sites, p=_RACE_PROFILE_P)
    race_p = np.array([rng.dirichlet(40.0 * _RACE_PROFILES[j] + 0.5) for j in profiles])
    # 2. mixed sites, then a primary type for every other site
    single = np.ones(spec.n_sites, dtype=bool)
    single[rng.choice(spec.n_sites, _n_mixed(spec), replace=False)] = False
    primary = _assign_primaries(sizes, single, len(spec.cancer_types), rng)
    return rng, codes, sizes, race_p, single, primary


def site_primaries(spec: CohortSpec) -> dict[str, str | None]:
    """The design's primary cancer type of every site (None for mixed sites), whatever the shortcut strength.

    With strength s a patient of a single-type site has the primary type with probability s + (1-s)/K; at s = 0
    the designation is drawn but has no effect, which makes it a randomized control for shortcut measurements.
    """
    _, codes, _, _, single, primary = _sites(spec)
    return {str(c): (spec.cancer_types[int(p)] if single[i] else None) for i, (c, p) in enumerate(zip(codes, primary,
                                                                                                       strict=True))}


def make_cohort(spec: CohortSpec) -> pd.DataFrame:
    """One row per patch: METADATA_COLUMNS plus ``patch_index`` (unique, stable; with the seed it fixes the pixels).

    Deterministic for ``spec``. Rows are ordered by site code, then patient, then patch.
    """
    rng, codes, sizes, race_p, single, primary = _sites(spec)
    types, k = spec.cancer_types, len(spec.cancer_types)
    # 3. patients: type, identifiers, demographics
    rows: dict[str, list] = {c: [] for c in ("type", "site", "pid", "race", "gender", "age", "n_slides")}
    for s, code in enumerate(codes):
        site_types = _site_types(int(sizes[s]), int(primary[s]), k, spec.shortcut_strength, rng)
        participants = _participant_codes(len(site_types), rng)
        for t, participant in zip(site_types, participants, strict=True):
            ct = types[int(t)]
            mean, sd = _AGE[ct]
            age = float(np.clip(round(rng.normal(mean, sd)), 20, 90)) if rng.random() > 0.01 else float("nan")
            rows["type"].append(int(t))
            rows["site"].append(code)
            rows["pid"].append(f"TCGA-{code}-{participant}")
            rows["race"].append(RACES[int(rng.choice(len(RACES), p=race_p[s]))])
            rows["gender"].append("female" if rng.random() < _FEMALE_SHARE[ct] else "male")
            rows["age"].append(age)
            rows["n_slides"].append(1 + int(rng.random() < 0.15))
    # 4. patches: patches_per_patient rows per patient, spread over the patient's slides
    m = spec.patches_per_patient
    rep = lambda values: np.repeat(np.asarray(values, dtype=object), m)  # noqa: E731
    label = np.repeat(np.asarray(rows["type"], dtype=np.int64), m)
    slide_no = (np.tile(np.arange(m), len(rows["pid"])) % np.repeat(rows["n_slides"], m)) + 1
    pids = rep(rows["pid"])
    frame = pd.DataFrame(
        {
            "label": label,
            "cancer_type": np.asarray(types, dtype=object)[label],
            "project_id": np.asarray([PROJECT_IDS[t] for t in types], dtype=object)[label],
            "tissue_source_site": rep(rows["site"]),
            "race": rep(rows["race"]),
            "gender": rep(rows["gender"]),
            "age_at_index": np.repeat(np.asarray(rows["age"], dtype=np.float64), m),
            "patient_id": pids,
            "slide_id": [f"{p}-01Z-00-DX{n}" for p, n in zip(pids, slide_no, strict=True)],
            "is_synthetic": np.zeros(len(label), dtype=bool),
            "source": "embedded",
        }
    )
    frame["patch_index"] = np.arange(len(frame), dtype=np.int64)
    # class-agnostic patches (drawn from their own stream, so the rest of the cohort does not change with it)
    amb_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _crc("ambiguous")]))
    frame["ambiguous"] = amb_rng.random(len(frame)) < spec.ambiguous_fraction
    return frame[[*METADATA_COLUMNS, "patch_index", "ambiguous"]]


# ----------------------------------------------------------------------------------------------------------------
# site styles
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteStyle:
    """Everything a tissue source site does to the pixels (never to the morphology)."""

    code: str
    stain_h: tuple[float, float, float]  # haematoxylin optical-density vector over RGB (unit norm): its hue
    stain_e: tuple[float, float, float]  # eosin optical-density vector over RGB (unit norm)
    h_intensity: float  # haematoxylin concentration scaling (staining time / dye batch)
    e_intensity: float  # eosin concentration scaling
    thickness: float  # section thickness: global optical-density scale
    thickness_variation: float  # amplitude of smooth, low-frequency unevenness of the section
    background: tuple[float, float, float]  # I0 per RGB channel (0-255): white balance of the scanner
    vignetting: float  # relative darkening across the field (illumination gradient)
    vignetting_angle: float  # direction of that gradient in radians
    scale: float  # scanner pixel-size calibration: the field of view is 128 um * scale (apparent magnification)
    blur_um: float  # scanner point-spread sigma in micrometres (0 = sharp)
    sharpen: float  # unsharp-mask amount applied by the scanner software (0 = none)
    noise: float  # sensor noise standard deviation in 8-bit units at 128 px
    jpeg_quality: int  # JPEG quality of the slide tiles
    jpeg_subsampling: int  # chroma subsampling: 0 = 4:4:4, 2 = 4:2:0
    retraction_um: float  # width of fixation retraction clefts around epithelium (0 = none)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@functools.lru_cache(maxsize=4096)
def site_style(site: str, seed: int) -> SiteStyle:
    """The deterministic style of tissue source site ``site`` (a 2-character code) in world ``seed``."""
    if not isinstance(site, str) or len(site) != 2:
        raise ValueError(f"site must be a 2-character TSS code, got {site!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _crc("site"), _crc(site)]))
    u = rng.uniform
    th, te = u(0, 1), u(0, 1)
    stain_h = _unit((1 - th) * _H_BLUE + th * _H_PURPLE + rng.normal(0, 0.03, 3))
    stain_e = _unit((1 - te) * _E_MAGENTA + te * _E_ORANGE + rng.normal(0, 0.03, 3))
    tint = rng.normal(0, 0.025, 3)
    background = tuple(float(v) for v in np.clip(255 * u(0.90, 0.99) * (1 + tint - tint.max()), 200, 255))
    blurry = rng.random() < 0.35
    blur = u(0.8, 1.4) if blurry else u(0.0, 0.6)
    sharpen = 0.0 if blurry or rng.random() < 0.6 else u(0.5, 1.5)
    return SiteStyle(
        code=site,
        stain_h=tuple(float(v) for v in stain_h),
        stain_e=tuple(float(v) for v in stain_e),
        h_intensity=float(np.exp(rng.normal(0, 0.18))),
        e_intensity=float(np.exp(rng.normal(0, 0.25))),
        thickness=float(u(0.8, 1.25)),
        thickness_variation=float(u(0.0, 0.22)),
        background=background,
        vignetting=float(u(0.0, 0.08)),
        vignetting_angle=float(u(0, 2 * np.pi)),
        scale=float(np.exp(u(np.log(0.85), np.log(1.2)))),
        blur_um=float(blur),
        sharpen=float(sharpen),
        noise=float(u(0.5, 5.0)),
        jpeg_quality=int(rng.integers(40, 96)),
        jpeg_subsampling=int(rng.choice([0, 2])),
        retraction_um=float(0.0 if rng.random() < 0.55 else u(1.0, 4.0)),
    )


# ----------------------------------------------------------------------------------------------------------------
# scenes: what is in a patch, in micrometres, independent of resolution
# ----------------------------------------------------------------------------------------------------------------

# region kinds
_GLAND, _NEST, _PEARL, _NECROSIS, _SPACE = 0, 1, 2, 3, 4
# blob columns: x, y, a, b, theta (semi-axes in um), h density, e density, vesicularity, chromatin, nucleolus
_BLOB_COLS = 10


@dataclass(frozen=True)
class _Nuc:
    """A nuclear phenotype: semi-axes (um), haematoxylin density, pleomorphism and chromatin pattern."""

    a: float
    b: float
    dens: float
    pleo: float = 0.15
    vesic: float = 0.0
    chrom: float = 0.25
    nucleolus: float = 0.0
    edens: float = -0.3


_LYMPHOCYTE = _Nuc(3.0, 2.8, 2.1, pleo=0.08, chrom=0.1)
_FIBROBLAST = _Nuc(6.5, 1.6, 1.5, pleo=0.2, chrom=0.15)
_ENDOTHELIUM = _Nuc(5.5, 1.5, 1.5, pleo=0.15, chrom=0.1)
_DEBRIS = _Nuc(1.2, 1.0, 2.0, pleo=0.4, chrom=0.0, edens=0.0)
_RBC = _Nuc(3.6, 3.4, 0.0, pleo=0.05, chrom=0.0, edens=1.25)


@dataclass
class _Scene:
    """One patch's content. Regions and blobs are in micrometres on the field [0, F] x [0, F]."""

    F: float
    stroma_e: float = 0.6
    stroma_h: float = 0.02
    fibre_period: float = 6.0
    fibre_amp: float = 0.5
    fibre_angle: float = 0.0
    fibre_warp: float = 6.0
    loose: float = 0.0  # 0 dense collagen ... 1 loose stroma with empty gaps
    epi_e: float = 0.45
    epi_h: float = 0.04
    lumen_e: float = 0.02
    lumen_h: float = 0.0
    necrosis_e: float = 0.8
    keratin_e: float = 1.3
    tissue: float = 1.0  # fraction of the field covered by tissue
    cell_size: float = 0.0  # spacing of cells inside nests (0: no cellular nests)
    membrane: float = 0.0  # eosin of cell borders
    membrane_um: float = 0.8
    cell_var: float = 0.15
    vessel_size: float = 0.0  # spacing of a capillary network over the whole field (0: none)
    gland_nuc: _Nuc = _Nuc(5.5, 4.5, 1.2)
    gland_orient: str = "radial"  # radial | random
    gland_layers: float = 0.5  # nuclear position spread across the epithelium (0 one row .. 1 stratified)
    gland_depth: float = 0.5  # mean nuclear position across the epithelium (0 luminal .. 1 basal)
    cell_nuc: _Nuc = _Nuc(6.0, 5.0, 1.5)
    cell_visible: float = 0.8
    cell_offset: float = 0.1
    stroma_nuc: _Nuc = _FIBROBLAST
    stroma_spacing: float = 22.0  # mean spacing of stromal nuclei (um)
    lymph_spacing: float = 40.0
    spindle_spacing: float = 0.0  # dense atypical spindle cells (sarcoma) when > 0
    spindle_nuc: _Nuc = _Nuc(8.0, 2.2, 1.9, pleo=0.3, chrom=0.3)
    spindle_swirl: float = 0.8
    debris_spacing: float = 3.5
    regions: list = field(default_factory=list)
    blobs: list = field(default_factory=list)
    # filled by _finish
    region_array: np.ndarray | None = None
    blob_array: np.ndarray | None = None
    lattices: dict = field(default_factory=dict)
    cell_jitter: np.ndarray | None = None
    cell_rand: np.ndarray | None = None
    vessel_jitter: np.ndarray | None = None

    def region(
        self,
        rng: np.random.Generator,
        kind: int,
        cx: float,
        cy: float,
        r: float,
        aspect: float = 1.0,
        wobble: float = 0.08,
        lumen: float = 0.0,
        theta: float | None = None,
    ) -> None:
        """Add an ellipse-like region of mean radius r with an irregular (wobbly) outline."""
        a, b = r / math.sqrt(aspect), r * math.sqrt(aspect)
        th = rng.uniform(0, math.pi) if theta is None else theta
        w = wobble * rng.uniform(0.3, 1.0, 3) / np.array([1.0, 1.6, 2.4])
        self.regions.append([cx, cy, a, b, th, *w, *rng.uniform(0, 2 * np.pi, 3), lumen, kind])


def _nuclei(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    nuc: _Nuc,
    theta: np.ndarray | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Blob rows for nuclei of phenotype ``nuc`` at (x, y) (random orientation unless ``theta`` is given)."""
    n = len(x)
    z = rng.standard_normal((3, n))
    out = np.empty((n, _BLOB_COLS))
    out[:, 0], out[:, 1] = x, y
    out[:, 2] = nuc.a * scale * np.exp(nuc.pleo * z[0])
    out[:, 3] = nuc.b * scale * np.exp(nuc.pleo * (0.6 * z[0] + 0.8 * z[1]))
    out[:, 4] = rng.uniform(0, np.pi, n) if theta is None else theta
    out[:, 5] = nuc.dens * np.exp(0.15 * z[2])
    out[:, 6:] = (nuc.edens, nuc.vesic, nuc.chrom, nuc.nucleolus)
    return out


def _grid_points(rng: np.random.Generator, F: float, spacing: float, margin: float = 4.0) -> tuple:
    """Jittered-grid points covering [-margin, F + margin]^2 with the given mean spacing."""
    n = int(math.ceil((F + 2 * margin) / spacing))
    g = (np.arange(n) + 0.5) * spacing - margin
    x = np.repeat(g[None, :], n, 0).ravel() + rng.uniform(-0.45, 0.45, n * n) * spacing
    y = np.repeat(g[:, None], n, 1).ravel() + rng.uniform(-0.45, 0.45, n * n) * spacing
    return x, y


def _pack(
    rng: np.random.Generator, F: float, n: int, r_lo: float, r_hi: float, gap: float, tries: int = 60
) -> list[tuple[float, float, float]]:
    """Up to n non-overlapping circles (x, y, r) in the field, separated by ``gap`` (negative: overlap)."""
    cand = rng.uniform(0, 1, (tries, 3))
    x, y, r = -0.1 * F + 1.2 * F * cand[:, 0], -0.1 * F + 1.2 * F * cand[:, 1], r_lo + (r_hi - r_lo) * cand[:, 2]
    conflict = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]) < r[:, None] + r[None, :] + gap
    free = np.ones(tries, dtype=bool)
    out: list[tuple[float, float, float]] = []
    for i in range(tries):  # greedy: a candidate is kept when it overlaps no earlier kept one
        if free[i]:
            out.append((float(x[i]), float(y[i]), float(r[i])))
            if len(out) == n:
                break
            free &= ~conflict[i]
    return out


def _region_q(R: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalized radius q (1 on the outline) and the local radius in um; dx, dy broadcast against R's rows."""
    shape = (-1,) + (1,) * (dx.ndim - 1)
    col = lambda j: R[:, j].reshape(shape)  # noqa: E731
    c, s = np.cos(col(4)), np.sin(col(4))
    un = (dx * c + dy * s) * (1 / col(2))
    vn = (dy * c - dx * s) * (1 / col(3))
    rho = np.sqrt(un * un + vn * vn)
    inv = 1 / np.maximum(rho, 1e-9)
    c1, s1 = un * inv, vn * inv  # cos and sin of the polar angle; harmonics by angle addition, no trigonometry
    c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1
    c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
    c5, s5 = c3 * c2 - s3 * s2, s3 * c2 + c3 * s2
    wob = 1.0
    for (ck, sk), j in (((c2, s2), 5), ((c3, s3), 6), ((c5, s5), 7)):
        wob = wob + col(j) * (ck * np.cos(col(j + 3)) - sk * np.sin(col(j + 3)))
    return rho / wob, np.sqrt(col(2) * col(3)) * wob


def _points_q(R: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """q of every point (columns) in every region (rows): shape (n_regions, n_points); inf far outside."""
    Q = np.full((len(R), len(x)), np.inf)
    if len(R) == 0 or len(x) == 0:
        return Q
    dx, dy = x[None, :] - R[:, 0:1], y[None, :] - R[:, 1:2]
    reach = np.maximum(R[:, 2], R[:, 3]) * (1 + R[:, 5:8].sum(1)) * 1.3 + 1.0
    ri, pi = np.nonzero(dx * dx + dy * dy < (reach * reach)[:, None])
    Q[ri, pi] = _region_q(R[ri], dx[ri, pi], dy[ri, pi])[0]
    return Q


def _gland_rows(sc: _Scene, G: np.ndarray, rng: np.random.Generator) -> tuple:
    """Candidate nuclei along every gland's epithelium: x, y and orientation (long axis radial when columnar)."""
    nuc = sc.gland_nuc
    lr = G[:, 11]
    r_mean = np.sqrt(G[:, 2] * G[:, 3])
    pitch = 2 * nuc.b + 1.2 if sc.gland_orient == "radial" else 2 * nuc.a + 1.5
    rows = 1 + np.floor(sc.gland_layers * (1 - lr) * r_mean / (2.2 * nuc.a)).astype(int)
    count = np.maximum(5, np.round(2 * np.pi * r_mean * (lr + (1 - lr) * 0.4) / pitch).astype(int)) * rows
    gi = np.repeat(np.arange(len(G)), count)
    k = np.arange(len(gi)) - np.repeat(np.cumsum(count) - count, count)
    phi = (k + rng.uniform(-0.25, 0.25, len(k))) * (2 * np.pi / count * rows)[gi] + rng.uniform(0, 6.3, len(G))[gi]
    depth = sc.gland_depth + (rng.random(len(k)) - 0.5) * (0.3 + 0.6 * sc.gland_layers)
    rho = lr[gi] + (1 - lr[gi]) * np.clip(depth, 0.12, 0.88)
    g = G[gi]
    wob = 1 + sum(g[:, j] * np.cos(m * phi + g[:, j + 3]) for j, m in ((5, 2), (6, 3), (7, 5)))
    u, v = g[:, 2] * rho * wob * np.cos(phi), g[:, 3] * rho * wob * np.sin(phi)
    c, s = np.cos(g[:, 4]), np.sin(g[:, 4])
    x, y = g[:, 0] + u * c - v * s, g[:, 1] + u * s + v * c
    theta = None
    if sc.gland_orient == "radial":
        theta = np.arctan2(y - g[:, 1], x - g[:, 0]) + rng.normal(0, 0.15, len(x))
    return x, y, theta


def _finish(sc: _Scene, rng: np.random.Generator) -> _Scene:
    """Derive every nucleus and texture lattice of the scene from its regions and parameters."""
    F = sc.F
    R = np.array(sc.regions, dtype=np.float64).reshape(-1, 13)
    sc.region_array = R
    kinds = R[:, 12]
    blobs = list(sc.blobs)
    # 1. candidate nuclei of every population (filtered against the regions in one evaluation below)
    cand: dict[str, tuple] = {}
    G = R[kinds == _GLAND]
    if len(G):
        cand["gland"] = _gland_rows(sc, G, rng)
    if sc.cell_size > 0:
        c = sc.cell_size
        n = int(F / c) + 4
        sc.cell_jitter = rng.uniform(0.15, 0.85, (n, n, 2))
        sc.cell_rand = rng.standard_normal(n * n)
        off = rng.uniform(-sc.cell_offset, sc.cell_offset, (2, n, n))
        cand["cell"] = (
            ((np.arange(n)[None, :] - 1 + sc.cell_jitter[..., 0] + off[0]) * c).ravel(),
            ((np.arange(n)[:, None] - 1 + sc.cell_jitter[..., 1] + off[1]) * c).ravel(),
            None,
        )
    if sc.stroma_spacing > 0:
        cand["stroma"] = (*_grid_points(rng, F, sc.stroma_spacing), None)
    if sc.spindle_spacing > 0:
        cand["spindle"] = (*_grid_points(rng, F, sc.spindle_spacing), None)
    if sc.lymph_spacing > 0:
        cand["lymph"] = (*_grid_points(rng, F, sc.lymph_spacing, margin=2.0), None)
    if (kinds == _NECROSIS).any():
        cand["debris"] = (*_grid_points(rng, F, sc.debris_spacing, margin=0.0), None)
    # 2. where each candidate lies: q per region, then "inside a kind" tests per population
    names = list(cand)
    X = np.concatenate([cand[k][0] for k in names]) if names else np.zeros(0)
    Y = np.concatenate([cand[k][1] for k in names]) if names else np.zeros(0)
    Q = _points_q(R, X, Y)
    bounds = np.cumsum([0] + [len(cand[k][0]) for k in names])
    cols = {k: slice(bounds[i], bounds[i + 1]) for i, k in enumerate(names)}

    kind_rows = {k: kinds == k for k in (_GLAND, _NEST, _PEARL, _NECROSIS, _SPACE)}

    def inside(name: str, ks: tuple[int, ...], limit: float | np.ndarray) -> np.ndarray:
        rows = np.logical_or.reduce([kind_rows[k] for k in ks])
        q = Q[rows, cols[name]]
        lim = limit[rows][:, None] if isinstance(limit, np.ndarray) else limit
        return (q < lim).any(axis=0) if len(q) else np.zeros(q.shape[1], dtype=bool)

    occupied = (_GLAND, _NEST, _PEARL, _NECROSIS, _SPACE)

    def add(name: str, keep: np.ndarray, nuc: _Nuc, theta: np.ndarray | None = None) -> tuple:
        x, y, th = cand[name]
        th = th if theta is None else theta
        blobs.append(_nuclei(rng, x[keep], y[keep], nuc, None if th is None else th[keep]))
        return x[keep], y[keep]

    # 3. gland nuclei: not in any lumen or space; nest cells: inside nests, not in pearls, spaces or necrosis
    if "gland" in cand:
        lumen_edge = np.where(kinds == _GLAND, R[:, 11], 1.0)
        keep = ~inside("gland", (_GLAND, _SPACE), lumen_edge) & (rng.random(len(cand["gland"][0])) < 0.93)
        add("gland", keep, sc.gland_nuc)
    if "cell" in cand:
        keep = inside("cell", (_NEST,), 0.97) & ~inside("cell", (_PEARL, _SPACE, _NECROSIS), 1.1)
        add("cell", keep & (rng.random(len(keep)) < sc.cell_visible), sc.cell_nuc)
    # 4. keratin pearls: flattened nuclei wrapped around the rim
    for pearl in R[kinds == _PEARL]:
        r = math.sqrt(pearl[2] * pearl[3])
        n = max(5, int(2 * np.pi * r / 9.0))
        phi = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 1)
        rr = r * rng.uniform(1.0, 1.25, n)
        blobs.append(
            _nuclei(
                rng,
                pearl[0] + rr * np.cos(phi),
                pearl[1] + rr * np.sin(phi),
                _Nuc(6.0, 2.0, 1.6, pleo=0.15),
                theta=phi + np.pi / 2,
            )
        )
    # 5. stroma: fibroblasts along the fibres, atypical spindle cells in swirling fascicles, lymphocytes
    if "stroma" in cand:
        keep = ~inside("stroma", occupied, 1.05) & (rng.random(len(cand["stroma"][0])) < 0.8)
        add("stroma", keep, sc.stroma_nuc, sc.fibre_angle + np.pi / 2 + rng.normal(0, 0.25, len(keep)))
    if "spindle" in cand:
        x, y, _ = cand["spindle"]
        swirl = _lattice(rng, F, 45.0)
        theta = sc.fibre_angle + np.pi / 2 + sc.spindle_swirl * _field_at(swirl, 45.0, x, y)
        free = ~inside("spindle", occupied, 1.05)
        bizarre = rng.random(len(x)) < 0.04
        add("spindle", free & ~bizarre, sc.spindle_nuc, theta)
        add("spindle", free & bizarre, _Nuc(9.0, 6.0, 2.2, pleo=0.3, chrom=0.4), theta)
    if "lymph" in cand:
        keep = ~inside("lymph", occupied, 1.0) | (rng.random(len(cand["lymph"][0])) < 0.03)
        add("lymph", keep, _LYMPHOCYTE)
    # 6. necrosis: karyorrhectic debris
    if "debris" in cand:
        add("debris", inside("debris", (_NECROSIS,), 0.95) & (rng.random(len(cand["debris"][0])) < 0.5), _DEBRIS)
    # 7. capillary network with red blood cells and flat endothelial nuclei
    if sc.vessel_size > 0:
        v = sc.vessel_size
        n = int(F / v) + 4
        sc.vessel_jitter = rng.uniform(0.1, 0.9, (n, n, 2))
        px = (np.arange(n)[None, :] - 1 + sc.vessel_jitter[..., 0]) * v
        py = (np.arange(n)[:, None] - 1 + sc.vessel_jitter[..., 1]) * v
        # midpoints between horizontal and vertical lattice neighbours lie on the Voronoi borders
        mx = np.concatenate([(px[:, 1:] + px[:, :-1]).ravel(), (px[1:, :] + px[:-1, :]).ravel()]) / 2
        my = np.concatenate([(py[:, 1:] + py[:, :-1]).ravel(), (py[1:, :] + py[:-1, :]).ravel()]) / 2
        ex = np.concatenate([(px[:, 1:] - px[:, :-1]).ravel(), (px[1:, :] - px[:-1, :]).ravel()])
        ey = np.concatenate([(py[:, 1:] - py[:, :-1]).ravel(), (py[1:, :] - py[:-1, :]).ravel()])
        along = np.arctan2(ey, ex) + np.pi / 2
        t = rng.uniform(-0.35, 0.35, (2, len(mx))) * v
        red, endo = rng.random((2, len(mx))) < np.array([[0.6], [0.5]])
        blobs.append(_nuclei(rng, (mx + t[0] * np.cos(along))[red], (my + t[0] * np.sin(along))[red], _RBC))
        blobs.append(
            _nuclei(
                rng, (mx + t[1] * np.cos(along))[endo], (my + t[1] * np.sin(along))[endo], _ENDOTHELIUM, along[endo]
            )
        )
    # 8. texture lattices (value noise) for fibres, tissue extent, cytoplasm and necrosis granularity
    for name, spacing in (("warp", 22.0), ("bundle", 11.0), ("tissue", 30.0), ("thick", 45.0), ("cyto", 6.0)):
        sc.lattices[name] = (spacing, _lattice(rng, F, spacing))
    if "debris" in cand:
        sc.lattices["gran"] = (2.5, _lattice(rng, F, 2.5))
    sc.blob_array = np.concatenate(blobs) if blobs else np.zeros((0, _BLOB_COLS))
    return sc


# ----------------------------------------------------------------------------------------------------------------
# morphologies: one scene builder per cancer type
# ----------------------------------------------------------------------------------------------------------------


def _base(rng: np.random.Generator, F: float) -> _Scene:
    """A scene with randomized, type-agnostic stroma and tissue extent."""
    u = rng.uniform
    sc = _Scene(
        F=F,
        stroma_e=u(0.45, 0.75),
        fibre_period=u(4.5, 8.0),
        fibre_amp=u(0.3, 0.7),
        fibre_angle=u(0, np.pi),
        fibre_warp=u(2.0, 7.0),
        loose=u(0.0, 0.4),
        stroma_spacing=u(18, 30),
        lymph_spacing=u(25, 70),
    )
    if rng.random() < 0.06:
        sc.tissue = u(0.35, 0.8)
    return sc


def _small_vessel(sc: _Scene, rng: np.random.Generator) -> None:
    """A small vessel in the stroma: an empty lumen with a few red cells and endothelial nuclei."""
    F = sc.F
    x, y, r = rng.uniform(0, F), rng.uniform(0, F), rng.uniform(4, 9)
    sc.region(rng, _SPACE, x, y, r, aspect=rng.uniform(0.4, 1.0), wobble=0.1)
    n = int(rng.integers(1, 5))
    sc.blobs.append(_nuclei(rng, x + rng.normal(0, r / 3, n), y + rng.normal(0, r / 3, n), _RBC))
    phi = rng.uniform(0, 2 * np.pi, 2)
    sc.blobs.append(_nuclei(rng, x + r * np.cos(phi), y + r * np.sin(phi), _ENDOTHELIUM, phi + np.pi / 2))


def _stroma_only(sc: _Scene, rng: np.random.Generator) -> None:
    sc.lymph_spacing = rng.uniform(12, 40)
    for _ in range(int(rng.integers(0, 3))):
        _small_vessel(sc, rng)


def _glands(
    sc: _Scene,
    rng: np.random.Generator,
    n: int,
    r: tuple[float, float],
    gap: float,
    lumen: tuple[float, float],
    wobble: float,
    aspect: tuple[float, float] = (0.6, 1.0),
) -> list:
    placed = _pack(rng, sc.F, n, r[0], r[1], gap)
    for x, y, rr in placed:
        sc.region(rng, _GLAND, x, y, rr, aspect=rng.uniform(*aspect), wobble=wobble, lumen=rng.uniform(*lumen))
    return placed


def _luad(rng: np.random.Generator, F: float) -> _Scene:
    sc, u = _base(rng, F), rng.uniform
    sc.gland_nuc = _Nuc(
        u(5.0, 6.5), u(4.0, 5.0), u(0.95, 1.3), pleo=0.15, vesic=u(0.3, 0.6), chrom=0.3, nucleolus=u(0.3, 0.7)
    )
    sc.gland_orient, sc.gland_layers, sc.epi_e, sc.gland_depth = "random", u(0.0, 0.4), u(0.3, 0.5), u(0.5, 0.7)
    sc.lumen_e = u(0.0, 0.12)
    pattern = rng.choice(["acinar", "lepidic", "solid", "stroma"], p=[0.55, 0.2, 0.13, 0.12])
    if pattern == "acinar":
        _glands(sc, rng, int(rng.integers(2, 7)), (16, 40), u(4, 14), (0.45, 0.72), u(0.06, 0.16))
    elif pattern == "lepidic":
        sc.stroma_e = u(0.5, 0.8)
        _glands(sc, rng, 12, (20, 38), u(-7, -3), (0.8, 0.9), 0.12)
    elif pattern == "solid":
        sc.cell_size, sc.cell_nuc, sc.membrane = u(11, 14), sc.gland_nuc, u(0.0, 0.12)
        for x, y, r in _pack(rng, F, 3, 30, 60, 8):
            sc.region(rng, _NEST, x, y, r, aspect=u(0.6, 1.0), wobble=0.15)
        for x, y, r in _pack(rng, F, int(rng.integers(0, 4)), 3, 7, 10):  # intracytoplasmic mucin vacuoles
            sc.region(rng, _SPACE, x, y, r, wobble=0.05)
    else:
        _stroma_only(sc, rng)
    for _ in range(int(rng.integers(0, 2))):
        _small_vessel(sc, rng)
    return sc


def _lusc(rng: np.random.Generator, F: float) -> _Scene:
    sc, u = _base(rng, F), rng.uniform
    sc.cell_size, sc.membrane, sc.membrane_um = u(16.0, 22.0), u(0.3, 0.55), u(0.7, 1.1)
    sc.epi_e, sc.cell_var, sc.keratin_e = u(0.65, 0.95), 0.18, u(1.2, 1.6)
    sc.cell_nuc = _Nuc(
        u(5.0, 6.6), u(4.2, 5.4), u(1.45, 1.9), pleo=0.25, vesic=u(0.0, 0.3), chrom=0.4, nucleolus=u(0.0, 0.4)
    )
    sc.cell_visible = u(0.7, 0.9)
    pattern = rng.choice(["nests", "sheet", "necrotic", "stroma"], p=[0.55, 0.22, 0.11, 0.12])
    if pattern == "nests":
        nests = _pack(rng, F, int(rng.integers(1, 4)), 30, 70, u(6, 16))
        for x, y, r in nests:
            sc.region(rng, _NEST, x, y, r, aspect=u(0.5, 1.0), wobble=u(0.1, 0.2))
        for x, y, r in nests[: int(rng.integers(0, 3))]:
            sc.region(
                rng,
                _PEARL,
                x + rng.normal(0, r / 5),
                y + rng.normal(0, r / 5),
                u(9, min(22, 0.45 * r)),
                aspect=u(0.7, 1.0),
                wobble=0.06,
            )
    elif pattern == "sheet":
        sc.region(rng, _NEST, F / 2, F / 2, F, wobble=0.0)
        for _ in range(int(rng.integers(0, 3))):
            sc.region(rng, _PEARL, u(0, F), u(0, F), u(9, 20), aspect=u(0.7, 1.0), wobble=0.06)
    elif pattern == "necrotic":
        sc.region(rng, _NEST, F / 2, F / 2, F, wobble=0.0)
        sc.region(rng, _NECROSIS, u(0.2, 0.8) * F, u(0.2, 0.8) * F, u(25, 55), aspect=u(0.5, 1.0), wobble=0.2)
    else:
        _stroma_only(sc, rng)
    return sc


def _ucec(rng: np.random.Generator, F: float) -> _Scene:
    sc, u = _base(rng, F), rng.uniform
    sc.gland_nuc = _Nuc(u(5.8, 7.5), u(2.7, 3.4), u(1.35, 1.7), pleo=0.15, chrom=0.3, nucleolus=u(0.0, 0.3))
    sc.gland_layers, sc.epi_e, sc.lumen_e = u(0.3, 0.7), u(0.38, 0.55), u(0.0, 0.08)
    sc.stroma_nuc, sc.stroma_spacing = _Nuc(4.5, 2.5, 1.6, pleo=0.2), u(11, 16)  # cellular endometrial stroma
    sc.stroma_e = u(0.3, 0.5)
    pattern = rng.choice(["glands", "cribriform", "solid", "stroma"], p=[0.65, 0.15, 0.12, 0.08])
    if pattern == "glands":
        _glands(sc, rng, 24, (13, 30), u(-4, 1), (0.45, 0.7), u(0.08, 0.2), aspect=(0.4, 1.0))
    elif pattern == "cribriform":
        sc.cell_size, sc.cell_nuc, sc.cell_offset = u(8, 10), sc.gland_nuc, 0.15
        for x, y, r in _pack(rng, F, 2, 40, 65, 6):
            sc.region(rng, _NEST, x, y, r, wobble=0.12)
            for hx, hy, hr in _pack(rng, 2 * r * 0.8, 8, 5, 10, 7):
                sc.region(rng, _SPACE, x - 0.8 * r + hx, y - 0.8 * r + hy, hr, wobble=0.1)
    elif pattern == "solid":
        sc.cell_size, sc.cell_nuc, sc.membrane = u(9, 12), _Nuc(u(5, 6.5), u(3.5, 4.5), 1.6, pleo=0.25), 0.05
        sc.region(rng, _NEST, F / 2, F / 2, F, wobble=0.0)
        _glands(sc, rng, 2, (8, 14), 10, (0.3, 0.5), 0.1)
    else:
        _stroma_only(sc, rng)
    return sc


def _ucs(rng: np.random.Generator, F: float) -> _Scene:
    sc, u = _base(rng, F), rng.uniform
    sc.spindle_spacing = u(8.0, 11.5)
    sc.spindle_nuc = _Nuc(u(6.0, 9.0), u(1.8, 2.6), u(1.25, 1.65), pleo=u(0.25, 0.4), chrom=0.35, nucleolus=0.2)
    sc.spindle_swirl, sc.stroma_spacing = u(0.4, 1.4), 0.0
    sc.stroma_e, sc.fibre_amp, sc.fibre_period, sc.loose = u(0.35, 0.55), u(0.4, 0.8), u(3.5, 5.5), 0.0
    sc.gland_nuc = _Nuc(u(5.5, 7.5), u(3.8, 5.0), u(1.5, 1.9), pleo=0.3, chrom=0.35, nucleolus=0.4)
    sc.gland_layers, sc.epi_e, sc.gland_orient = u(0.3, 0.8), u(0.4, 0.55), "random"
    pattern = rng.choice(["sarcoma", "biphasic", "carcinoma", "necrotic"], p=[0.45, 0.33, 0.12, 0.10])
    if pattern == "biphasic":
        _glands(sc, rng, int(rng.integers(1, 4)), (14, 30), 12, (0.25, 0.5), 0.18)
    elif pattern == "carcinoma":
        _glands(sc, rng, int(rng.integers(3, 8)), (14, 32), 4, (0.2, 0.55), 0.25, aspect=(0.3, 1.0))
        sc.spindle_spacing = u(8.0, 11.0)
    elif pattern == "necrotic":
        sc.region(rng, _NECROSIS, u(0.2, 0.8) * F, u(0.2, 0.8) * F, u(25, 50), aspect=u(0.5, 1.0), wobble=0.2)
    return sc


def _brca(rng: np.random.Generator, F: float) -> _Scene:
    sc, u = _base(rng, F), rng.uniform
    sc.stroma_e, sc.fibre_amp, sc.loose, sc.stroma_spacing = u(0.75, 1.05), u(0.3, 0.6), u(0.0, 0.15), u(30, 45)
    sc.cell_size, sc.membrane, sc.epi_e = u(10.5, 13.5), u(0.0, 0.15), u(0.42, 0.6)
    sc.cell_nuc = _Nuc(
        u(5.0, 7.0), u(4.0, 5.5), u(1.35, 1.7), pleo=0.3, vesic=u(0.1, 0.4), chrom=0.35, nucleolus=u(0.2, 0.6)
    )
    sc.gland_nuc, sc.gland_orient, sc.gland_layers = sc.cell_nuc, "random", 0.3
    pattern = rng.choice(["cords", "solid", "tubules", "fat", "stroma"], p=[0.5, 0.2, 0.12, 0.1, 0.08])
    if pattern == "cords":
        for x, y, r in _pack(rng, F, int(rng.integers(3, 9)), 8, 26, u(5, 12)):
            sc.region(rng, _NEST, x, y, r, aspect=u(0.15, 0.7), wobble=u(0.1, 0.25))
    elif pattern == "solid":
        for x, y, r in _pack(rng, F, 2, 45, 75, 6):
            sc.region(rng, _NEST, x, y, r, aspect=u(0.6, 1.0), wobble=0.15)
    elif pattern == "tubules":
        _glands(sc, rng, int(rng.integers(3, 9)), (9, 18), u(6, 14), (0.3, 0.55), 0.12)
    elif pattern == "fat":
        for x, y, r in _pack(rng, F * 0.6, 8, 18, 32, 2.0):
            sc.region(rng, _SPACE, x, y, r, wobble=0.14)
        for x, y, r in _pack(rng, F, 3, 8, 18, 6):
            sc.region(rng, _NEST, x + 0.0, y, r, aspect=u(0.3, 0.8), wobble=0.2)
    else:
        _stroma_only(sc, rng)
    return sc


def _coad(rng: np.random.Generator, F: float) -> _Scene:
    sc, u = _base(rng, F), rng.uniform
    sc.gland_nuc = _Nuc(u(7.0, 9.5), u(2.3, 3.1), u(1.55, 1.9), pleo=0.15, chrom=0.3, nucleolus=u(0.0, 0.3))
    sc.gland_layers, sc.epi_e, sc.lumen_e = u(0.5, 1.0), u(0.5, 0.68), u(0.0, 0.1)
    sc.stroma_e, sc.lymph_spacing = u(0.55, 0.8), u(15, 35)
    sc.necrosis_e = u(0.7, 1.0)
    pattern = rng.choice(["glands", "cribriform", "necrosis", "stroma"], p=[0.65, 0.15, 0.1, 0.1])
    if pattern == "glands":
        for x, y, r in _glands(
            sc, rng, int(rng.integers(1, 4)), (35, 70), u(6, 14), (0.45, 0.7), 0.12, aspect=(0.4, 1.0)
        ):
            if rng.random() < 0.6:  # dirty necrosis in the lumen
                sc.region(rng, _NECROSIS, x, y, r * u(0.25, 0.4), aspect=u(0.5, 1.0), wobble=0.2)
    elif pattern == "cribriform":
        sc.cell_size, sc.cell_offset = u(9, 11), 0.12
        sc.cell_nuc = _Nuc(u(5.5, 6.5), u(3.2, 4.0), sc.gland_nuc.dens, pleo=0.2)
        sc.region(rng, _NEST, F / 2, F / 2, F * 0.75, wobble=0.12)
        for x, y, r in _pack(rng, F, 6, 6, 14, 9):
            sc.region(rng, _SPACE, x, y, r, wobble=0.1)
        sc.region(rng, _NECROSIS, u(0.3, 0.7) * F, u(0.3, 0.7) * F, u(10, 20), wobble=0.2)
    elif pattern == "necrosis":
        sc.region(rng, _NECROSIS, F / 2, F / 2, F * u(0.45, 0.8), aspect=u(0.6, 1.0), wobble=0.15)
    else:
        _stroma_only(sc, rng)
    return sc


def _kirc(rng: np.random.Generator, F: float) -> _Scene:
    sc, u = _base(rng, F), rng.uniform
    sc.cell_size, sc.membrane, sc.membrane_um = u(12.0, 18.0), u(0.35, 0.6), u(0.6, 1.0)
    sc.epi_e, sc.epi_h, sc.cell_var, sc.cell_offset = u(0.02, 0.08), 0.01, 0.4, 0.28
    sc.cell_nuc = _Nuc(u(2.9, 3.8), u(2.6, 3.4), u(1.7, 2.1), pleo=0.12, chrom=0.15, nucleolus=u(0.0, 0.3))
    sc.cell_visible, sc.vessel_size = u(0.55, 0.8), u(32, 55)
    sc.stroma_spacing, sc.lymph_spacing = 0.0, u(40, 90)
    pattern = rng.choice(["clear", "granular", "nests", "stroma"], p=[0.62, 0.1, 0.18, 0.1])
    if pattern == "clear":
        sc.region(rng, _NEST, F / 2, F / 2, F, wobble=0.0)
    elif pattern == "granular":  # higher-grade eosinophilic cytoplasm
        sc.epi_e, sc.cell_var = u(0.35, 0.5), 0.2
        sc.cell_nuc = _Nuc(u(4.0, 5.0), u(3.5, 4.3), 1.6, pleo=0.2, vesic=0.3, nucleolus=0.7)
        sc.region(rng, _NEST, F / 2, F / 2, F, wobble=0.0)
    elif pattern == "nests":
        sc.vessel_size, sc.stroma_spacing = 0.0, 25.0
        sc.stroma_e, sc.loose = u(0.35, 0.55), u(0.2, 0.5)
        for x, y, r in _pack(rng, F, 4, 22, 45, 5):
            sc.region(rng, _NEST, x, y, r, wobble=0.15)
        for _ in range(3):
            _small_vessel(sc, rng)
    else:
        sc.vessel_size, sc.stroma_spacing = 0.0, 25.0
        _stroma_only(sc, rng)
        for _ in range(2):
            _small_vessel(sc, rng)
    return sc


def _prad(rng: np.random.Generator, F: float) -> _Scene:
    sc, u = _base(rng, F), rng.uniform
    sc.gland_nuc = _Nuc(
        u(3.7, 4.6), u(3.4, 4.2), u(1.05, 1.35), pleo=0.1, vesic=u(0.3, 0.5), chrom=0.2, nucleolus=u(0.6, 1.0)
    )
    sc.gland_orient, sc.gland_layers, sc.epi_e, sc.epi_h = "random", 0.0, u(0.28, 0.4), u(0.06, 0.12)
    sc.gland_depth = u(0.6, 0.75)
    sc.lumen_e = u(0.0, 0.2)
    sc.stroma_e, sc.fibre_amp, sc.fibre_period, sc.loose = u(0.6, 0.8), u(0.2, 0.4), u(6, 9), 0.0
    sc.stroma_nuc, sc.stroma_spacing = _Nuc(7.0, 2.0, 1.4, pleo=0.15), u(16, 24)  # smooth muscle
    pattern = rng.choice(["glands", "cribriform", "fused", "stroma"], p=[0.7, 0.1, 0.1, 0.1])
    if pattern == "glands":
        _glands(sc, rng, 30, (10, 20), u(1.5, 5), (0.45, 0.7), 0.06, aspect=(0.6, 1.0))
    elif pattern == "cribriform":
        sc.cell_size, sc.cell_nuc = u(9, 11), sc.gland_nuc
        for x, y, r in _pack(rng, F, 2, 35, 55, 8):
            sc.region(rng, _NEST, x, y, r, wobble=0.08)
            for hx, hy, hr in _pack(rng, 1.6 * r, 10, 4, 8, 6):
                sc.region(rng, _SPACE, x - 0.8 * r + hx, y - 0.8 * r + hy, hr, wobble=0.05)
    elif pattern == "fused":
        sc.cell_size, sc.cell_nuc, sc.membrane = u(9, 11), sc.gland_nuc, 0.05
        for x, y, r in _pack(rng, F, 3, 25, 45, 6):
            sc.region(rng, _NEST, x, y, r, aspect=u(0.4, 1.0), wobble=0.2)
    else:
        _stroma_only(sc, rng)
    return sc


_MORPHOLOGY = {
    "LUAD": _luad,
    "LUSC": _lusc,
    "UCEC": _ucec,
    "UCS": _ucs,
    "BRCA": _brca,
    "COAD": _coad,
    "KIRC": _kirc,
    "PRAD": _prad,
}


def _ambiguous(rng: np.random.Generator, F: float) -> _Scene:
    """Tissue without tumour: stroma with lymphocytes and small vessels, identical in law for every cancer type."""
    sc = _base(rng, F)
    _stroma_only(sc, rng)
    return sc


def _scene(seed: int, patch_index: int, site: str, cancer_type: str, style: SiteStyle) -> _Scene:
    """The scene of one patch: depends only on (seed, patch_index, site, cancer type); cancer type "" = ambiguous."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(patch_index), _crc(site), _crc(cancer_type)]))
    morphology = _MORPHOLOGY[cancer_type] if cancer_type else _ambiguous
    return _finish(morphology(rng, _FIELD_UM * style.scale), rng)


# ----------------------------------------------------------------------------------------------------------------
# rasterization: a batch of scenes at once, every operation elementwise per patch (or an order-preserving sum over
# its own primitives), so a patch's pixels never depend on the other patches of the batch
# ----------------------------------------------------------------------------------------------------------------

_BATCH = 48
_F32 = np.float32
# fixed window-size classes (pixels): primitives of one class share a window size; fixed, so batch-independent
_WINDOW_CLASSES = np.unique(np.round(4 * 1.2 ** np.arange(26)).astype(np.int64))  # 4 ... 381 px, ratio 1.2


def _lattice(rng: np.random.Generator, F: float, spacing: float) -> np.ndarray:
    n = int(F / spacing) + 6
    return rng.standard_normal((n, n)).astype(_F32)


def _bspline_weights(coords: np.ndarray, spacing: float, n: int) -> np.ndarray:
    """(len(coords), n) cubic B-spline interpolation weights, scaled so the field has ~unit variance."""
    t = np.clip(coords / spacing + 2.0, 1.0, n - 3.0 - 1e-9)
    i = np.floor(t).astype(np.int64)
    f = t - i
    w = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3]) / 6.0
    out = np.zeros((len(coords), n))
    rows = np.arange(len(coords))
    for k in range(4):
        out[rows, i - 1 + k] += w[k]
    return out * 2.09


def _field_at(lat: np.ndarray, spacing: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A value-noise field (smooth, ~unit variance) evaluated at points."""
    wx, wy = _bspline_weights(x, spacing, lat.shape[0]), _bspline_weights(y, spacing, lat.shape[0])
    return np.einsum("pj,jk,pk->p", wy, lat, wx)


def _taps(xs: np.ndarray, spacing: float, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline taps along one axis: first lattice index (N, S) and the 4 weights (4, N, S)."""
    t = np.clip(xs / spacing + 2.0, 1.0, (n - 3.0 - 1e-4)[:, None])
    i = np.floor(t).astype(np.int64)
    f = (t - i).astype(_F32)
    w = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3]) * _F32(2.09 / 6)
    return i - 1, w


def _fields(scenes: list, name: str, xs: np.ndarray) -> np.ndarray:
    """The value-noise field ``name`` of every scene at its pixel centres, (N, S, S) float32."""
    N, S = xs.shape
    spacing = scenes[0].lattices[name][0]
    lats = [sc.lattices[name][1] for sc in scenes]
    sizes = np.array([lat.shape[0] for lat in lats])
    n = int(sizes.max())
    Lt = np.zeros((N, n, n), dtype=_F32)  # transposed lattices: [b, x-node, y-node]
    for b, lat in enumerate(lats):
        Lt[b, : lat.shape[0], : lat.shape[0]] = lat.T
    i0, w = _taps(xs, spacing, sizes)
    bi = np.arange(N)[:, None]
    # 1. along x: T[b, x, j] = sum_k w_k[b, x] L[b, j, i0[b, x] + k]   (row gathers; fixed summation order)
    T = sum(w[k][:, :, None] * Lt[bi, i0 + k] for k in range(4))
    # 2. along y: F[b, y, x] = sum_k w_k[b, y] T[b, x, i0[b, y] + k]
    T = np.ascontiguousarray(T.transpose(0, 2, 1))
    return sum(w[k][:, :, None] * T[bi, i0 + k] for k in range(4))


def _field_subset(scenes: list, name: str, xs: np.ndarray) -> np.ndarray:
    """Like _fields, zero for scenes without that lattice."""
    out = np.zeros((len(scenes), xs.shape[1], xs.shape[1]), dtype=_F32)
    idx = [i for i, sc in enumerate(scenes) if name in sc.lattices]
    if idx:
        out[idx] = _fields([scenes[i] for i in idx], name, xs[idx])
    return out


def _stack(arrays: list[np.ndarray], cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of all patches' primitive arrays and the patch index of each row."""
    rows = np.concatenate([a.reshape(-1, cols) for a in arrays]) if arrays else np.zeros((0, cols))
    owner = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    return rows, owner


def _windows(
    cx: np.ndarray, cy: np.ndarray, reach: np.ndarray, p: np.ndarray, owner: np.ndarray, w: int, size: int
) -> tuple:
    """Pixel windows of w x w holding every pixel centre within ``reach`` um of each primitive, clipped to its patch.

    Returns float32 offsets dx (n, 1, w), dy (n, w, 1) from the primitive's centre and flat indices into (N, S, S).
    """
    ar = np.arange(w)
    sx = np.clip(np.ceil(cx / p - 0.5 - reach / p).astype(np.int64), 0, size - w)[:, None] + ar
    sy = np.clip(np.ceil(cy / p - 0.5 - reach / p).astype(np.int64), 0, size - w)[:, None] + ar
    dx = ((sx + 0.5) * p[:, None] - cx[:, None]).astype(_F32)[:, None, :]
    dy = ((sy + 0.5) * p[:, None] - cy[:, None]).astype(_F32)[:, :, None]
    flat = (owner[:, None, None] * size * size + sy[:, :, None] * size + sx[:, None, :]).ravel()
    return dx, dy, flat


def _window_classes(reach: np.ndarray, p: np.ndarray, size: int) -> list[tuple[np.ndarray, int]]:
    """Primitives grouped by fixed window-size classes: (selection, window width) pairs."""
    need = np.minimum(np.floor(2 * reach / p).astype(np.int64) + 1, size)
    cls = np.searchsorted(_WINDOW_CLASSES, need)
    out = []
    for c in np.unique(cls):
        sel = cls == c
        out.append((sel, int(min(size, _WINDOW_CLASSES[c] if c < len(_WINDOW_CLASSES) else need[sel].max()))))
    return out


def _region_reach(R: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Distance from a region's centre beyond which its masks (soft edge and clefts included) are zero."""
    big, small = np.maximum(R[:, 2], R[:, 3]), np.minimum(R[:, 2], R[:, 3])
    return big * (1 + R[:, 5:8].sum(1)) + (extra + 0.1) * np.sqrt(big / small)


def _raster_regions(scenes: list, styles: list, size: int, p: np.ndarray) -> dict[str, np.ndarray]:
    """Soft masks (N, S, S) of epithelium, cellular nests, lumens/spaces, keratin (with lamellae) and necrosis."""
    N, n = len(scenes), len(scenes) * size * size
    R, owner = _stack([sc.region_array for sc in scenes], 13)
    pr = p[owner]
    soft = np.maximum(pr, 0.8)
    retraction = np.array([st.retraction_um for st in styles])[owner] if len(R) else np.zeros(0)
    reach = _region_reach(R, retraction + soft)
    F = np.array([sc.F for sc in scenes])[owner]
    keep = (R[:, 0] > -reach) & (R[:, 0] < F + reach) & (R[:, 1] > -reach) & (R[:, 1] < F + reach)
    R, owner, pr, soft, retraction, reach = R[keep], owner[keep], pr[keep], soft[keep], retraction[keep], reach[keep]
    parts: dict[str, list] = {}
    lam = 3.5
    # 1. one pass per window-size class, rows sorted by kind so that each kind is a contiguous block;
    #    overlapping masks of a kind add up (and saturate below)
    for sel, w in _window_classes(reach, pr, size):
        rows = np.flatnonzero(sel)
        rows = rows[np.argsort(R[rows, 12], kind="stable")]
        r = R[rows].astype(_F32)
        dx, dy, flat = _windows(R[rows, 0], R[rows, 1], reach[rows], pr[rows], owner[rows], w, size)
        flat = flat.reshape(len(rows), -1)
        q, r_um = _region_q(r, dx, dy)
        qr = q * r_um  # distance from the centre in um, on the outline's scale
        inv_soft = (1 / soft[rows]).astype(_F32)[:, None, None]
        inner = np.clip((r_um - qr) * inv_soft + 0.5, 0.0, 1.0)
        b = np.searchsorted(r[:, 12], np.arange(_SPACE + 2) - 0.5)  # block of kind k: rows b[k] .. b[k + 1]

        def block(k0: int, k1: int, b: np.ndarray = b) -> slice:
            return slice(int(b[k0]), int(b[k1 + 1]))

        def add(name: str, rows_: slice, m: np.ndarray, flat: np.ndarray = flat) -> None:
            if rows_.stop > rows_.start:
                parts.setdefault(name, []).append((flat[rows_].ravel(), m.ravel()))

        epi, gl, ne = block(_GLAND, _NEST), block(_GLAND, _GLAND), block(_NEST, _NEST)
        add("epi", epi, inner[epi])
        add("cell", ne, inner[ne])
        add("necrosis", block(_NECROSIS, _NECROSIS), inner[block(_NECROSIS, _NECROSIS)])
        add("lumen", block(_SPACE, _SPACE), inner[block(_SPACE, _SPACE)])
        if gl.stop > gl.start:
            lumen = np.clip((r[gl, 11][:, None, None] * r_um[gl] - qr[gl]) * inv_soft[gl] + 0.5, 0.0, 1.0)
            add("lumen", gl, lumen)
        ret = retraction[rows].astype(_F32)[:, None, None]
        if epi.stop > epi.start and (retraction[rows][epi] > 0).any():  # fixation clefts outside the epithelium
            add("lumen", epi, np.clip((r_um[epi] - qr[epi] + ret[epi]) * inv_soft[epi] + 0.5, 0.0, 1.0) - inner[epi])
        pe = block(_PEARL, _PEARL)
        if pe.stop > pe.start:  # keratin lamellae, band-limited to the pixel size
            att = np.exp(-2 * (np.pi * 0.5 * pr[rows][pe] / lam) ** 2).astype(_F32)[:, None, None]
            add("keratin", pe, inner[pe] * (0.8 + 0.2 * att * np.cos(qr[pe] * _F32(2 * np.pi / lam))))
    # 2. one sum per kind (contributions in a fixed order: class, then patch, then region), then saturate
    out = {}
    for name in ("epi", "cell", "lumen", "keratin", "necrosis"):
        if name in parts:
            flat, w = (np.concatenate(v) for v in zip(*parts[name], strict=True))
            acc = np.bincount(flat, w, n)
            out[name] = np.clip(acc, 0, 1.2 if name == "keratin" else 1.0).astype(_F32).reshape(N, size, size)
        else:
            out[name] = np.zeros((N, size, size), dtype=_F32)
    return out


def _raster_blobs(scenes: list, size: int, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Haematoxylin, eosin and nuclear-coverage maps (N, S, S) of all blobs, mass conserved at any resolution."""
    N, n = len(scenes), len(scenes) * size * size
    parts: list[tuple] = []
    B, owner = _stack([sc.blob_array for sc in scenes], _BLOB_COLS)
    pr = p[owner]
    soft = np.maximum(0.5, 0.5 * pr)
    ae, be = np.sqrt(B[:, 2] ** 2 + (0.6 * pr) ** 2), np.sqrt(B[:, 3] ** 2 + (0.6 * pr) ** 2)
    reach = np.maximum(ae, be) * np.sqrt(1 + soft / np.sqrt(ae * be)) + 1e-3
    F = np.array([sc.F for sc in scenes])[owner]
    keep = (B[:, 0] > -reach) & (B[:, 0] < F + reach) & (B[:, 1] > -reach) & (B[:, 1] < F + reach)
    B, owner, pr, soft, ae, be, reach = B[keep], owner[keep], pr[keep], soft[keep], ae[keep], be[keep], reach[keep]
    fine = size >= 128  # nucleoli, vesicular and coarse chromatin are drawn; below, only their mass is kept
    area = B[:, 2] * B[:, 3]
    dens = B[:, 5] if fine else B[:, 5] * (1 - 0.35 * B[:, 7]) + B[:, 9] * 1.28 / area
    k = 2 * np.pi / 2.2  # chromatin granularity (um)
    att = np.exp(-2 * (0.5 * pr * k / 2) ** 2)
    sig2 = 0.8**2 + (0.5 * pr) ** 2
    col = lambda v: np.asarray(v, dtype=_F32)[:, None, None]  # noqa: E731
    for sel, w in _window_classes(reach, pr, size):
        b = B[sel]
        dx, dy, flat = _windows(b[:, 0], b[:, 1], reach[sel], pr[sel], owner[sel], w, size)
        c, s = col(np.cos(b[:, 4])), col(np.sin(b[:, 4]))
        u, v = dx * c + dy * s, dy * c - dx * s
        rho2 = u * u * col(1 / ae[sel] ** 2) + v * v * col(1 / be[sel] ** 2)
        # 1. anti-aliased ellipse (edge ~0.5 um or half a pixel), scaled so its integral is the nucleus' area
        m = np.clip((1 - rho2) * col(0.5 * np.sqrt(ae[sel] * be[sel]) / soft[sel]) + 0.5, 0, 1)
        m = m * col(area[sel] / (ae[sel] * be[sel]))
        d = col(dens[sel])
        if fine and b[:, 8].any():  # coarse chromatin
            phase = col(b[:, 0] * 1.7 + b[:, 1] * 2.3)
            d = d * (1 + col(b[:, 8] * att[sel]) * np.sin(_F32(k) * u + phase) * np.sin(_F32(k) * v + 2 * phase))
        if fine and b[:, 7].any():  # vesicular nuclei: pale centre, chromatin along the membrane
            d = d * (1 - col(0.7 * b[:, 7]) * np.clip(1 - rho2, 0, 1))
        hval, eval_ = m * d, m * col(b[:, 6])
        if fine and b[:, 9].any():  # nucleoli
            nucleolus = col(b[:, 9] * 0.64 / sig2[sel]) * np.exp((u * u + v * v) * col(-0.5 / sig2[sel])) * m
            hval, eval_ = hval + nucleolus, eval_ + 0.6 * nucleolus
        parts.append((flat, hval.ravel(), eval_.ravel(), (m * col(b[:, 5] > 0)).ravel()))
    if not parts:
        zero = np.zeros((N, size, size), dtype=_F32)
        return zero, zero, zero
    # 2. one sum per map, contributions in a fixed order (class, then patch, then blob)
    flat, *maps = (np.concatenate(v) for v in zip(*parts, strict=True))
    return tuple(np.bincount(flat, w, n).astype(_F32).reshape(N, size, size) for w in maps)


def _worley(jitters: list[np.ndarray], spacing: np.ndarray, xs: np.ndarray) -> tuple:
    """Per pixel: distance to the nearest and second-nearest lattice seed, and the nearest seed's flat index into
    the batch's padded (N, n, n) lattice, each (N, S, S)."""
    N, S = xs.shape
    n = max(j.shape[0] for j in jitters)
    c = spacing.astype(_F32)[:, None, None]
    SX, SY = np.zeros((2, N, n, n), dtype=_F32)
    for b, j in enumerate(jitters):
        m = j.shape[0]
        SX[b, :m, :m] = (np.arange(m)[None, :] - 1 + j[..., 0]) * spacing[b]
        SY[b, :m, :m] = (np.arange(m)[:, None] - 1 + j[..., 1]) * spacing[b]
    g = np.floor(xs / c[:, 0]).astype(np.int64) + 1
    base = np.arange(N)[:, None, None] * n * n + g[:, :, None] * n + g[:, None, :]
    X, Y = xs[:, None, :], xs[:, :, None]
    f1 = np.full((N, S, S), np.inf, dtype=_F32)
    f2 = np.full((N, S, S), np.inf, dtype=_F32)
    ids = np.zeros((N, S, S), dtype=np.int64)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            idx = base + (oy * n + ox)
            d2 = (X - np.take(SX, idx)) ** 2 + (Y - np.take(SY, idx)) ** 2
            closer = d2 < f1
            np.minimum(f2, np.maximum(f1, d2), out=f2)
            np.minimum(f1, d2, out=f1)
            np.copyto(ids, idx, where=closer)
    return np.sqrt(f1), np.sqrt(f2), ids, n


def _borders(f1: np.ndarray, f2: np.ndarray, width: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Line mask of Voronoi borders of the given width (um), faded (mass conserved) below the pixel size."""
    w = np.maximum(width, p).astype(_F32)[:, None, None]
    return np.clip(1 - (f2 - f1) / w, 0, 1) * (width.astype(_F32)[:, None, None] / w)


def _stains(scenes: list, styles: list, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration maps (N, S, S) of a batch of scenes."""
    N = len(scenes)
    F = np.array([sc.F for sc in scenes])
    p = F / size
    xs = ((np.arange(size) + 0.5)[None, :] * p[:, None]).astype(_F32)
    P = lambda name: np.array([getattr(sc, name) for sc in scenes], dtype=_F32)[:, None, None]  # noqa: E731
    # 1. tissue extent (partial patches at the edge of the section)
    tissue = np.ones((N, size, size), dtype=_F32)
    for i, sc in enumerate(scenes):
        if sc.tissue < 1.0:
            level = _fields([sc], "tissue", xs[i : i + 1])[0] + 1.8 * (xs[i][None, :] / sc.F - 0.5)
            tissue[i] = np.clip((level - np.quantile(level, 1 - sc.tissue)) * 3 + 0.5, 0, 1)
    # 2. stroma: wavy collagen fibres in bundles with loose gaps, band-limited to the pixel size
    warp, bundle, grain = _fields(scenes, "warp", xs), _fields(scenes, "bundle", xs), _fields(scenes, "cyto", xs)
    angle = P("fibre_angle")
    t = xs[:, None, :] * np.cos(angle) + xs[:, :, None] * np.sin(angle) + P("fibre_warp") * warp
    period = P("fibre_period")
    att = np.exp(-2 * (np.pi * p.astype(_F32)[:, None, None] / period) ** 2)  # of the thin-fibre harmonic
    # three fibre families of incommensurate periods interfere into irregular, roughly parallel streaks
    fib = sum(
        np.sin(t * (2 * np.pi / (period * f)) + ph + c1 * bundle + c2 * grain)
        for f, ph, c1, c2 in ((1.0, 0.0, 1.6, 0.9), (0.62, 1.3, -1.1, 1.4), (1.47, 2.9, 0.7, -1.2))
    )
    fib = np.clip(0.5 + 0.3 * fib, 0, 1) ** 2
    amp = P("fibre_amp") * np.clip(0.75 + 0.45 * bundle, 0.1, 1.4)
    stroma = (
        P("stroma_e")
        * (1 + amp * att * (fib - 0.375) * 1.6)
        * (1 - P("loose") * np.clip(-0.8 * bundle - 0.2 * grain, 0, 1))
    )
    # 3. regions: epithelium, nests, lumens, keratin, necrosis
    reg = _raster_regions(scenes, styles, size, p)
    epi = reg["epi"]
    cyto = P("epi_e") * (1 + 0.12 * _fields(scenes, "cyto", xs))
    h = P("stroma_h") * (1 - epi) + P("epi_h") * epi
    # 4. cells of solid nests: per-cell cytoplasm variation and crisp membranes
    cellular = [i for i, sc in enumerate(scenes) if sc.cell_size > 0 and reg["cell"][i].any()]
    if cellular:
        f1, f2, ids, nmax = _worley(
            [scenes[i].cell_jitter for i in cellular], np.array([scenes[i].cell_size for i in cellular]), xs[cellular]
        )
        rand = np.zeros((len(cellular), nmax, nmax), dtype=_F32)
        for j, i in enumerate(cellular):
            m = scenes[i].cell_jitter.shape[0]
            rand[j, :m, :m] = scenes[i].cell_rand.reshape(m, m)
        var = np.take(rand, ids)
        sub = P("cell_var")[cellular]
        cell = reg["cell"][cellular]
        mem = _borders(f1, f2, np.array([scenes[i].membrane_um for i in cellular]), p[cellular])
        cyto[cellular] = cyto[cellular] * (1 + cell * sub * np.clip(var, -2, 2)) + cell * P("membrane")[cellular] * mem
    e = (1 - epi) * stroma + epi * cyto
    # 5. capillary network
    vascular = [i for i, sc in enumerate(scenes) if sc.vessel_size > 0]
    if vascular:
        f1, f2, _, _ = _worley(
            [scenes[i].vessel_jitter for i in vascular],
            np.array([scenes[i].vessel_size for i in vascular]),
            xs[vascular],
        )
        vessel = _borders(f1, f2, np.full(len(vascular), 2.0), p[vascular])
        e[vascular] = e[vascular] * (1 - vessel) + 0.85 * vessel
    # 6. lumens and spaces, keratin, necrosis
    lumen, keratin, nec = reg["lumen"], reg["keratin"], reg["necrosis"]
    e = e * (1 - lumen) + P("lumen_e") * lumen
    h = h * (1 - lumen) + P("lumen_h") * lumen
    e = e * (1 - np.clip(keratin, 0, 1)) + P("keratin_e") * keratin
    if nec.any():
        gran = _field_subset(scenes, "gran", xs)
        e = e * (1 - nec) + nec * P("necrosis_e") * (0.85 + 0.2 * gran)
        h = h * (1 - nec) + nec * 0.12 * np.clip(1 + gran, 0, 2)
    # 7. nuclei, red cells and nucleoli
    bh, be_, cover = _raster_blobs(scenes, size, p)
    e = np.maximum(e * (1 - 0.5 * np.clip(cover, 0, 1)) + be_, 0)
    h = h + bh
    return h * tissue, e * tissue


def _style_array(styles: list, name: str) -> np.ndarray:
    """A style attribute of every patch as float32, shaped to broadcast over (N, S, S, 3)."""
    v = np.array([np.asarray(getattr(st, name), dtype=np.float64) for st in styles], dtype=_F32)
    return v.reshape(len(styles), 1, 1, -1)


def _beer_lambert(
    h: np.ndarray,
    e: np.ndarray,
    styles: list,
    thickness_map: np.ndarray | float = 1.0,
    illumination: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Float RGB (N, S, S, 3) in 0-255 of haematoxylin/eosin concentration maps (N, S, S) under the sites' optics."""
    A = lambda name: _style_array(styles, name)  # noqa: E731
    od = h[..., None] * (A("h_intensity") * A("stain_h")) + e[..., None] * (A("e_intensity") * A("stain_e"))
    thick = A("thickness") * np.asarray(thickness_map, dtype=_F32)[..., None]
    return A("background") * np.asarray(illumination, dtype=_F32)[..., None] * np.exp(-thick * od)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur of a (n, H, W, 3) float image with reflected borders."""
    r = max(1, int(math.ceil(2.5 * sigma_px)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2)
    k = (k / k.sum()).astype(_F32)
    size = img.shape[1]
    x = np.pad(img, ((0, 0), (r, r), (0, 0), (0, 0)), mode="symmetric")
    img = sum(k[j] * x[:, j : j + size] for j in range(2 * r + 1))
    x = np.pad(img, ((0, 0), (0, 0), (r, r), (0, 0)), mode="symmetric")
    return sum(k[j] * x[:, :, j : j + size] for j in range(2 * r + 1))


def _scanner(rgb: np.ndarray, style: SiteStyle, size: int, rngs: list) -> np.ndarray:
    """Blur or sharpen, sensor noise, quantization and JPEG, as the site's scanner does; (n, S, S, 3) of one site."""
    p = _FIELD_UM * style.scale / size
    # 1. optics: point-spread blur and software sharpening, both defined in micrometres
    sigma = style.blur_um / p
    if sigma > 0.25:
        rgb = _blur(rgb, sigma)
    if style.sharpen > 0 and 1.0 / p > 0.25:
        rgb = rgb + _F32(style.sharpen) * (rgb - _blur(rgb, 1.0 / p))
    # 2. sensor noise (partly luminance-correlated), as if downsampled from a 128 px scan when smaller
    std = _F32(style.noise * min(1.0, size / _REFERENCE_SIZE))
    raw = np.frombuffer(b"".join(rng.bytes(2 * size * size * 3) for rng in rngs), dtype=np.uint8)
    raw = raw.reshape(len(rngs), 2, size, size, 3).astype(_F32)
    noise = (raw[:, 0] + raw[:, 1]) * _F32(math.sqrt(6) / 255) - _F32(math.sqrt(6))  # triangular, unit variance
    noise = 0.8 * noise + 0.6 * noise.mean(axis=3, keepdims=True)
    img = np.clip(np.rint(rgb + std * noise), 0, 255).astype(np.uint8)
    # 3. JPEG at the site's quality; smaller patches behave as if compressed at 128 px and downsampled
    quality = int(round(100 - (100 - style.jpeg_quality) * min(1.0, size / _REFERENCE_SIZE)))
    return _jpeg(img, quality, style.jpeg_subsampling)


def _jpeg(img: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    """JPEG round trip of (n, S, S, 3) uint8 patches, each exactly as if compressed alone.

    The patches go through one encoder call as a vertical strip; each gets reflected margins of one MCU above and
    below, so no block and no chroma interpolation ever mixes two patches.
    """
    from PIL import Image

    n, size = img.shape[:2]
    m = 16 if subsampling == 2 else 8
    strip = np.pad(img, ((0, 0), (m, m), (0, 0), (0, 0)), mode="reflect").reshape(n * (size + 2 * m), size, 3)
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im)
    return out.reshape(n, size + 2 * m, size, 3)[:, m : m + size]


def _render_batch(seed: int, keys: list[tuple[int, str, str]], size: int) -> np.ndarray:
    """uint8 (n, S, S, 3) patches for (patch_index, site, cancer_type) keys."""
    styles = [site_style(site, seed) for _, site, _ in keys]
    scenes = [_scene(seed, pidx, site, ct, st) for (pidx, site, ct), st in zip(keys, styles, strict=True)]
    # 1. stain concentrations, section unevenness and illumination gradient
    h, e = _stains(scenes, styles, size)
    thick = 1.0 + _style_array(styles, "thickness_variation")[..., 0] * np.tanh(
        _fields(
            scenes,
            "thick",
            ((np.arange(size) + 0.5)[None, :] * np.array([sc.F / size for sc in scenes])[:, None]).astype(_F32),
        )
    )
    xs = ((np.arange(size) + 0.5) / size - 0.5).astype(_F32)
    ang = _style_array(styles, "vignetting_angle")[..., 0]
    grad = xs[None, None, :] * np.cos(ang) + xs[None, :, None] * np.sin(ang)
    illum = 1.0 - _style_array(styles, "vignetting")[..., 0] * (grad + 0.5)
    # 2. Beer-Lambert optics
    rgb = _beer_lambert(h, e, styles, thick, illum)
    # 3. scanner, one site at a time
    out = np.empty((len(keys), size, size, 3), dtype=np.uint8)
    sites = [k[1] for k in keys]
    for site in dict.fromkeys(sites):
        idx = [i for i, s in enumerate(sites) if s == site]
        rngs = [
            np.random.default_rng(
                np.random.SeedSequence(
                    [int(seed), int(keys[i][0]), _crc(site), _crc(keys[i][2]), _crc("pixels"), size]
                )
            )
            for i in idx
        ]
        out[idx] = _scanner(rgb[idx], site_style(site, seed), size, rngs)
    return out


def render(cohort: pd.DataFrame, size: int, seed: int) -> np.ndarray:
    """uint8 (N, size, size, 3) patches for the cohort's rows.

    Patch i depends only on ``(seed, patch_index, tissue_source_site, cancer_type, ambiguous)`` of its row, never on
    the other rows, so subsets and reorderings render identically; every size shows the same scene. An
    ``ambiguous`` patch shows tissue without tumour, drawn the same way whatever its cancer type.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    missing = [c for c in ("patch_index", "tissue_source_site", "cancer_type") if c not in cohort.columns]
    if missing:
        raise ValueError(f"cohort lacks columns {missing}")
    bad = sorted(set(cohort["cancer_type"]) - set(CANCER_TYPES))
    if bad:
        raise ValueError(f"unknown cancer types {bad}; valid: {sorted(CANCER_TYPES)}")
    ambiguous = cohort["ambiguous"] if "ambiguous" in cohort.columns else np.zeros(len(cohort), dtype=bool)
    keys = [
        (int(i), str(s), "" if a else str(t))
        for i, s, t, a in zip(
            cohort["patch_index"], cohort["tissue_source_site"], cohort["cancer_type"], ambiguous, strict=True
        )
    ]
    out = np.empty((len(keys), size, size, 3), dtype=np.uint8)
    for start in range(0, len(keys), _BATCH):
        out[start : start + _BATCH] = _render_batch(int(seed), keys[start : start + _BATCH], size)
    return out


# ----------------------------------------------------------------------------------------------------------------
# figure
# ----------------------------------------------------------------------------------------------------------------


def sample_figure(
    out_path: str | Path, spec: CohortSpec | None = None, size: int = 128, n_sites: int = 6, seed: int = 0
) -> Path:
    """A PNG grid for the README: rows = cancer types, columns = sites (code and class mix), 2 patches per cell.

    Cells for combinations a site never sent are counterfactual renders (same site style, other morphology).
    Without ``spec`` the cohort has all cancer types.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = spec or CohortSpec(cancer_types=tuple(CANCER_TYPES), n_sites=24, n_patients=480, seed=seed)
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    cohort = make_cohort(spec)
    per_site = cohort.drop_duplicates("patient_id").groupby("tissue_source_site")["cancer_type"]
    counts = per_site.value_counts().unstack(fill_value=0)
    # sites: the largest ones, at least one mixed-looking site (most balanced) among them
    order = counts.sum(axis=1).sort_values(ascending=False, kind="stable").index.tolist()
    balance = (counts.max(axis=1) / counts.sum(axis=1)).sort_values(kind="stable")
    sites = order[: max(1, n_sites - 1)]
    if n_sites > 1:
        sites.append(next(s for s in balance.index if s not in sites))
    sites = sites[:n_sites]
    types, per_cell = spec.cancer_types, 2
    rows = []
    for t_i, ct in enumerate(types):
        for s_i, site in enumerate(sites):
            for j in range(per_cell):
                rows.append(
                    {
                        "patch_index": 10_000_000 + (t_i * 1000 + s_i) * 10 + j,
                        "tissue_source_site": site,
                        "cancer_type": ct,
                    }
                )
    imgs = render(pd.DataFrame(rows), size, spec.seed)
    fig, axes = plt.subplots(
        len(types), len(sites), figsize=(2.0 * len(sites), 1.15 * len(types) + 0.6), squeeze=False
    )
    k = 0
    for t_i, ct in enumerate(types):
        for s_i, site in enumerate(sites):
            ax = axes[t_i, s_i]
            ax.imshow(np.concatenate([imgs[k + j] for j in range(per_cell)], axis=1))
            k += per_cell
            ax.set_xticks([])
            ax.set_yticks([])
            if s_i == 0:
                ax.set_ylabel(ct, fontsize=10)
            if t_i == 0:
                mix = counts.loc[site]
                mix = mix[mix > 0].sort_values(ascending=False)
                label = " ".join(f"{c} {v / mix.sum():.0%}" for c, v in mix.head(2).items())
                label += " +" if len(mix) > 2 else ""
                ax.set_title(f"TSS {site}\n{label}", fontsize=7.5)
    fig.suptitle("Embedded TCGA-like patches: rows = cancer type, columns = tissue source site", fontsize=10)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
