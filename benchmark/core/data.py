"""The Split schema shared by every task and method, and helpers to subset, join and read its images.

A Split holds N patches: ``images`` (a uint8 ``N x H x W x 3`` array, or a lazy ``ImageSource``: the rows of a
memory-mapped decode cache (``ArrayImages``), or files read on demand) and ``metadata`` (one row per patch, columns
below). Methods return Splits; the runner never looks inside a method, only at Splits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

#: Columns every Split's metadata carries (unknown values are the string "Unknown", or NaN for age).
METADATA_COLUMNS: tuple[str, ...] = (
    "label",  # int, index into Task.classes
    "cancer_type",  # str, e.g. "LUAD"
    "project_id",  # str, e.g. "TCGA-LUAD"
    "tissue_source_site",  # str, 2-character TCGA site code, e.g. "05"
    "race",  # str, GDC vocabulary ("white", "black or african american", "asian", ... "Unknown")
    "gender",  # str, "female" / "male" / "Unknown"
    "age_at_index",  # float years, NaN when unknown
    "patient_id",  # str, TCGA-XX-YYYY
    "slide_id",  # str, TCGA slide barcode
    "is_synthetic",  # bool, True for patches a method generated
    "source",  # str, where the patch came from: "embedded", "tcga-ut", "manifest", or a method name
)
UNKNOWN = "Unknown"


@runtime_checkable
class ImageSource(Protocol):
    """A lazily read stack of RGB patches (e.g. JPEG files), indexable like a uint8 ``N x H x W x 3`` array."""

    def __len__(self) -> int: ...

    @property
    def shape(self) -> tuple[int, int, int, int]: ...

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> np.ndarray: ...

    def take(self, indices: np.ndarray) -> ImageSource: ...

    def fingerprint(self) -> str:
        """A short content hash (e.g. of paths, sizes and mtimes) that changes when the images change."""
        ...


Images = "np.ndarray | ImageSource"


def is_int(index: object) -> bool:
    return isinstance(index, (int, np.integer)) and not isinstance(index, bool)


def index_positions(index: int | slice | np.ndarray | Sequence[int], n: int) -> np.ndarray:
    """Positions in ``0..n-1`` of an int, slice, bool mask or int array (negative ints count from the end) into
    ``n`` images; IndexError naming what is wrong. Shared by the lazy image sources."""
    if is_int(index):
        if not -n <= index < n:
            raise IndexError(f"image index {index} out of range for {n} images")
        return np.array([index % n])
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


class ArrayImages:
    """Rows of a uint8 ``N x H x W x 3`` array, typically memory-mapped from a decode cache, selected by position
    without copying; implements ImageSource.

    ``take`` composes positions (a subset of a subset is still a view of the one file), indexing reads only the rows
    asked for (with ``preadv`` from a mapped file, so that reading the cohort does not make it resident), and
    pickling a view of a memory-mapped file sends its file name, not its pixels: a process that receives the split
    maps the same file, and the operating system shares its pages between processes.
    ``token`` names the base array's content (a decode cache's key); without one the pixels are hashed once.
    """

    def __init__(self, base: np.ndarray, positions: np.ndarray | None = None, token: str | None = None) -> None:
        if base.dtype != np.uint8 or base.ndim != 4 or base.shape[-1] != 3:
            raise ValueError(f"images must be uint8 N x H x W x 3, got {base.dtype} {base.shape}")
        self.base = base
        self.positions = (np.arange(len(base), dtype=np.int64) if positions is None
                          else np.asarray(positions, dtype=np.int64))
        self._token = token
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def _file(self) -> tuple[int, int, int] | None:
        """(file descriptor, data offset, bytes per row) when the base is a C-ordered ``.npy`` map, else None."""
        base = self.base
        mapped = isinstance(base, np.memmap) and base.filename and base.flags.c_contiguous
        if not mapped or not hasattr(os, "preadv"):  # preadv: POSIX
            return None
        if self._fd is None:
            self._fd = os.open(base.filename, os.O_RDONLY)
        return self._fd, int(base.offset), int(np.prod(base.shape[1:]))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The rows, read with ``preadv`` from a mapped file (the pages stay in the kernel's page cache, shared and
        evictable, instead of becoming this process's resident memory), else indexed from the array."""
        where = self._file()
        if where is None or len(rows) == 0:
            return np.asarray(self.base[rows])
        fd, offset, row_bytes = where
        out = np.empty((len(rows), *self.base.shape[1:]), dtype=np.uint8)
        flat = memoryview(out.reshape(-1))
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows: one read each
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            want = (b - a) * row_bytes
            got = os.preadv(fd, [flat[a * row_bytes : b * row_bytes]], offset + int(rows[a]) * row_bytes)
            if got != want:
                raise OSError(f"{self.base.filename}: read {got} of {want} bytes at row {int(rows[a])} (the file "
                              "was cut short?)")
        return out

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.positions), *self.base.shape[1:])

    def __repr__(self) -> str:
        where = getattr(self.base, "filename", None) or "memory"
        return f"ArrayImages(n={len(self)} of {len(self.base)}, {where})"

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        rows = self._read(self.positions[index_positions(index, len(self))])
        return rows[0] if is_int(index) else rows

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every selected image read into memory (what ``np.asarray(split.images)`` gets): the consumers that still
        need the whole split at once; batch-wise readers use indexing or ``Split.batches``."""
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def take(self, indices: np.ndarray) -> ArrayImages:
        """The images at the given positions (or bool mask): a view of the same base array."""
        return ArrayImages(self.base, self.positions[index_positions(indices, len(self))], self._token)

    def token(self) -> str:
        """The base array's content name (hashed from its pixels once when none was given)."""
        if self._token is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(str(self.base.shape).encode())
            for start in range(0, len(self.base), 4096):
                h.update(np.ascontiguousarray(self.base[start : start + 4096]).data)
            self._token = h.hexdigest()
        return self._token

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"array-images|{self.token()}|{self.base.shape}".encode())
        h.update(np.ascontiguousarray(self.positions).data)
        return h.hexdigest()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__, _fd=None)
        if isinstance(self.base, np.memmap) and self.base.filename:
            state["base"] = ("memmap", str(self.base.filename))
        return state

    def __setstate__(self, state: dict) -> None:
        base = state["base"]
        if isinstance(base, tuple) and base[0] == "memmap":
            state["base"] = np.load(base[1], mmap_mode="r")
        self.__dict__.update(state)


