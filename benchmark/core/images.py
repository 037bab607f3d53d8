"""Image helpers below the methods and the reports: mosaics and labelled grids of patches, and the samples.npz
files (what a method trained on) that sample grids are drawn from.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


SAMPLES_FILE = "samples.npz"


SAMPLES_PER_CELL = 8


class SamplesError(ValueError):
    """A samples.npz that cannot be read as one (images and metadata disagree, a column is missing)."""


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_style():
    """Plot settings: no mathtext or TeX (so data labels such as '$x$' are drawn literally), compact fonts."""
    plt = pyplot()
    return plt.rc_context({"text.parse_math": False, "text.usetex": False, "font.size": 9, "axes.titlesize": 10,
                           "figure.dpi": 110, "savefig.dpi": 110, "svg.fonttype": "none"})


def short_labels(labels: Sequence[str], width: int = 22) -> list[str]:
    """Tick labels cut to ``width`` characters (the tables show them in full), kept distinct."""
    out: list[str] = []
    for label in labels:
        text = str(label) if len(str(label)) <= width else str(label)[: width - 1] + "…"
        while text in out:
            text += "'"
        out.append(text)
    return out


def tight_layout(fig) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "tight layout not applied": the figure is still readable
        fig.tight_layout()


def png_bytes(fig, dpi: float | None = None, crop: bool = True) -> bytes:
    """The figure as PNG bytes (closed afterwards); ``crop``: the bounding box cut to what is drawn."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if crop else None, facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _tile(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def mosaic(cells: dict[tuple[int, int], np.ndarray], n_rows: int, n_cols: int, per_cell: int = 4,
           tile: int = 48, gap: int = 6) -> np.ndarray:
    """A uint8 canvas of n_rows x n_cols cells, each a square mosaic of up to ``per_cell`` images (grey if none)."""
    side = int(math.ceil(math.sqrt(per_cell)))
    cell = side * tile
    canvas = np.full((n_rows * (cell + gap) + gap, n_cols * (cell + gap) + gap, 3), 255, np.uint8)
    for r in range(n_rows):
        for c in range(n_cols):
            y0, x0 = gap + r * (cell + gap), gap + c * (cell + gap)
            canvas[y0 : y0 + cell, x0 : x0 + cell] = 225
            images = cells.get((r, c))
            for k, img in enumerate([] if images is None else images[:per_cell]):
                yy, xx = y0 + (k // side) * tile, x0 + (k % side) * tile
                canvas[yy : yy + tile, xx : xx + tile] = _tile(np.asarray(img, np.uint8), tile)
    return canvas


def grid_png(canvas: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
             col_title: str = "tissue source site") -> bytes:
    """The mosaic canvas with row and column labels."""
    plt = pyplot()
    h, w = canvas.shape[:2]
    n_rows, n_cols = max(1, len(row_labels)), max(1, len(col_labels))
    with plot_style():
        fig, ax = plt.subplots(figsize=(min(16, 1.6 + w / 70), min(22, 0.8 + h / 70)))
        ax.imshow(canvas, interpolation="nearest")
        ax.set_yticks([(i + 0.5) * h / n_rows for i in range(len(row_labels))], short_labels(row_labels, 34))
        ax.set_xticks([(i + 0.5) * w / n_cols for i in range(len(col_labels))], short_labels(col_labels))
        ax.tick_params(length=0)
        longest = max((len(s) for s in short_labels(col_labels)), default=0)
        ax.tick_params(axis="x", labelrotation=90 if longest > 12 else 0)
        ax.set_xlabel(col_title)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(title, loc="left")
        tight_layout(fig)
        return png_bytes(fig)


def save_samples(split: Any, path: Path, synthetic_only: bool, per_cell: int = SAMPLES_PER_CELL, seed: int = 0) -> int:
    """Write up to ``per_cell`` images per (class, site) of ``split`` and their metadata to ``path``; the count.

    ``synthetic_only``: only the rows a generative method added; otherwise every row, as the method returned them
    (real for none, stain-normalized for stain_norm).
    """
    from benchmark.core.cache import atomic_write_bytes
    from benchmark.core.data import METADATA_COLUMNS

    meta = split.metadata
    mask = meta["is_synthetic"].astype(bool).to_numpy() if synthetic_only else np.ones(len(meta), bool)
    rng = np.random.default_rng(seed)
    chosen = []
    for _, rows in meta[mask].groupby(["cancer_type", "tissue_source_site"], sort=True).indices.items():
        positions = np.flatnonzero(mask)[np.asarray(rows)]
        chosen.append(positions if len(positions) <= per_cell else rng.choice(positions, per_cell, replace=False))
    idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)
    size = split.images.shape[1:] if len(split) else (0, 0, 3)
    images = np.asarray(split.images[idx]) if len(idx) else np.zeros((0, *size), np.uint8)
    cols = [c for c in (*METADATA_COLUMNS, "group") if c in meta.columns]
    table = meta.iloc[idx][cols].reset_index(drop=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images.astype(np.uint8), metadata=np.array(table.to_json(orient="records")))
    atomic_write_bytes(path, buf.getvalue())
    return len(idx)


def load_samples(path: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """The images and metadata of a samples.npz."""
    with np.load(path, allow_pickle=False) as data:
        images = data["images"]
        meta = pd.read_json(io.StringIO(str(data["metadata"])), orient="records", dtype=False)
    if len(meta) != len(images):
        raise SamplesError(f"{path}: {len(images)} images but {len(meta)} metadata rows")
    for col in ("cancer_type", "tissue_source_site"):
        if len(meta) and col not in meta.columns:
            raise SamplesError(f"{path}: metadata lacks column {col!r}")
        if col in meta.columns:
            meta[col] = meta[col].astype(str)
    return images, meta


def sample_grid_png(images: np.ndarray, meta: pd.DataFrame, title: str, max_sites: int = 8,
                    classes: Sequence[str] | None = None) -> bytes:
    """One run's samples: rows are classes, columns sites (the most frequent ``max_sites``)."""
    classes = list(classes or sorted(meta["cancer_type"].astype(str).unique()))
    sites = list(meta["tissue_source_site"].astype(str).value_counts().index[:max_sites]) if len(meta) else []
    sites = sorted(sites)
    cells = {}
    for r, ct in enumerate(classes):
        for c, site in enumerate(sites):
            sel = (meta["cancer_type"].astype(str) == ct) & (meta["tissue_source_site"].astype(str) == site)
            sel = sel.to_numpy()
            if sel.any():
                cells[(r, c)] = images[sel]
    canvas = mosaic(cells, len(classes), max(1, len(sites)))
    return grid_png(canvas, classes, sites or ["(no samples)"], title)
