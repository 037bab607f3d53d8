"""Reading patch files: decode each image once (strictly, as RGB, resized), cache the pixels, apply the bad-file
policy.

Used by every cohort that lives in image files (tasks/manifest.py: a CSV manifest, or the TCGA-UT folder layout)::

    images = PathImages(paths, size=64, on_error="skip")
    pixels, good, decoded = decode_all(images, cache_dir)     # bad files found before any split

A corrupt, truncated, zero-byte or missing file is a DataError naming it (``on_error="fail"``) or is dropped and listed
(``"skip"``); RGBA, palette, grayscale, CMYK and 16-bit images are converted explicitly and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from benchmark.core.cache import atomic_file

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")
#: Bump when decoding changes (filters, conversions): it is part of PathImages.fingerprint() and so of cache keys.
DECODER_VERSION = 1


class DataError(ValueError):
    """A cohort's image files, manifest or clinical table are not what the loader expects (the message names the
    file, row, column or value)."""


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
    """Patches read lazily from their files, resized to ``size``; implements benchmark.core.data.ImageSource.

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
        # "tcga-ut" and the file prefix below are historical (the decoder began in the TCGA-UT loader): kept so that
        # caches decoded before the manifest loader stay valid
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
            log.warning("decode cache %s is damaged (%s); decoding again", cache_path, exc)
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

    bar = tqdm(total=n, unit="patch", desc=f"decoding {n} patches", disable=not progress)
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
        log.warning("skipped %d unreadable files, e.g. %s", len(skipped), skipped[0][1])
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


__all__ = ["ON_ERROR", "DataError", "DecodeReport", "PathImages", "decode_all", "decode_image"]