def hash_images(h, images: np.ndarray | ImageSource) -> None:
    """Feed an image stack's content into the hash ``h``: an array's shape and pixels, or a lazy source's own
    fingerprint (Split.fingerprint and ConcatImages.fingerprint)."""
    if isinstance(images, np.ndarray):
        h.update(str(images.shape).encode())
        h.update(np.ascontiguousarray(images).data)
    else:
        h.update(images.fingerprint().encode())


class ConcatImages:
    """Image stacks (arrays or lazy sources) joined row-wise without copying any of them; implements ImageSource.

    Each row is (part, row in that part). Indexing reads every part's rows in one call to it; ``take`` selects
    across the parts, and a selection that lies in a single part is that part's own selection (so the real rows of
    an augmented training split are the very view, and have the fingerprint, of the split they came from).
    """

    def __init__(self, parts: Sequence[np.ndarray | ImageSource], part: np.ndarray | None = None,
                 row: np.ndarray | None = None) -> None:
        shapes = {tuple(p.shape[1:]) for p in parts}
        if not parts or len(shapes) != 1 or next(iter(shapes))[-1] != 3:
            raise ValueError(f"cannot join image stacks of shapes {sorted(shapes)}")
        self.parts = list(parts)
        if part is None:
            part = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
            row = np.concatenate([np.arange(len(p)) for p in parts])
        self.part = np.asarray(part, dtype=np.int64)
        self.row = np.asarray(row, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.part)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.part), *self.parts[0].shape[1:])

    def __repr__(self) -> str:
        return f"ConcatImages(n={len(self)}, parts={[type(p).__name__ for p in self.parts]})"

    def take(self, indices: np.ndarray) -> np.ndarray | ImageSource:
        pos = index_positions(indices, len(self))
        part, row = self.part[pos], self.row[pos]
        used = np.unique(part)
        if len(used) == 1:  # one part: its own view
            source = self.parts[int(used[0])]
            return source[row] if isinstance(source, np.ndarray) else source.take(row)
        return ConcatImages(self.parts, part, row)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        pos = index_positions(index, len(self))
        if is_int(index):
            return np.asarray(self.parts[int(self.part[pos[0]])][int(self.row[pos[0]])])
        out = np.empty((len(pos), *self.parts[0].shape[1:]), dtype=np.uint8)
        part, row = self.part[pos], self.row[pos]
        for k in np.unique(part):
            where = part == k
            out[where] = np.asarray(self.parts[int(k)][row[where]])
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(b"concat-images")
        for p in self.parts:
            hash_images(h, p)
        h.update(np.ascontiguousarray(self.part).data)
        h.update(np.ascontiguousarray(self.row).data)
        return h.hexdigest()


