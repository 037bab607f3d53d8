"""Reading patch files: decode each image once (strictly, as RGB, resized), cache the pixels, apply the bad-file
policy.

Used by every cohort that lives in image files (tasks/manifest.py: a CSV manifest, or the TCGA-UT folder layout)::

    images = PathImages(paths, size=64, on_error="skip")
    pixels, good, decoded = decode_all(images, cache_dir)     # bad files found before any split; pixels: a view of
                                                              # one memory-mapped .npy, shared by every process

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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from benchmark.core.cache import RowWriter, atomic_write_json, fsync_dir
from benchmark.core.data import ArrayImages, index_positions, is_int

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
    resumed_at: int = 0  # patches a killed decode had already written when this one resumed

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

    def decode(self, i: int) -> np.ndarray:
        """Image i as uint8 ``size x size x 3`` (conversions counted in ``self.converted``)."""
        pixels, conversion = decode_image(self.paths[i], self.size)
        if conversion is not None:
            with self._lock:
                self.converted[conversion] = self.converted.get(conversion, 0) + 1
        return pixels

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        positions = index_positions(index, len(self.paths))
        if is_int(index):
            return self.decode(int(positions[0]))
        out = np.empty((len(positions), self.size, self.size, 3), dtype=np.uint8)
        for k, i in enumerate(positions):
            out[k] = self.decode(int(i))
        return out

    def take(self, indices: np.ndarray) -> PathImages:
        """The images at the given positions (or bool mask), still lazy."""
        positions = index_positions(indices, len(self.paths))
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
# decode once, into one memory-mapped file
#
# The cache of a cohort is two files in ``cache_dir``: ``tcga_ut_<key>.npy``, every image's pixels (uint8
# N x size x size x 3, a bad file's row left black), and ``tcga_ut_<key>.json``, what the decode found (the bad files,
# the colour conversions); the JSON is written last, so its presence says the pixels are complete. A plain ``.npy``
# (not a compressed or chunked format) because numpy maps it with no library and no decompression, every process
# that opens it shares the operating system's pages, and a patch is one contiguous slice of it.
#
# The decode writes into ``.tcga_ut_<key>.npy.partial`` with pwrite (not through a map), so its memory does not grow
# with the cohort either, and records how far it got in ``.tcga_ut_<key>.progress.json`` after each chunk: a decode
# that is killed resumes from there. A lock file makes a second process (another sweep worker) wait for the first's
# decode instead of doing it again.

#: Patches decoded between two saves of the progress file.
CHUNK = 1024
#: Seconds between two saves of the progress file (at chunk ends).
SAVE_SECONDS = 2.0
#: Cohorts at least this large are decoded by worker processes (PIL's Python-side work holds the GIL); smaller ones
#: by threads in this process.
PROCESS_MIN = 4096


@dataclass(frozen=True)
class _CacheFiles:
    pixels: Path
    details: Path
    partial: Path
    progress: Path
    lock: Path


def _cache_files(cache_dir: Path, key: str) -> _CacheFiles:
    # "tcga_ut_" is historical (the decoder began in the TCGA-UT loader)
    name = f"tcga_ut_{key}"
    return _CacheFiles(cache_dir / f"{name}.npy", cache_dir / f"{name}.json", cache_dir / f".{name}.npy.partial",
                       cache_dir / f".{name}.progress.json", cache_dir / f".{name}.lock")


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """One decode of a cohort at a time across processes (POSIX flock; elsewhere no lock)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load_cache(files: _CacheFiles, key: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The mapped pixels, good mask and details of a complete cache; ValueError naming what is off."""
    try:
        details = json.loads(files.details.read_text())
        pixels = np.load(files.pixels, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise ValueError(f"{Path(exc.filename).name} is missing") from None
    except (OSError, ValueError, EOFError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    if details.get("key") != key:
        raise ValueError(f"made for key {details.get('key')!r}")
    expected = (n, size, size, 3)
    if pixels.dtype != np.uint8 or pixels.shape != expected:
        raise ValueError(f"images {pixels.dtype} {pixels.shape}, expected uint8 {expected}")
    mask = np.ones(n, dtype=bool)
    bad = details.get("bad", [])
    if len(bad) != len(details.get("skipped", [])) or any(not 0 <= i < n for i in bad):
        raise ValueError("skipped list does not match the bad rows")
    mask[bad] = False
    return pixels, mask, details


def _decode_rows(paths: Sequence[str], size: int, target: str, start: int, on_error: str
                 ) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """A worker process's chunk: decode ``paths`` into rows ``start...`` of the ``.npy`` file ``target``; returns
    the bad rows (under on_error="skip") and the conversions made."""
    out = RowWriter(target)
    bad: list[tuple[int, str]] = []
    converted: dict[str, int] = {}
    for k, path in enumerate(paths):
        try:
            pixels, conversion = decode_image(path, size)
        except DataError as exc:
            if on_error == "fail":
                raise
            bad.append((start + k, str(exc)))
            continue
        out[start + k] = pixels
        if conversion is not None:
            converted[conversion] = converted.get(conversion, 0) + 1
    out.flush()
    out.close()
    return bad, converted


def _chunks(todo: range, chunk: int) -> list[range]:
    return [range(a, min(a + chunk, todo.stop)) for a in range(todo.start, todo.stop, chunk)]


def _decode_into(images: PathImages, out: np.ndarray | RowWriter, todo: range, workers: int, target: str | None,
                 on_chunk: Callable[[int, list, dict], None], bar) -> None:
    """Decode rows ``todo`` into ``out`` (an array, or the writer of the file ``target``) in order of chunks;
    ``on_chunk(done_upto, bad, converted)`` after each chunk whose rows, and all before them, are done."""
    if target is not None and workers > 1 and len(todo) >= PROCESS_MIN:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        small = _chunks(todo, max(64, min(CHUNK, len(todo) // (workers * 8) or 64)))
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = [pool.submit(_decode_rows, images.paths[c.start : c.stop], images.size, target, c.start,
                                   images.on_error) for c in small]
            # in order: the progress file only ever records a done prefix
            for c, future in zip(small, futures, strict=True):
                bad, converted = future.result()
                bar.update(len(c))
                on_chunk(c.stop, bad, converted)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return

    def work(i: int) -> tuple[int, str | None, str | None]:
        try:
            pixels, conversion = decode_image(images.paths[i], images.size)
        except DataError as exc:
            if images.on_error == "fail":
                raise
            return i, str(exc), None
        out[i] = pixels
        return i, None, conversion

    executor = ThreadPoolExecutor(max_workers=workers)  # PIL releases the GIL while decoding
    try:
        for c in _chunks(todo, CHUNK):
            bad: list[tuple[int, str]] = []
            converted: dict[str, int] = {}
            for i, error, conversion in executor.map(work, c):
                if error is not None:
                    bad.append((i, error))
                elif conversion is not None:
                    converted[conversion] = converted.get(conversion, 0) + 1
                bar.update(1)
            on_chunk(c.stop, bad, converted)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def decode_all(
    images: PathImages, cache_dir: str | Path | None, workers: int | None = None, progress: bool = True
) -> tuple[np.ndarray | ArrayImages, np.ndarray, DecodeReport]:
    """Every image decoded once: (the pixels of the good images, bool mask of good indices, DecodeReport).

    With a ``cache_dir`` the pixels are a view of the memory-mapped cache file (ArrayImages: nothing of the cohort is
    in memory until a batch is read); without one, an in-memory array. Under on_error="fail" the first bad file
    raises DataError; under "skip" bad files are dropped and listed. The cache is keyed by ``images.fingerprint()``;
    a damaged cache is rebuilt, never trusted; a killed decode resumes where it stopped. ``workers``: threads, or
    processes for large cohorts (default: the cores this process may use).
    """
    if not isinstance(images, PathImages):
        raise DataError(f"decode_all needs a PathImages, got {type(images).__name__}")
    workers = _default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"workers must be a positive int, got {workers!r}")
    start = time.perf_counter()
    key = images.fingerprint()
    if cache_dir is None:
        return _decode_in_memory(images, workers, progress, start)
    files = _cache_files(Path(cache_dir), key)
    with _exclusive(files.lock):
        return _decode_cached(images, files, key, workers, progress, start)


def _report(images: PathImages, mask: np.ndarray, skipped: list, from_cache: bool, path: Path | None,
            rebuilt: str | None, start: float, resumed_at: int = 0) -> DecodeReport:
    return DecodeReport(len(images), int(mask.sum()), skipped, dict(images.converted), from_cache,
                        str(path) if path else None, rebuilt, time.perf_counter() - start, resumed_at)


def _decode_in_memory(images: PathImages, workers: int, progress: bool, start: float):
    from tqdm.auto import tqdm

    n, size = len(images), images.size
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    mask = np.ones(n, dtype=bool)
    skipped: list[tuple[str, str]] = []
    images.converted = {}

    def on_chunk(done: int, bad: list, converted: dict) -> None:
        for i, error in bad:
            mask[i] = False
            skipped.append((images.paths[i], error))
        _add(images.converted, converted)

    with tqdm(total=n, unit="patch", desc=f"decoding {n} patches", disable=not progress) as bar:
        _decode_into(images, out, range(n), workers, None, on_chunk, bar)
    if skipped:
        log.warning("skipped %d unreadable files, e.g. %s", len(skipped), skipped[0][1])
    pixels = out if mask.all() else out[mask]
    return pixels, mask, _report(images, mask, skipped, False, None, None, start)


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for name, count in more.items():
        total[name] = total.get(name, 0) + count


def _decode_cached(images: PathImages, files: _CacheFiles, key: str, workers: int, progress: bool, start: float):
    n, size = len(images), images.size
    rebuilt: str | None = None
    # 1. a complete, consistent cache wins
    if files.details.exists() or files.pixels.exists():
        try:
            pixels, mask, details = _load_cache(files, key, n, size)
        except ValueError as exc:
            rebuilt = f"{files.pixels.name}: {exc}"
            log.warning("decode cache %s is damaged (%s); decoding again", files.pixels, exc)
            files.details.unlink(missing_ok=True)
            files.pixels.unlink(missing_ok=True)
        else:
            skipped = [tuple(item) for item in details["skipped"]]
            if skipped and images.on_error == "fail":
                _, reason = skipped[0]
                raise DataError(f"{reason} (found earlier, recorded in {files.details}; {len(skipped)} bad files "
                                "in all)")
            images.converted = dict(details["converted"])
            view = ArrayImages(pixels, np.flatnonzero(mask), token=key)
            return view, mask, _report(images, mask, skipped, True, files.pixels, None, start)

    # 2. resume a killed decode, or start one, writing the rows into the partial file
    from tqdm.auto import tqdm

    out = None
    if files.partial.exists() and files.progress.exists():
        try:
            saved = json.loads(files.progress.read_text())
            header = np.load(files.partial, mmap_mode="r")
            if saved.get("key") != key or header.shape != (n, size, size, 3) or header.dtype != np.uint8:
                raise ValueError("made for another cohort")
            del header
            out = RowWriter(files.partial)
            state = saved
        except (OSError, ValueError, EOFError, json.JSONDecodeError) as exc:
            log.warning("cannot resume the decode from %s (%s); starting over", files.partial.name, exc)
            out = None
    if out is None:
        state = {"key": key, "done": 0, "bad": [], "skipped": [], "converted": {}}
        out = RowWriter.create(files.partial, (n, size, size, 3), np.uint8)
    resumed_at = int(state["done"])
    if state["skipped"] and images.on_error == "fail":
        raise DataError(f"{state['skipped'][0][1]} (found by the decode this one resumes, recorded in "
                        f"{files.progress})")
    if resumed_at:
        log.info("resuming the decode of %d patches at %d (%s)", n, resumed_at, files.partial.name)
    last_save = [time.monotonic()]

    def on_chunk(done: int, bad: list, converted: dict) -> None:
        for i, error in bad:
            state["bad"].append(int(i))
            state["skipped"].append([images.paths[i], error])
        _add(state["converted"], converted)
        state["done"] = done
        if time.monotonic() - last_save[0] >= SAVE_SECONDS or done == n:
            out.flush()  # the pixels first, then the record that they are there
            atomic_write_json(files.progress, state)
            last_save[0] = time.monotonic()

    desc = f"decoding {n} patches" + (f" (resumed at {resumed_at})" if resumed_at else "")
    with tqdm(total=n, initial=resumed_at, unit="patch", desc=desc, disable=not progress) as bar:
        _decode_into(images, out, range(resumed_at, n), workers, str(files.partial), on_chunk, bar)
    out.flush()
    out.close()  # closed before the rename (Windows cannot rename an open file)
    images.converted = dict(state["converted"])

    # 3. the partial file becomes the cache: pixels renamed first, the details (the completeness mark) written last
    os.replace(files.partial, files.pixels)
    fsync_dir(files.pixels.parent)
    details = {"key": key, "bad": state["bad"], "skipped": state["skipped"], "converted": state["converted"],
               "n": n, "size": size}
    atomic_write_json(files.details, details)
    files.progress.unlink(missing_ok=True)
    skipped = [tuple(item) for item in state["skipped"]]
    if skipped:
        log.warning("skipped %d unreadable files, e.g. %s", len(skipped), skipped[0][1])
    mask = np.ones(n, dtype=bool)
    mask[state["bad"]] = False
    pixels = np.load(files.pixels, mmap_mode="r")
    view = ArrayImages(pixels, np.flatnonzero(mask), token=key)
    return view, mask, _report(images, mask, skipped, False, files.pixels, rebuilt, start, resumed_at)


__all__ = ["CHUNK", "ON_ERROR", "PROCESS_MIN", "DataError", "DecodeReport", "PathImages", "decode_all",
           "decode_image"]
