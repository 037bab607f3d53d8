"""TCGA-UT loader: the real TCGA uniform-tumour patch data set (Komura & Ishikawa, Zenodo record 5889558).

On disk, one folder per cancer type, one folder per slide, 256x256 JPEG patches inside::

    <root>/<CancerTypeFolder>/<slide_submitter_id>/*.jpg           (flat layout)
    <root>/<CancerTypeFolder>/<level>/<slide_submitter_id>/*.jpg   (Zenodo archives: level "0" = 0.5 um/px)

``CancerTypeFolder`` is TCGA-UT's folder name (``TCGA_PROJECTS``, e.g. ``Lung_adenocarcinoma``) or the project code
(``LUAD`` / ``TCGA-LUAD``), matched case-insensitively. Clinical metadata comes from a GDC clinical CSV (or TSV)
keyed by ``slide_submitter_id`` (or by the 12-character patient barcode).

Typical use by a task::

    index, report = load_index(root, csv, ["LUAD", "LUSC"])            # fast: no pixels read
    images = PathImages(index["path"], size=64, on_error="skip")
    pixels, good, decoded = decode_all(images, cache_dir)               # bad files found before any split
    index = index[good].reset_index(drop=True)
    report.record_decode(decoded, index)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from benchmark.cache import atomic_file
from benchmark.data import METADATA_COLUMNS, UNKNOWN

log = logging.getLogger(__name__)

SOURCE = "tcga-ut"

#: The 32 TCGA projects in TCGA-UT (all TCGA projects but LAML) -> TCGA-UT's folder name for it. Folder names are the
#: archive names of Zenodo record 5889558 ("Histology images from uniform tumor regions in TCGA Whole Slide Images").
TCGA_PROJECTS: dict[str, str] = {
    "ACC": "Adrenocortical_carcinoma",
    "BLCA": "Bladder_Urothelial_Carcinoma",
    "BRCA": "Breast_invasive_carcinoma",
    "CESC": "Cervical_squamous_cell_carcinoma_and_endocervical_adenocarcinoma",
    "CHOL": "Cholangiocarcinoma",
    "COAD": "Colon_adenocarcinoma",
    "DLBC": "Lymphoid_Neoplasm_Diffuse_Large_B-cell_Lymphoma",
    "ESCA": "Esophageal_carcinoma",
    "GBM": "Glioblastoma_multiforme",
    "HNSC": "Head_and_Neck_squamous_cell_carcinoma",
    "KICH": "Kidney_Chromophobe",
    "KIRC": "Kidney_renal_clear_cell_carcinoma",
    "KIRP": "Kidney_renal_papillary_cell_carcinoma",
    "LGG": "Brain_Lower_Grade_Glioma",
    "LIHC": "Liver_hepatocellular_carcinoma",
    "LUAD": "Lung_adenocarcinoma",
    "LUSC": "Lung_squamous_cell_carcinoma",
    "MESO": "Mesothelioma",
    "OV": "Ovarian_serous_cystadenocarcinoma",
    "PAAD": "Pancreatic_adenocarcinoma",
    "PCPG": "Pheochromocytoma_and_Paraganglioma",
    "PRAD": "Prostate_adenocarcinoma",
    "READ": "Rectum_adenocarcinoma",
    "SARC": "Sarcoma",
    "SKCM": "Skin_Cutaneous_Melanoma",
    "STAD": "Stomach_adenocarcinoma",
    "TGCT": "Testicular_Germ_Cell_Tumors",
    "THCA": "Thyroid_carcinoma",
    "THYM": "Thymoma",
    "UCEC": "Uterine_Corpus_Endometrial_Carcinoma",
    "UCS": "Uterine_Carcinosarcoma",
    "UVM": "Uveal_Melanoma",
}

#: CSV columns load_index needs, besides a key column (KEY_COLUMNS).
REQUIRED_COLUMNS: tuple[str, ...] = ("project_id", "gender", "race", "age_at_index")
#: Accepted key columns, in order of preference: slide barcodes (or 12-character patient barcodes), then patients.
KEY_COLUMNS: tuple[str, ...] = ("slide_submitter_id", "case_submitter_id")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
ON_ERROR = ("fail", "skip")
#: Bump when decoding changes (filters, conversions): it is part of PathImages.fingerprint() and so of cache keys.
DECODER_VERSION = 1

# GDC / TCGA spellings of "no value" (compared case-insensitively after stripping whitespace).
_PLACEHOLDERS = frozenset(
    {
        "",
        "--",
        "'--",
        "'--'",
        '"--',
        '"--"',
        "not reported",
        "unknown",
        "not allowed to collect",
        "[not available]",
        "[not applicable]",
        "[not evaluated]",
        "[unknown]",
        "[discrepancy]",
        "nan",
        "none",
        "null",
        "n/a",
        "na",
    }
)
_BARCODE = re.compile(r"^TCGA-([0-9A-Z]{2})-([0-9A-Z]{4})(?:$|-)")
_MAX_LISTED = 20


class DataError(ValueError):
    """The TCGA-UT files or the clinical table are not what the loader expects (message names the file/row/column)."""


# ---------------------------------------------------------------------------------------------------------------------
# barcodes and values


def _check_barcode(barcode: str) -> re.Match:
    match = _BARCODE.match(barcode) if isinstance(barcode, str) else None
    if match is None:
        raise DataError(
            f"malformed TCGA barcode {barcode!r}: expected 'TCGA-<2-char site>-<4-char participant>[-...]', "
            "e.g. 'TCGA-05-4244-01Z-00-DX1'"
        )
    return match


def parse_tissue_source_site(barcode: str) -> str:
    """The 2-character tissue source site code of a TCGA barcode ("TCGA-05-4244-01Z-00-DX1" -> "05")."""
    return _check_barcode(barcode).group(1)


def patient_from_barcode(barcode: str) -> str:
    """The 12-character patient barcode of a TCGA barcode ("TCGA-05-4244-01Z-00-DX1" -> "TCGA-05-4244")."""
    match = _check_barcode(barcode)
    return f"TCGA-{match.group(1)}-{match.group(2)}"


def clean_value(value: object) -> str:
    """A value as a stripped string, or UNKNOWN for GDC placeholders ("--", "'--", "not reported", NaN, ...)."""
    if value is None or value is pd.NA:
        return UNKNOWN
    if isinstance(value, float) and math.isnan(value):
        return UNKNOWN
    text = str(value).strip()
    return UNKNOWN if text.casefold() in _PLACEHOLDERS else text


def _slide_id_from_folder(name: str) -> str:
    """slide_submitter_id of a slide folder; GDC file stems "<barcode>.<uuid>" keep the barcode only."""
    return name.split(".", 1)[0]


def _resolve_cancer_type(name: str) -> str:
    """Project code ("LUAD") for a code, "TCGA-" code or TCGA-UT folder name, case-insensitively."""
    key = str(name).strip().casefold()
    for code, folder in TCGA_PROJECTS.items():
        if key in (code.casefold(), f"tcga-{code.casefold()}", folder.casefold()):
            return code
    raise DataError(
        f"unknown cancer type {name!r}: expected one of the 32 TCGA-UT projects {sorted(TCGA_PROJECTS)} "
        "(also accepted: 'TCGA-<code>' or the TCGA-UT folder name, e.g. 'Lung_adenocarcinoma')"
    )


def _folder_code(name: str) -> str | None:
    try:
        return _resolve_cancer_type(name)
    except DataError:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# report


@dataclass
class LoadReport:
    """What loading TCGA-UT found, for the run record."""

    n_images: int = 0
    n_slides: int = 0
    n_patients: int = 0
    n_sites: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)  # cancer type -> images kept
    folders: dict[str, str] = field(default_factory=dict)  # cancer type -> folder read, relative to root
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) dropped by decode_all
    converted: dict[str, int] = field(default_factory=dict)  # e.g. {"RGBA->RGB": 3}
    images_without_metadata: int = 0
    slides_without_metadata: list[str] = field(default_factory=list)  # first 20
    n_slides_without_metadata: int = 0
    metadata_without_images: int = 0  # CSV keys of the loaded projects with no image folder
    matched_by_patient: int = 0  # slides whose CSV row was keyed by the 12-character patient barcode
    tss_from_barcode: int = 0  # slides whose site came from the barcode (CSV column absent or a placeholder)
    unknown_folders: list[str] = field(default_factory=list)  # folders under root that are no TCGA project
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), first 20
    n_ignored: int = 0

    def count(self, index: pd.DataFrame, codes: Sequence[str]) -> None:
        """Set the image, slide, patient, site and per-class counts from an index."""
        self.n_images = len(index)
        self.n_slides = int(index["slide_id"].nunique())
        self.n_patients = int(index["patient_id"].nunique())
        self.n_sites = int(index["tissue_source_site"].nunique())
        self.class_counts = {code: int((index["cancer_type"] == code).sum()) for code in codes}

    def record_decode(self, decoded: DecodeReport, kept: pd.DataFrame | None = None) -> None:
        """Add decode_all's findings (skipped files, conversions); recount from ``kept``, the index rows left."""
        self.skipped = list(decoded.skipped)
        self.converted = dict(decoded.converted)
        if kept is not None:
            if len(kept) != decoded.n_good:
                raise DataError(f"kept index has {len(kept)} rows but decode_all kept {decoded.n_good} images")
            self.count(kept, list(self.class_counts))
        else:
            self.n_images = decoded.n_good

    def to_dict(self) -> dict:
        """JSON-able copy."""
        out = asdict(self)
        for key in ("skipped", "ignored"):
            out[key] = [list(item) for item in out[key]]
        return out

    def summary(self) -> str:
        """One human-readable line."""
        classes = ", ".join(f"{k} {v}" for k, v in self.class_counts.items())
        parts = [f"{SOURCE}: {self.n_images} images from {self.n_slides} slides, {self.n_sites} sites ({classes})"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} bad files skipped")
        if self.converted:
            parts.append("converted " + ", ".join(f"{k} {v}" for k, v in sorted(self.converted.items())))
        if self.images_without_metadata:
            parts.append(
                f"{self.images_without_metadata} images of {self.n_slides_without_metadata} slides without metadata"
            )
        if self.metadata_without_images:
            parts.append(f"{self.metadata_without_images} metadata rows without images")
        if self.unknown_folders:
            parts.append(f"unknown folders {self.unknown_folders}")
        if self.n_ignored:
            parts.append(f"{self.n_ignored} non-image paths ignored")
        return "; ".join(parts)