@dataclass(frozen=True)
class Split:
    """One set of patches: images plus one metadata row per patch (columns: METADATA_COLUMNS, then "group")."""

    images: np.ndarray | ImageSource
    metadata: pd.DataFrame
    name: str = ""
    info: dict = field(default_factory=dict, compare=False)  # counts worth reporting (skipped files, ...)

    def __post_init__(self) -> None:
        n_img, n_meta = len(self.images), len(self.metadata)
        if n_img != n_meta:
            raise ValueError(f"split {self.name!r}: {n_img} images but {n_meta} metadata rows")
        if isinstance(self.images, np.ndarray):
            if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
                raise ValueError(
                    f"split {self.name!r}: images must be uint8 N x H x W x 3, got {self.images.dtype} "
                    f"{self.images.shape}"
                )
        missing = [c for c in METADATA_COLUMNS if c not in self.metadata.columns]
        if missing:
            raise ValueError(f"split {self.name!r}: metadata lacks columns {missing}")

    def __len__(self) -> int:
        return len(self.metadata)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def labels(self) -> np.ndarray:
        return self.metadata["label"].to_numpy(dtype=np.int64)

    def subset(self, index: np.ndarray | pd.Series, name: str | None = None) -> Split:
        """Rows selected by a boolean mask or integer positions; images stay lazy when they were."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        images = self.images
        if isinstance(images, np.memmap):  # a mapped file stays on disk: the subset is a view of it
            images = ArrayImages(images)
        images = images[idx] if isinstance(images, np.ndarray) else images.take(idx)
        meta = self.metadata.iloc[idx].reset_index(drop=True)
        return Split(images, meta, name or self.name, dict(self.info))

    def load(self) -> Split:
        """The same split with its images read into memory."""
        if isinstance(self.images, np.ndarray) and not isinstance(self.images, np.memmap):
            return self
        return Split(materialize(self.images), self.metadata, self.name, dict(self.info))

    def with_images(self, images: np.ndarray | ImageSource, name: str | None = None) -> Split:
        """Same metadata, new pixels (e.g. stain-normalized)."""
        return Split(images, self.metadata, name or self.name, dict(self.info))

    def fingerprint(self) -> str:
        """Content hash of pixels and metadata; keys the embedding and model caches."""
        h = hashlib.blake2b(digest_size=16)
        hash_images(h, self.images)
        h.update(pd.util.hash_pandas_object(self.metadata[list(METADATA_COLUMNS)], index=False).to_numpy().data)
        # a cohort's own columns (a manifest's ``scanner``) can be conditioned on, so they are content too; the
        # derived ``group`` is not (and tasks without extra columns keep the fingerprints they always had)
        extra = sorted(c for c in self.metadata.columns if c not in METADATA_COLUMNS and c != "group")
        if extra:
            h.update(json.dumps(extra).encode())
            h.update(pd.util.hash_pandas_object(self.metadata[extra].astype(str), index=False).to_numpy().data)
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 image batches in order, read lazily when the source is lazy."""
        for start in range(0, len(self), batch_size):
            yield np.asarray(self.images[start : start + batch_size])


def materialize(images: np.ndarray | ImageSource, batch_size: int = 512) -> np.ndarray:
    """Read every image into one uint8 array (a memory-mapped one is copied into memory)."""
    if isinstance(images, np.memmap):
        return np.array(images)
    if isinstance(images, np.ndarray):
        return images
    n, h, w, c = images.shape
    out = np.empty((n, h, w, c), dtype=np.uint8)
    for start in range(0, n, batch_size):
        out[start : start + batch_size] = images[start : start + batch_size]
    return out


def concat(splits: Sequence[Split], name: str) -> Split:
    """Join splits row-wise; metadata keeps the union of columns. Arrays are joined into one array; when any split's
    images are lazy (a mapped cohort), the join is a ConcatImages over them and nothing is read."""
    if not splits:
        raise ValueError("concat needs at least one split")
    sizes = {s.image_size for s in splits if len(s)}
    if len(sizes) > 1:
        raise ValueError(f"cannot join splits with image sizes {sorted(sizes)}: {[s.name for s in splits]}")
    parts = [s.images for s in splits if len(s)] or [splits[0].images]
    if len(parts) == 1:
        images = parts[0]
    elif all(isinstance(p, np.ndarray) and not isinstance(p, np.memmap) for p in parts):
        images = np.concatenate(parts, axis=0)
    else:
        images = ConcatImages(parts)
    meta = pd.concat([s.metadata for s in splits], ignore_index=True)
    info: dict = {}
    for s in splits:
        info.update(s.info)
    return Split(images, meta, name, info)


def empty_metadata() -> pd.DataFrame:
    """A zero-row metadata frame with the schema's columns and dtypes."""
    return pd.DataFrame(
        {
            c: pd.Series(dtype={"label": "int64", "age_at_index": "float64", "is_synthetic": "bool"}.get(c, "object"))
            for c in METADATA_COLUMNS
        }
    )
