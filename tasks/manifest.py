"""The cohort loader: a manifest table (one row per image) -> a checked index -> decoded patches, for every source.

A manifest has one row per image::

    path                 the image file: absolute, or relative to the manifest's folder
    label                its class (one of the task's classes)
    tissue_source_site   the hospital (site) it came from
    patient_id           optional; without it every image is its own patient (a warning says so)
    slide_id             optional (default: the patient)
    race, gender         optional (default "Unknown"); "", "--", "not reported", "NA", ... read as "Unknown"
    age_at_index         optional, years (default NaN)
    project_id           optional (default: the label)
    any other column     kept as metadata: a held-out key (split.heldout_keys), a group column, a condition

Two sources produce one: a CSV file (:func:`read_manifest`; ``--set data.manifest=FILE`` or a task file's
``manifest``) and the TCGA-UT folder layout with its GDC clinical table (tasks/tcga_ut.py). Both go the same way::

    table, report = read_manifest("cohort.csv")                 # or tcga_ut.load_index(root, clinical_csv, classes)
    index = build_index(table, classes, where="cohort.csv")     # the schema: METADATA_COLUMNS + path + the others
    split = load_split(index, report, classes, data_config, cache_dir, ...)  # pixels: decoded once, cached

Bad input is one DataError naming the file, line, column or value (missing column, unknown label, empty manifest,
duplicate path, missing or unreadable image, ...).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.core.data import METADATA_COLUMNS, UNKNOWN, Split
from tasks.patches import ON_ERROR, DataError, DecodeReport, PathImages, decode_all

log = logging.getLogger(__name__)

SOURCE = "manifest"
#: Columns every manifest has.
REQUIRED: tuple[str, ...] = ("path", "label", "tissue_source_site")
#: Columns a manifest may have, with their meaning fixed by the schema (benchmark.core.data.METADATA_COLUMNS).
OPTIONAL: tuple[str, ...] = ("patient_id", "slide_id", "race", "gender", "age_at_index", "project_id")
#: Columns the loader sets itself: a manifest may not have them.
RESERVED: dict[str, str] = {
    "cancer_type": "the class name, taken from label",
    "is_synthetic": "False for every real image",
    "source": "where a patch came from",
    "group": "the task's groups, made from its group columns",
}
_MAX_SHOWN = 5

# Spellings of "no value" (compared case-insensitively after stripping whitespace): GDC's and the usual ones.
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


def clean_value(value: object) -> str:
    """A value as a stripped string, or UNKNOWN for GDC placeholders ("--", "'--", "not reported", NaN, ...)."""
    if value is None or value is pd.NA:
        return UNKNOWN
    if isinstance(value, float) and math.isnan(value):
        return UNKNOWN
    text = str(value).strip()
    return UNKNOWN if text.casefold() in _PLACEHOLDERS else text


# ---------------------------------------------------------------------------------------------------------------------
# reports


@dataclass
class CohortReport:
    """What loading a cohort found, for the run record (subclassed per source)."""

    n_images: int = 0
    n_slides: int = 0
    n_patients: int = 0
    n_sites: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)  # class -> images kept
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) dropped by decode_all
    converted: dict[str, int] = field(default_factory=dict)  # e.g. {"RGBA->RGB": 3}
    decode_seconds: float = 0.0  # wall time of decode_all (decoding, or opening the cached pixels)
    decode_from_cache: bool = False  # the pixels came from a complete decode cache

    def count(self, index: pd.DataFrame, classes: Sequence[str]) -> None:
        """Set the image, slide, patient, site and per-class counts from an index."""
        self.n_images = len(index)
        self.n_slides = int(index["slide_id"].nunique())
        self.n_patients = int(index["patient_id"].nunique())
        self.n_sites = int(index["tissue_source_site"].nunique())
        self.class_counts = {c: int((index["cancer_type"] == c).sum()) for c in classes}

    def record_decode(self, decoded: DecodeReport, kept: pd.DataFrame | None = None) -> None:
        """Add decode_all's findings (skipped files, conversions); recount from ``kept``, the index rows left."""
        self.skipped = list(decoded.skipped)
        self.converted = dict(decoded.converted)
        self.decode_seconds = round(decoded.seconds, 3)
        self.decode_from_cache = decoded.from_cache
        if kept is not None:
            if len(kept) != decoded.n_good:
                raise DataError(f"kept index has {len(kept)} rows but decode_all kept {decoded.n_good} images")
            self.count(kept, list(self.class_counts))
        else:
            self.n_images = decoded.n_good

    def to_dict(self) -> dict:
        """JSON-able copy."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, list):
                out[key] = [list(item) if isinstance(item, tuple) else item for item in value]
        return out

    def summary(self) -> str:
        """One human-readable line."""
        classes = ", ".join(f"{k} {v}" for k, v in self.class_counts.items())
        return f"{self.n_images} images of {self.n_patients} patients, {self.n_sites} sites ({classes})"


@dataclass
class ManifestReport(CohortReport):
    """What reading a CSV manifest found."""

    manifest: str = ""
    columns: list[str] = field(default_factory=list)  # as written in the manifest's header
    extra_columns: list[str] = field(default_factory=list)  # beyond REQUIRED and OPTIONAL: kept as metadata
    patient_per_image: bool = False  # no patient_id column: every image is its own patient
    missing_files: int = 0  # listed images that do not exist (left to decode_all's policy under on_error=skip)

    def summary(self) -> str:
        parts = [f"{SOURCE} {self.manifest}: {super().summary()}"]
        if self.patient_per_image:
            parts.append("no patient_id: one patient per image")
        if self.skipped:
            parts.append(f"{len(self.skipped)} bad files skipped")
        if self.converted:
            parts.append("converted " + ", ".join(f"{k} {v}" for k, v in sorted(self.converted.items())))
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# the CSV file


def _header(path: Path, sep: str) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [c.strip() for c in next(csv.reader(f, delimiter=sep), [])]


def read_manifest(manifest: str | Path, on_error: str = "fail") -> tuple[pd.DataFrame, ManifestReport]:
    """The manifest's rows as strings, paths made absolute, with ``_line`` (the CSV line of each row) and a report.

    A missing image file is an error naming its line under ``on_error="fail"``; under ``"skip"`` it is counted and
    left to :func:`~tasks.patches.decode_all`, which drops and lists it with the unreadable ones.
    """
    # 1. the file and its header
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    path = Path(manifest)
    name = str(path)
    if not path.is_file():
        raise DataError(f"manifest {name!r} does not exist or is not a file (expected a CSV with columns "
                        f"{', '.join(REQUIRED)}, ...)")
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        header = _header(path, sep)
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(f"manifest {name!r} is empty: expected a header line with columns {', '.join(REQUIRED)} "
                        "and one line per image") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        detail = " ".join(str(exc).split())
        raise DataError(f"manifest {name!r} is unreadable: {type(exc).__name__}: {detail}") from None
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise DataError(f"manifest {name!r}: column {twice[0]!r} appears more than once in the header")
    table.columns = header
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DataError(f"manifest {name!r} lacks required column(s) {missing}; columns found: {header} (expected "
                        f"{', '.join(REQUIRED)}, optionally {', '.join(OPTIONAL)} and any others)")
    if table.empty:
        raise DataError(f"manifest {name!r} has a header but no rows: expected one line per image")
    table = table.reset_index(drop=True)
    table["_line"] = np.arange(2, len(table) + 2)  # line 1 is the header (a quoted line break would shift it)

    # 2. paths: relative to the manifest's folder, unique, existing
    folder = path.parent
    resolved = []
    for text, line in zip(table["path"], table["_line"], strict=True):
        text = text.strip()
        if not text:
            raise DataError(f"manifest {name!r} line {line}: empty path")
        resolved.append(os.path.normpath(text if os.path.isabs(text) else os.path.join(folder, text)))
    table["path"] = resolved
    duplicated = table[table["path"].duplicated(keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        lines = duplicated.loc[duplicated["path"] == first["path"], "_line"].tolist()
        raise DataError(f"manifest {name!r}: lines {lines[0]} and {lines[1]} name the same image {first['path']!r} "
                        f"({duplicated['path'].nunique()} path(s) listed more than once); expected one row per image")
    exists = np.array([os.path.isfile(p) for p in table["path"]], dtype=bool)
    report = ManifestReport(manifest=name, columns=header,
                            extra_columns=[c for c in header if c not in (*REQUIRED, *OPTIONAL)],
                            missing_files=int((~exists).sum()))
    if report.missing_files:
        first = table[~exists].iloc[0]
        where = f"manifest {name!r} line {first['_line']}: image file {first['path']!r} does not exist"
        if on_error == "fail":
            raise DataError(f"{where} ({report.missing_files} of {len(table)} listed images are missing; "
                            "data.on_error=skip runs without them)")
        log.warning("%s (%d missing images in all; data.on_error=skip: they are skipped)", where,
                    report.missing_files)
    return table, report


# ---------------------------------------------------------------------------------------------------------------------
# the index, whatever the source


def build_index(
    table: pd.DataFrame, classes: Sequence[str], *, where: str, who: str = "the task", source: str = SOURCE
) -> pd.DataFrame:
    """The cohort's index: METADATA_COLUMNS, ``path``, then the table's other columns; one row per image, in order.

    ``table`` is a manifest (columns REQUIRED, any of OPTIONAL, any others; ``_line`` names rows in messages);
    ``where`` names it and ``who`` the task in messages. Label ``i`` is ``classes[i]``; every label must be a class
    and every class must have rows.
    """
    # 1. columns
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise DataError(f"{where} lacks required column(s) {missing}; columns found: {list(table.columns)}")
    reserved = [c for c in RESERVED if c in table.columns]
    if reserved:
        raise DataError(f"{where}: column {reserved[0]!r} is set by the loader ({RESERVED[reserved[0]]}); rename it")
    if table.empty:
        raise DataError(f"{where} has no rows: expected one per image")
    lines = table["_line"].tolist() if "_line" in table.columns else None

    def row(i: int) -> str:
        return f"{where} line {lines[i]}" if lines is not None else f"{where}, image {table['path'].iloc[i]!r}"

    def text_column(column: str) -> pd.Series:
        values = table[column].astype(str).str.strip()
        empty = np.flatnonzero((values == "").to_numpy())
        if len(empty):
            raise DataError(f"{row(int(empty[0]))}: empty {column} ({len(empty)} row(s) without one)")
        return values

    # 2. labels: every class with rows, every label a class
    labels = text_column("label")
    absent = [c for c in classes if not (labels == c).any()]
    if absent:
        found = sorted(set(labels))
        raise DataError(f"{who}: class {absent[0]!r} has no images in {where} (labels there: "
                        f"{found[:3 * _MAX_SHOWN]}{' ...' if len(found) > 3 * _MAX_SHOWN else ''})")
    unknown = ~labels.isin(list(classes))
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        others = sorted(set(labels[unknown]))
        raise DataError(f"{row(i)}: unknown label {labels.iloc[i]!r}: not one of the classes of {who}, "
                        f"{list(classes)} (labels outside them: {others[:_MAX_SHOWN]}"
                        f"{' ...' if len(others) > _MAX_SHOWN else ''})")

    # 3. the schema's columns, with their defaults
    n = len(table)
    out = pd.DataFrame(index=range(n))
    out["label"] = labels.map({c: i for i, c in enumerate(classes)}).to_numpy()
    out["cancer_type"] = labels.to_numpy()
    out["project_id"] = (table["project_id"].map(clean_value) if "project_id" in table else labels).to_numpy()
    out["tissue_source_site"] = text_column("tissue_source_site").to_numpy()
    for column in ("race", "gender"):
        out[column] = table[column].map(clean_value).to_numpy() if column in table else UNKNOWN
    out["age_at_index"] = _ages(table, row) if "age_at_index" in table else np.nan
    if "patient_id" in table:
        out["patient_id"] = text_column("patient_id").to_numpy()
    else:
        out["patient_id"] = table["path"].to_numpy()
        log.warning("%s has no patient_id column: every image is treated as its own patient, so the splits and the "
                    "patient-level statistics (bootstrap intervals, patients per group) count patches as independent; "
                    "add a patient_id column if several images come from one patient", where)
    out["slide_id"] = text_column("slide_id").to_numpy() if "slide_id" in table else out["patient_id"]
    out["is_synthetic"] = False
    out["source"] = source
    out["path"] = table["path"].astype(str).to_numpy()
    extras = [c for c in table.columns if c not in (*REQUIRED, *OPTIONAL, "_line")]
    for column in extras:
        out[column] = table[column].map(clean_value).to_numpy()

    # 4. a patient is one person: one class, one site
    for column in ("cancer_type", "tissue_source_site"):
        values = out.groupby("patient_id", sort=False)[column].nunique()
        if (values > 1).any():
            patient = values.index[values.to_numpy() > 1][0]
            rows = np.flatnonzero((out["patient_id"] == patient).to_numpy())
            seen = out[column].iloc[rows]
            j = int(rows[int(np.flatnonzero((seen != seen.iloc[0]).to_numpy())[0])])
            name = "label" if column == "cancer_type" else column
            raise DataError(f"{row(j)}: patient {patient!r} has {name} {out[column].iloc[j]!r} here and "
                            f"{seen.iloc[0]!r} on {row(int(rows[0]))}; a patient has one {name}")
    return out[[*METADATA_COLUMNS, "path", *extras]].astype(
        {"label": "int64", "age_at_index": "float64", "is_synthetic": "bool"}
    )


def _ages(table: pd.DataFrame, row) -> np.ndarray:
    """age_at_index in years: numbers, placeholders as NaN; anything else is an error naming its row."""
    raw = table["age_at_index"]
    ages = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    unknown = raw.map(clean_value).to_numpy() == UNKNOWN
    bad = np.flatnonzero(np.isnan(ages) & ~unknown)
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{row(i)}: age_at_index {raw.iloc[i]!r} is not a number of years")
    return ages


def load_index(
    manifest: str | Path, classes: Sequence[str], *, on_error: str = "fail", who: str = "the task"
) -> tuple[pd.DataFrame, ManifestReport]:
    """A CSV manifest's index (see :func:`build_index`) and report; no pixels are read."""
    table, report = read_manifest(manifest, on_error)
    index = build_index(table, classes, where=f"manifest {str(manifest)!r}", who=who)
    report.patient_per_image = "patient_id" not in table.columns
    report.count(index, list(classes))
    log.info("%s", report.summary())
    return index, report