@dataclass
class DecodeReport:
    """What decode_all did: bad files dropped, colour conversions, cache use."""

    n_total: int
    n_good: int
    skipped: list[tuple[str, str]]
    converted: dict[str, int]
    from_cache: bool
    cache_path: str | None
    cache_rebuilt: str | None  # why an existing cache file was not trusted
    seconds: float

    def to_dict(self) -> dict:
        """JSON-able copy."""
        out = asdict(self)
        out["skipped"] = [list(item) for item in self.skipped]
        return out


# ---------------------------------------------------------------------------------------------------------------------
# index


def _read_metadata(metadata_csv: str | Path) -> tuple[pd.DataFrame, str]:
    """The clinical table as strings, and the name of its key column."""
    path = Path(metadata_csv)
    if not path.is_file():
        raise DataError(f"metadata CSV {str(path)!r} does not exist or is not a file (expected a GDC clinical CSV)")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"metadata CSV {str(path)!r} is unreadable: {type(exc).__name__}: {exc}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    key = next((c for c in KEY_COLUMNS if c in table.columns), None)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if key is None:
        missing.insert(0, " or ".join(KEY_COLUMNS))
    if missing:
        raise DataError(
            f"metadata CSV {str(path)!r} lacks required columns {missing}; columns found: {list(table.columns)}"
        )
    return table, key


