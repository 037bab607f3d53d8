"""TCGA-UT loader: the real TCGA uniform-tumour patch data set (Komura & Ishikawa, Zenodo record 5889558).

On disk, one folder per cancer type, one folder per slide, 256x256 JPEG patches inside::

    <root>/<CancerTypeFolder>/<slide_submitter_id>/*.jpg           (flat layout)
    <root>/<CancerTypeFolder>/<level>/<slide_submitter_id>/*.jpg   (Zenodo archives: level "0" = 0.5 um/px)

``CancerTypeFolder`` is TCGA-UT's folder name (``TCGA_PROJECTS``, e.g. ``Lung_adenocarcinoma``) or the project code
(``LUAD`` / ``TCGA-LUAD``), matched case-insensitively. Clinical metadata comes from a GDC clinical CSV (or TSV)
keyed by ``slide_submitter_id`` (or by the 12-character patient barcode).

This module only turns that layout into a manifest (tasks/manifest.py: one row per image with its path, class, site,
patient, slide, race, gender and age); the index, the decoding, its cache and the bad-file policy are the manifest
loader's, the same for every cohort. Typical use by a task::

    index, report = load_index(root, csv, ["LUAD", "LUSC"])            # fast: no pixels read
    images = PathImages(index["path"], size=64, on_error="skip")
    pixels, good, decoded = decode_all(images, cache_dir)               # bad files found before any split
    index = index[good].reset_index(drop=True)
    report.record_decode(decoded, index)

(``tasks.manifest.load_split`` does the last four lines for a task.)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.core.data import UNKNOWN
from tasks.manifest import CohortReport, build_index, clean_value
from tasks.patches import DECODER_VERSION, ON_ERROR, DataError, DecodeReport, PathImages, decode_all, decode_image

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
#: The manifest columns the layout yields (tasks/manifest.py), besides "path".
MANIFEST_COLUMNS: tuple[str, ...] = (
    "label", "project_id", "tissue_source_site", "race", "gender", "age_at_index", "patient_id", "slide_id"
)
_BARCODE = re.compile(r"^TCGA-([0-9A-Z]{2})-([0-9A-Z]{4})(?:$|-)")
_MAX_LISTED = 20


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
class LoadReport(CohortReport):
    """What loading TCGA-UT found, for the run record (the counts of CohortReport, and the layout's findings)."""

    folders: dict[str, str] = field(default_factory=dict)  # cancer type -> folder read, relative to root
    images_without_metadata: int = 0
    slides_without_metadata: list[str] = field(default_factory=list)  # first 20
    n_slides_without_metadata: int = 0
    metadata_without_images: int = 0  # CSV keys of the loaded projects with no image folder
    matched_by_patient: int = 0  # slides whose CSV row was keyed by the 12-character patient barcode
    tss_from_barcode: int = 0  # slides whose site came from the barcode (CSV column absent or a placeholder)
    unknown_folders: list[str] = field(default_factory=list)  # folders under root that are no TCGA project
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), first 20
    n_ignored: int = 0

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
    Images of slides without a metadata row are dropped and counted in the report. The index is the manifest loader's
    (tasks.manifest.build_index) of :func:`manifest_table`'s manifest.
    """
    table, codes, report = manifest_table(root, metadata_csv, cancer_types, level=level)
    index = build_index(table, codes, where=f"TCGA-UT root {str(root)!r}", source=SOURCE)
    report.count(index, codes)
    log.info("%s", report.summary())
    return index, report


def manifest_table(
    root: str | Path,
    metadata_csv: str | Path,
    cancer_types: Sequence[str] | None = None,
    *,
    level: str | None = None,
) -> tuple[pd.DataFrame, list[str], LoadReport]:
    """The TCGA-UT layout as a manifest (tasks/manifest.py: path, label = project code, tissue_source_site,
    patient_id, slide_id, race, gender, age_at_index, project_id), the class codes in label order, and the report."""
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
    for code in codes:
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
        rows.extend({"code": code, "folder": slide, "path": path} for slide, path in pairs)

    # 4. join the clinical table by slide barcode, else by patient barcode
    by_slide, by_patient = _metadata_lookup(table, key, str(metadata_csv))
    used_slides: set[str] = set()
    used_patients: set[str] = set()
    missing_slides: dict[str, int] = {}
    slide_meta: dict[tuple[str, str], dict | None] = {}
    out: list[dict] = []
    for row in rows:
        folder, code = row["folder"], row["code"]
        if (code, folder) not in slide_meta:
            slide_meta[code, folder] = _slide_metadata(
                folder, code, by_slide, by_patient, used_slides, used_patients, report
            )
        meta = slide_meta[code, folder]
        if meta is None:
            missing_slides[folder] = missing_slides.get(folder, 0) + 1
            continue
        out.append({**meta, "label": code, "path": row["path"]})
    report.images_without_metadata = sum(missing_slides.values())
    report.n_slides_without_metadata = len(missing_slides)
    report.slides_without_metadata = list(missing_slides)[:_MAX_LISTED]
    projects = {f"TCGA-{c}" for c in codes}
    report.metadata_without_images = sum(
        1 for s, v in by_slide.items() if s not in used_slides and v["project_id"] in projects
    ) + sum(1 for p, v in by_patient.items() if p not in used_patients and v["project_id"] in projects)

    # 5. the manifest; every requested class must keep images
    table = pd.DataFrame(out, columns=[*MANIFEST_COLUMNS, "path"])
    for code in codes:
        if not (table["label"] == code).any():
            raise DataError(
                f"no images of {code} have metadata: none of the slides in {report.folders[code]!r} is in "
                f"{str(metadata_csv)!r} (by slide_submitter_id or patient barcode); first slides without metadata: "
                f"{report.slides_without_metadata[:5]}"
            )
    return table, codes, report


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
    }


__all__ = [
    "DECODER_VERSION",
    "ON_ERROR",
    "TCGA_PROJECTS",
    "DataError",
    "DecodeReport",
    "LoadReport",
    "PathImages",
    "clean_value",
    "decode_all",
    "decode_image",
    "load_index",
    "manifest_table",
    "parse_tissue_source_site",
    "patient_from_barcode",
]
