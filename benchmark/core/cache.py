"""Content-addressed on-disk caches: written to a temporary file and renamed, so a crash never leaves a cache entry
that looks complete, and a damaged entry is detected and rebuilt rather than trusted."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable: without this a power cut after ``os.replace`` may lose the new name."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# A temporary file is named ``.<name>~<host>~<pid>~<random>.tmp``: a process killed while writing it (SIGKILL, a
# power cut) leaves it behind, and its name says whose it was, so a later run removes it once that process is gone.
_TEMP_SUFFIX = ".tmp"


def _host() -> str:
    return socket.gethostname().replace("~", "-")


def _mkstemp(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}~{_host()}~{os.getpid()}~", suffix=_TEMP_SUFFIX)


def remove_orphan_temps(folder: Path) -> list[Path]:
    """Delete the temporary files under ``folder`` left by processes of this host that no longer exist (killed while
    writing); a live writer's files and other hosts' are left alone. Returns the paths removed."""
    removed: list[Path] = []
    host = _host()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)) or name.count("~") < 3:
                continue
            _, owner_host, pid, _ = name.rsplit("~", 3)
            if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
                path = Path(root) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content appears at ``path`` only if the block finishes (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path)
    os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; results are meant to be read by others
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(exc, tmp, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _naming(exc: OSError, tmp: str, path: Path) -> OSError:
    """A failed write (a full disk: ENOSPC, a file size limit: EFBIG) as the OSError of ``path``, the file the user
    knows, rather than of its temporary name or of no file (write errors carry none)."""
    if exc.filename not in (None, tmp) or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A temporary path for libraries that write by file name; its content is flushed to disk and renamed to
    ``path`` if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(exc, tmp, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class _Stream:
    """A file seen through ``write`` alone: numpy then writes in chunks with ``write`` (whose failure is an OSError
    with its errno, ENOSPC on a full disk) instead of ``ndarray.tofile`` (whose short write is an OSError without
    one: "24864 requested and 15328 written")."""

    def __init__(self, fh: BinaryIO):
        self.write = fh.write


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as fh:
        np.save(_Stream(fh), array, allow_pickle=False)


def load_npy(path: Path, shape: tuple | None = None, dtype: Any = None, mmap: bool = False) -> np.ndarray | None:
    """The cached array (read-only memory-mapped with ``mmap``), or None when it is missing, unreadable, or not of
    the expected shape and dtype."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError):
        return None
    if shape is not None and tuple(array.shape) != tuple(shape):
        return None
    if dtype is not None and array.dtype != np.dtype(dtype):
        return None
    return array


def cached_array(
    path: Path | None, build: Callable[[], np.ndarray], shape: tuple | None = None, dtype: Any = None,
    mmap: bool = False,
) -> np.ndarray:
    """Load ``path`` if it holds a valid array, else build, save atomically and return it (no cache if path None).
    With ``mmap`` the array comes back read-only memory-mapped from the file, also right after it was built (the
    built copy is let go): its pages are the operating system's, shared by every process that reads the file."""
    if path is not None:
        hit = load_npy(path, shape, dtype, mmap)
        if hit is not None:
            return hit
    array = build()
    if path is not None:
        atomic_save_npy(path, array)
        if mmap:
            mapped = load_npy(path, shape, dtype, mmap)
            if mapped is not None:
                return mapped
    return array


class RowWriter:
    """Rows of a ``.npy`` file written with ``os.pwrite``, not through a memory map: the data go to the kernel's page
    cache and the file, never into this process's resident memory (a mapped page that is written stays resident).
    ``writer[i] = row`` writes row ``i``, ``writer[start:stop] = rows`` a run of them."""

    def __init__(self, path: str | Path) -> None:
        header = np.load(path, mmap_mode="r")  # the header: shape, dtype and where the data begins
        self.shape, self.dtype, self.offset = header.shape, header.dtype, int(header.offset)
        self.row_bytes = int(np.prod(header.shape[1:])) * header.dtype.itemsize
        del header
        self.fd = os.open(path, os.O_RDWR)

    @classmethod
    def create(cls, path: str | Path, shape: tuple, dtype: Any) -> RowWriter:
        """A new file of ``shape`` (its rows unwritten: the file is sparse until they are) and its writer."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        created = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
        del created  # only the header and the file's size; the rows are written with pwrite
        return cls(path)

    def __setitem__(self, index: int | slice, rows: np.ndarray) -> None:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step != 1:
                raise ValueError(f"rows {index!r}: only contiguous runs of rows are written")
        else:
            start = int(index) + self.shape[0] if int(index) < 0 else int(index)
            stop = start + 1
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        if not 0 <= start < stop <= self.shape[0] or data.nbytes != (stop - start) * self.row_bytes:
            raise ValueError(f"{data.nbytes} bytes for rows {start}:{stop} of a file of {self.shape[0]} rows of "
                             f"{self.row_bytes} bytes")
        os.pwrite(self.fd, data.data, self.offset + start * self.row_bytes)

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def scratch_rows(folder: Path, name: str, shape: tuple, dtype: Any, fill: Callable[[RowWriter], None]) -> np.ndarray:
    """An array too large to hold, built by ``fill`` (which writes its rows, a batch at a time, into a RowWriter) into
    a temporary file of ``folder`` and returned read-only memory-mapped from it: its pages are the file's, which the
    kernel writes back to disk instead of holding them. The file is deleted when the returned array is let go or
    the process exits; a killed process's file is removed by a later run (``remove_orphan_temps``)."""
    import weakref

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path)
    os.close(fd)
    try:
        writer = RowWriter.create(tmp, shape, dtype)
        try:
            fill(writer)
        finally:
            writer.close()
        mapped = np.load(tmp, mmap_mode="r", allow_pickle=False)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    weakref.finalize(mapped, _unlink_quietly, tmp)
    return mapped


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:  # already gone, or still open elsewhere (Windows): remove_orphan_temps takes it later
        pass