def _metadata_lookup(table: pd.DataFrame, key: str, csv_name: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """Clinical rows by slide barcode and by 12-character patient barcode; conflicting duplicates are errors."""
    columns = ["project_id", "gender", "race", "age_at_index"]
    has_tss = "tissue_source_site" in table.columns
    if has_tss:
        columns.append("tissue_source_site")
    by_slide: dict[str, dict] = {}
    by_patient: dict[str, dict] = {}
    for row_number, record in enumerate(table[[key, *columns]].to_dict("records"), start=2):  # 1 = header line
        barcode = str(record.pop(key)).strip()
        try:
            patient = patient_from_barcode(barcode)
        except DataError as exc:
            raise DataError(f"metadata CSV {csv_name!r} line {row_number}, column {key!r}: {exc}") from None
        values = {c: clean_value(v) for c, v in record.items()}
        values["_line"] = row_number
        target = by_patient if (barcode == patient or key == "case_submitter_id") else by_slide
        ident = patient if target is by_patient else barcode
        previous = target.get(ident)
        if previous is not None:
            differing = [c for c in columns if previous[c] != values[c]]
            if differing:
                c = differing[0]
                raise DataError(
                    f"metadata CSV {csv_name!r}: {ident} appears on lines {previous['_line']} and {row_number} with "
                    f"different {c!r} ({previous[c]!r} vs {values[c]!r}); expected one consistent row per key"
                )
            continue
        target[ident] = values
    return by_slide, by_patient


def _scan_folders(root: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """Cancer-type folders under root by project code, and names of folders that are no known project."""
    found: dict[str, list[Path]] = {}
    unknown: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        code = _folder_code(entry.name)
        if code is None:
            unknown.append(entry.name)
        else:
            found.setdefault(code, []).append(Path(entry.path))
    return found, unknown


def _slide_parent(folder: Path, level: str | None, root: Path) -> Path:
    """The folder holding the slide folders of one cancer type (the folder itself, or its resolution level)."""
    subdirs = [e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
    levels = sorted(name for name in subdirs if name.isdigit())
    if not levels:
        if level is not None:
            raise DataError(
                f"level={level!r} was asked for, but {str(folder)!r} holds slide folders directly (no "
                "resolution-level subfolders such as '0'); pass level=None"
            )
        return folder
    others = sorted(set(subdirs) - set(levels))
    if others:
        raise DataError(
            f"{str(folder)!r} mixes resolution-level folders {levels} with other folders {others[:5]}: expected "
            "either <type>/<slide>/*.jpg or <type>/<level>/<slide>/*.jpg"
        )
    if level is None:
        if len(levels) > 1:
            raise DataError(
                f"{str(folder.relative_to(root))!r} holds several resolution levels {levels}; pass level= one of them "
                "(TCGA-UT's Zenodo archives: '0' is 0.5 um/px)"
            )
        level = levels[0]
    if level not in levels:
        raise DataError(f"level {level!r} not found in {str(folder)!r}; levels there: {levels}")
    return folder / level


def _ignore(report: LoadReport, path: str, reason: str) -> None:
    report.n_ignored += 1
    if len(report.ignored) < _MAX_LISTED:
        report.ignored.append((path, reason))


def _list_images(slide_parent: Path, report: LoadReport) -> list[tuple[str, str]]:
    """(slide folder name, image path) pairs under one cancer type's slide folders, sorted; other paths reported."""
    pairs: list[tuple[str, str]] = []
    for slide in sorted(os.scandir(slide_parent), key=lambda e: e.name):
        if not slide.is_dir():
            _ignore(report, slide.path, "a file where slide folders are expected")
            continue
        if slide.name.startswith("."):
            continue
        files = sorted(os.scandir(slide.path), key=lambda e: e.name)
        images: list[str] = []
        for f in files:
            if f.is_file() and os.path.splitext(f.name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(f.path)
            elif not f.name.startswith("."):
                _ignore(report, f.path, "not an image file (extension) or a nested folder")
        if not images:
            _ignore(report, slide.path, "slide folder without image files")
        pairs.extend((slide.name, p) for p in images)
    return pairs


def load_index(
    root: str | Path,
    metadata_csv: str | Path,
    cancer_types: Sequence[str] | None = None,
    *,
    level: str | None = None,
) -> tuple[pd.DataFrame, LoadReport]:
    """One row per TCGA-UT image (METADATA_COLUMNS plus "path"), joined with the clinical CSV; no pixels are read.

    ``cancer_types`` (codes such as "LUAD", "TCGA-LUAD" or folder names) selects and orders the classes: label i is
    ``cancer_types[i]``; without it, every known project folder under root is loaded, labelled in sorted code order.
    ``level`` picks the resolution folder when the cancer-type folders have them (Zenodo layout, "0" = 0.5 um/px).
    Images of slides without a metadata row are dropped and counted in the report.
    """
    # 1. check the inputs
    root = Path(root)
    if not root.exists():
        raise DataError(f"TCGA-UT root {str(root)!r} does not exist (expected <root>/<CancerType>/<slide>/*.jpg)")
    if not root.is_dir():
        raise DataError(f"TCGA-UT root {str(root)!r} is not a folder (expected <root>/<CancerType>/<slide>/*.jpg)")
    table, key = _read_metadata(metadata_csv)
    report = LoadReport()

    # 2. find the cancer-type folders and settle the class order
    found, report.unknown_folders = _scan_folders(root)
    for code, paths in found.items():
        if len(paths) > 1:
            raise DataError(
                f"cancer type {code} has several folders under {str(root)!r}: {[p.name for p in paths]}; keep one"
            )
    if cancer_types is None:
        codes = sorted(found)
        if not codes:
            raise DataError(
                f"no TCGA-UT cancer-type folders under {str(root)!r} (found {report.unknown_folders}); expected "
                f"folders named like {TCGA_PROJECTS['LUAD']!r} or 'LUAD'"
            )
    else:
        if isinstance(cancer_types, str):
            raise DataError(f"cancer_types must be a sequence of names, got the string {cancer_types!r}")
        codes = [_resolve_cancer_type(name) for name in cancer_types]
        duplicated = sorted({c for c in codes if codes.count(c) > 1})
        if duplicated:
            raise DataError(f"cancer_types {list(cancer_types)} names {duplicated} more than once")
        if not codes:
            raise DataError("cancer_types is empty: name at least one TCGA project, e.g. ['LUAD', 'LUSC']")

    # 3. list image files per cancer type (directory listings only)
    rows: list[dict] = []
    for label, code in enumerate(codes):
        if code not in found:
            raise DataError(
                f"no images of {code} under {str(root)!r}: looked for a folder named {TCGA_PROJECTS[code]!r} (or "
                f"{code!r} / 'TCGA-{code}', any case); folders there: {sorted(e.name for e in os.scandir(root))}"
            )
        parent = _slide_parent(found[code][0], level, root)
        report.folders[code] = str(parent.relative_to(root))
        pairs = _list_images(parent, report)
        if not pairs:
            raise DataError(f"no images of {code} in {str(parent)!r}: expected <slide folder>/*.jpg inside")
        rows.extend({"label": label, "cancer_type": code, "folder": slide, "path": path} for slide, path in pairs)

    # 4. join the clinical table by slide barcode, else by patient barcode
    by_slide, by_patient = _metadata_lookup(table, key, str(metadata_csv))
    used_slides: set[str] = set()
    used_patients: set[str] = set()
    missing_slides: dict[str, int] = {}
    slide_meta: dict[tuple[str, str], dict | None] = {}
    out: list[dict] = []
    for row in rows:
        folder, code = row["folder"], row["cancer_type"]
        if (code, folder) not in slide_meta:
            slide_meta[code, folder] = _slide_metadata(
                folder, code, by_slide, by_patient, used_slides, used_patients, report
            )
        meta = slide_meta[code, folder]
        if meta is None:
            missing_slides[folder] = missing_slides.get(folder, 0) + 1
            continue
        out.append({**meta, "label": row["label"], "cancer_type": code, "path": row["path"]})
    report.images_without_metadata = sum(missing_slides.values())
    report.n_slides_without_metadata = len(missing_slides)
    report.slides_without_metadata = list(missing_slides)[:_MAX_LISTED]
    projects = {f"TCGA-{c}" for c in codes}
    report.metadata_without_images = sum(
        1 for s, v in by_slide.items() if s not in used_slides and v["project_id"] in projects
    ) + sum(1 for p, v in by_patient.items() if p not in used_patients and v["project_id"] in projects)

    # 5. assemble the frame; every requested class must keep images
    index = pd.DataFrame(out, columns=[*METADATA_COLUMNS, "path"])
    for code in codes:
        if not (index["cancer_type"] == code).any():
            raise DataError(
                f"no images of {code} have metadata: none of the slides in {report.folders[code]!r} is in "
                f"{str(metadata_csv)!r} (by slide_submitter_id or patient barcode); first slides without metadata: "
                f"{report.slides_without_metadata[:5]}"
            )
    index = index.astype({"label": "int64", "age_at_index": "float64", "is_synthetic": "bool"})
    report.count(index, codes)
    log.info("%s", report.summary())
    return index, report


def _slide_metadata(
    folder: str,
    code: str,
    by_slide: dict[str, dict],
    by_patient: dict[str, dict],
    used_slides: set[str],
    used_patients: set[str],
    report: LoadReport,
) -> dict | None:
    """Metadata columns of one slide folder, or None when the CSV has no row for it."""
    slide_id = _slide_id_from_folder(folder)
    try:
        patient = patient_from_barcode(slide_id)
    except DataError as exc:
        raise DataError(f"slide folder {folder!r} ({TCGA_PROJECTS[code]}): {exc}") from None
    site = parse_tissue_source_site(slide_id)
    meta = by_slide.get(slide_id)
    if meta is not None:
        used_slides.add(slide_id)
    else:
        meta = by_patient.get(patient)
        if meta is None:
            return None
        used_patients.add(patient)
        report.matched_by_patient += 1
    project = f"TCGA-{code}"
    if meta["project_id"] not in (UNKNOWN, project):
        raise DataError(
            f"slide {slide_id} is in the {code} folder but its metadata (CSV line {meta['_line']}) says project_id "
            f"{meta['project_id']!r}; expected {project!r}"
        )
    csv_site = meta.get("tissue_source_site", UNKNOWN)
    if csv_site == UNKNOWN:
        report.tss_from_barcode += 1
    elif csv_site != site:
        raise DataError(
            f"slide {slide_id}: tissue_source_site {csv_site!r} on CSV line {meta['_line']} contradicts the barcode's "
            f"site {site!r}"
        )
    age_text = meta["age_at_index"]
    try:
        age = float("nan") if age_text == UNKNOWN else float(age_text)
    except ValueError:
        raise DataError(
            f"slide {slide_id}: age_at_index {age_text!r} on CSV line {meta['_line']} is not a number of years"
        ) from None
    return {
        "project_id": project,
        "tissue_source_site": site,
        "race": meta["race"],
        "gender": meta["gender"],
        "age_at_index": age,
        "patient_id": patient,
        "slide_id": slide_id,
        "is_synthetic": False,
        "source": SOURCE,
    }


# ---------------------------------------------------------------------------------------------------------------------
# pixels


def _to_rgb(im: Image.Image, path: str) -> tuple[Image.Image, str | None]:
    """The image in RGB, and the conversion done ("RGBA->RGB") or None."""
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        if im.mode == "RGB":
            return im, "P->RGB"
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), f"{mode}->RGB"
    if mode in ("L", "1", "CMYK", "YCbCr"):
        return im.convert("RGB"), f"{mode}->RGB"
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"{path}: {mode} pixel values span {values.min()}..{values.max()}, outside the 16-bit range 0..65535"
            )
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # 0..65535 -> 0..255, rounded
        return Image.fromarray(gray, "L").convert("RGB"), f"{mode}->RGB"
    raise DataError(f"{path}: unsupported image mode {mode!r} (expected RGB, RGBA, L, LA, P, CMYK or 16-bit gray)")


def decode_image(path: str, size: int) -> tuple[np.ndarray, str | None]:
    """One patch as uint8 ``size x size x 3`` and the colour conversion it needed (or None); DataError if bad."""
    with _strict_pil():
        return _decode_image(path, size)


_PIL_LOCK = threading.Lock()
_PIL_STATE = {"depth": 0, "saved": False}


@contextmanager
def _strict_pil() -> Iterator[None]:
    """Truncated JPEGs must fail to decode even if another library (weasyprint does, on import) set PIL's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES``; the setting is forced off while any decode runs and restored afterwards."""
    with _PIL_LOCK:
        if _PIL_STATE["depth"] == 0:
            _PIL_STATE["saved"] = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _PIL_STATE["depth"] += 1
    try:
        yield
    finally:
        with _PIL_LOCK:
            _PIL_STATE["depth"] -= 1
            if _PIL_STATE["depth"] == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _PIL_STATE["saved"]


def _decode_image(path: str, size: int) -> tuple[np.ndarray, str | None]:
    # 1. read the whole file and decode every pixel
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: zero-byte file")
        with Image.open(path) as im:
            im.load()
            rgb, conversion = _to_rgb(im, path)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (it was listed when the index was built)") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unsupported format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None
    # 3. square patches only, then resample to the target size
    width, height = rgb.size
    if width != height:
        raise DataError(f"{path}: patch is {width}x{height}; expected a square patch")
    if width != size:
        resample = Image.Resampling.LANCZOS if width > size else Image.Resampling.BICUBIC
        rgb = rgb.resize((size, size), resample=resample)
    return np.asarray(rgb, dtype=np.uint8), conversion


class PathImages:
    """TCGA-UT patches read lazily from their files, resized to ``size``; implements benchmark.data.ImageSource.

    ``on_error`` governs decode_all: "fail" raises DataError at the first bad file, "skip" drops and lists bad files.
    Indexing a bad file directly always raises DataError naming it.
    """

    def __init__(self, paths: Sequence[str], size: int, on_error: str = "fail") -> None:
        if isinstance(paths, (str, Path)):
            raise DataError(f"paths must be a sequence of file paths, got the single path {str(paths)!r}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise DataError(f"size must be a positive int (pixels per side), got {size!r}")
        if on_error not in ON_ERROR:
            raise DataError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.paths: list[str] = [str(p) for p in paths]
        self.size = int(size)
        self.on_error = on_error
        self.converted: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size, self.size, 3)

    def __repr__(self) -> str:
        return f"PathImages(n={len(self)}, size={self.size}, on_error={self.on_error!r})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _positions(self, index: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        n = len(self.paths)
        if isinstance(index, slice):
            return np.arange(n)[index]
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {n} images")
            return np.flatnonzero(idx)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"index must be an int, slice, bool mask or 1-d int array, got {index!r}")
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f"index out of range for {n} images: {idx[(idx < -n) | (idx >= n)][:5].tolist()}")
        return np.where(idx < 0, idx + n, idx)

    def decode(self, i: int) -> np.ndarray:
        """Image i as uint8 ``size x size x 3`` (conversions counted in ``self.converted``)."""
        pixels, conversion = decode_image(self.paths[i], self.size)
        if conversion is not None:
            with self._lock:
                self.converted[conversion] = self.converted.get(conversion, 0) + 1
        return pixels

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            n = len(self.paths)
            if not -n <= index < n:
                raise IndexError(f"image index {index} out of range for {n} images")
            return self.decode(int(index) % n)
        positions = self._positions(index)
        out = np.empty((len(positions), self.size, self.size, 3), dtype=np.uint8)
        for k, i in enumerate(positions):
            out[k] = self.decode(int(i))
        return out

    def take(self, indices: np.ndarray) -> PathImages:
        """The images at the given positions (or bool mask), still lazy."""
        positions = self._positions(indices)
        return PathImages([self.paths[i] for i in positions], self.size, self.on_error)

    def fingerprint(self) -> str:
        """Hash of the paths, their sizes and mtimes, the target size and the decoder version."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"tcga-ut-decoder-v{DECODER_VERSION}|size={self.size}|n={len(self.paths)}".encode())
        for path in self.paths:
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except FileNotFoundError:
                stamp = "missing"
            h.update(f"\0{path}\0{stamp}".encode())
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# decode once, cached


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"tcga_ut_{key}.npz"


def _load_cache(path: Path, key: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pixels, good mask and details from a cache file; ValueError if anything is off."""
    try:
        with np.load(path, allow_pickle=False) as data:
            details = json.loads(bytes(data["details"]).decode())
            mask = data["good"]
            pixels = data["images"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    if details.get("key") != key:
        raise ValueError(f"made for key {details.get('key')!r}")
    if mask.dtype != bool or mask.shape != (n,):
        raise ValueError(f"mask {mask.dtype} {mask.shape}, expected bool ({n},)")
    expected = (int(mask.sum()), size, size, 3)
    if pixels.dtype != np.uint8 or pixels.shape != expected:
        raise ValueError(f"images {pixels.dtype} {pixels.shape}, expected uint8 {expected}")
    if len(details.get("skipped", [])) != n - expected[0]:
        raise ValueError("skipped list does not match the mask")
    return pixels, mask, details


def _write_cache(path: Path, key: str, pixels: np.ndarray, mask: np.ndarray, details: dict) -> None:
    """Write to a temporary file in the same folder, then rename: a partial write never has the final name."""
    blob = np.frombuffer(json.dumps({**details, "key": key}).encode(), dtype=np.uint8)
    with atomic_file(path) as f:
        np.savez(f, images=pixels, good=mask, details=blob)


def decode_all(
    images: PathImages, cache_dir: str | Path | None, workers: int = 2, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, DecodeReport]:
    """Every image decoded once: (uint8 pixels of the good images, bool mask of good indices, DecodeReport).

    Under on_error="fail" the first bad file raises DataError; under "skip" bad files are dropped and listed. Results
    are cached in ``cache_dir`` under ``images.fingerprint()``; a damaged cache file is rebuilt, never trusted.
    """
    if not isinstance(images, PathImages):
        raise DataError(f"decode_all needs a PathImages, got {type(images).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"workers must be a positive int, got {workers!r}")
    start = time.perf_counter()
    n, size = len(images), images.size
    key = images.fingerprint()
    cache_path = _cache_file(Path(cache_dir), key) if cache_dir is not None else None
    rebuilt: str | None = None

    # 1. a complete, consistent cache file wins
    if cache_path is not None and cache_path.exists():
        try:
            pixels, mask, details = _load_cache(cache_path, key, n, size)
        except ValueError as exc:
            rebuilt = f"{cache_path.name}: {exc}"
            log.warning("TCGA-UT decode cache %s is damaged (%s); decoding again", cache_path, exc)
        else:
            skipped = [tuple(item) for item in details["skipped"]]
            if skipped and images.on_error == "fail":
                _, reason = skipped[0]
                raise DataError(f"{reason} (found earlier, recorded in {cache_path}; {len(skipped)} bad files in all)")
            images.converted = dict(details["converted"])
            seconds = time.perf_counter() - start
            report = DecodeReport(
                n, int(mask.sum()), skipped, dict(images.converted), True, str(cache_path), None, seconds
            )
            return pixels, mask, report

    # 2. decode in a thread pool (PIL releases the GIL while decoding), in index order
    from tqdm.auto import tqdm

    images.converted = {}
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    mask = np.ones(n, dtype=bool)
    skipped: list[tuple[str, str]] = []

    def work(i: int) -> tuple[int, str | None]:
        try:
            out[i] = images.decode(i)
            return i, None
        except DataError as exc:
            if images.on_error == "fail":
                raise
            return i, str(exc)

    bar = tqdm(total=n, unit="patch", desc=f"decoding {n} TCGA-UT patches", disable=not progress)
    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        for i, error in executor.map(work, range(n)):
            if error is not None:
                mask[i] = False
                skipped.append((images.paths[i], error))
            bar.update(1)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
    pixels = out if mask.all() else out[mask]

    # 3. cache, then report
    details = {"skipped": [list(s) for s in skipped], "converted": dict(images.converted), "n": n, "size": size}
    if cache_path is not None:
        _write_cache(cache_path, key, pixels, mask, details)
    if skipped:
        log.warning("TCGA-UT: skipped %d unreadable files, e.g. %s", len(skipped), skipped[0][1])
    seconds = time.perf_counter() - start
    report = DecodeReport(
        n,
        int(mask.sum()),
        skipped,
        dict(images.converted),
        False,
        str(cache_path) if cache_path else None,
        rebuilt,
        seconds,
    )
    return pixels, mask, report


__all__ = [
    "TCGA_PROJECTS",
    "DataError",
    "DecodeReport",
    "LoadReport",
    "PathImages",
    "clean_value",
    "decode_all",
    "decode_image",
    "load_index",
    "parse_tissue_source_site",
    "patient_from_barcode",
]