def require_columns(available: Sequence[str], wanted: Sequence[str], what: str, manifest: str) -> None:
    """Every column of ``wanted`` (``what`` says where it was asked for) is in the manifest, or is the class."""
    for column in wanted:
        if column not in available and column != "cancer_type":
            raise DataError(f"{what}: column {column!r} is not in manifest {manifest!r} (its columns: "
                            f"{list(available)})")


# ---------------------------------------------------------------------------------------------------------------------
# pixels


def load_split(
    index: pd.DataFrame,
    report: CohortReport,
    classes: Sequence[str],
    *,
    image_size: int,
    on_error: str,
    max_patches_per_slide: int,
    cache_dir: Path | None,
    in_memory: bool = False,
    progress: bool,
    source: str,
    where: str,
) -> Split:
    """Every image of ``index`` decoded once (cached in ``cache_dir``), bad files handled by ``on_error`` before
    any split is made; the Split carries METADATA_COLUMNS and the index's other columns (not ``path``). The pixels
    are a view of the mapped cache file, or with ``in_memory`` an array read whole into this process's memory."""
    # 1. optional subsampling, deterministic
    if max_patches_per_slide > 0:
        rng = np.random.default_rng(0)
        order = rng.permutation(len(index))
        keep = index.iloc[order].groupby("slide_id", sort=False).head(max_patches_per_slide).index
        index = index.loc[sorted(keep)].reset_index(drop=True)
    # 2. decode; bad files are found (and, under on_error=skip, dropped) here
    images = PathImages(index["path"].tolist(), image_size, on_error=on_error)
    array, good, decoded = decode_all(images, cache_dir, progress=progress)
    if in_memory:
        array = np.asarray(array)  # ArrayImages reads every row into one in-memory array
    index = index[np.asarray(good)].reset_index(drop=True)
    report.record_decode(decoded, index)
    if decoded.skipped:
        log.warning(
            "skipped %d unreadable image(s) under %s (data.on_error=skip), e.g. %s: %s",
            len(decoded.skipped), where, *decoded.skipped[0],
        )
    log.info("%s", report.summary())
    # 3. every class keeps images
    for name in classes:
        if not (index["cancer_type"] == name).any():
            raise DataError(f"class {name!r} has no readable images under {where}")
    info = {"data_source": source, "load_report": report.to_dict(), "n_skipped_files": len(decoded.skipped)}
    columns = [*METADATA_COLUMNS, *(c for c in index.columns if c not in METADATA_COLUMNS and c != "path")]
    return Split(array, index[columns], "all", info)


__all__ = [
    "OPTIONAL",
    "REQUIRED",
    "CohortReport",
    "DataError",
    "ManifestReport",
    "build_index",
    "clean_value",
    "load_index",
    "load_split",
    "read_manifest",
    "require_columns",
]
