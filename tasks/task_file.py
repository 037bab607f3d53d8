"""A task defined by a TOML file, so that a cohort of your own runs without code: ``--task path/to/task.toml``.

::

    name = "camelyon17"                       # runs are filed under it: results/runs/camelyon17/...
    description = "normal vs tumour, five hospitals"      # optional
    manifest = "cohort.csv"                   # optional: relative to this file; else --set data.manifest=FILE
    classes = ["normal", "tumor"]             # labels of the manifest, in label order
    heldout_keys = ["tissue_source_site"]     # manifest columns whose combinations are held out (test_unseen)
    group_columns = ["tissue_source_site"]    # manifest columns of the groups (the class is always part of one)
    heldout_fraction = 0.4                    # optional, as split.heldout_fraction; also val_fraction,
                                              # test_seen_fraction and guard ("key" or "site")

Any argument of ``--task`` (``--tasks``) that ends in ``.toml`` or holds a path separator is a task file. Reading one
registers its task under its name (:func:`resolve_task_file`, the task registry's resolver); the run config records
the file and the SHA-256 of its content (``task_file``, ``task_sha256``), so two files that give the same name never
share results. A malformed file is one ConfigError naming the file and the key.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the package tomli (a dependency there)
    import tomli as tomllib

from benchmark.core.config import ConfigError, SplitConfig, split_checks
from benchmark.core.data import Split
from benchmark.core.registry import TASKS, did_you_mean
from tasks.definitions import CancerTypeTask
from tasks.patches import DataError

SUFFIX = ".toml"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
#: optional keys that set SplitConfig fields
SPLIT_KEYS: tuple[str, ...] = ("heldout_fraction", "val_fraction", "test_seen_fraction", "guard")
#: every key: (required, expected type in words, what it is)
KEYS: dict[str, tuple[bool, str, str]] = {
    "name": (True, "a string", "the task's name: a lowercase word (letters, digits, '-', '_')"),
    "classes": (True, "a list of strings", "the manifest's labels, in label order"),
    "heldout_keys": (True, "a list of strings", "manifest columns whose combinations are held out"),
    "group_columns": (True, "a list of strings", "manifest columns of the groups; the class is always part of one"),
    "description": (False, "a string", "one line for `list`"),
    "manifest": (False, "a string", "the cohort's CSV manifest, relative to the task file"),
    "heldout_fraction": (False, "a number", "share of the keys of each class held out (split.heldout_fraction)"),
    "val_fraction": (False, "a number", "share of the seen patients for validation (split.val_fraction)"),
    "test_seen_fraction": (False, "a number", "share of the seen patients for test_seen (split.test_seen_fraction)"),
    "guard": (False, "a string", "'key' or 'site' (split.guard)"),
}
#: manifest columns that cannot be a held-out key or a group column
_NOT_COLUMNS = {
    "path": "every image has its own path",
    "label": "the class is always part of a group and of a held-out key",
    "cancer_type": "the class is always part of a group and of a held-out key",
}


def is_task_file(reference: str) -> bool:
    """True when a ``--task`` argument names a file rather than a registered task."""
    seps = {"/", os.sep, *([os.altsep] if os.altsep else [])}
    return reference.endswith(SUFFIX) or any(sep in reference for sep in seps)


@dataclass(frozen=True)
class TaskFile:
    """A task file, read and checked."""

    path: Path  # absolute
    sha256: str  # of the file's bytes
    name: str
    classes: tuple[str, ...]
    heldout_keys: tuple[str, ...]
    group_columns: tuple[str, ...]
    description: str = ""
    manifest: str = ""  # absolute, or "" when the file names none
    split: dict[str, Any] | None = None  # the SplitConfig fields it sets (SPLIT_KEYS present in the file)

    def config_defaults(self) -> dict[str, Any]:
        """The config values the file sets, typed, keyed like ``--set`` (applied before any --set)."""
        out: dict[str, Any] = {"split.heldout_keys": self.heldout_keys}
        out.update({f"split.{key}": value for key, value in (self.split or {}).items()})
        if self.manifest:
            out["data.manifest"] = self.manifest
        return out


def read_task_file(reference: str | Path) -> TaskFile:
    """Parse and check a task file; every problem is a ConfigError naming the file and the key."""
    # 1. the file
    path = Path(reference).expanduser().absolute()
    where = f"task file {str(reference)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist or is not a file (a --task ending in {SUFFIX} or holding a path "
                          "separator is read as a task file)")
    data = path.read_bytes()
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None

    # 2. keys: known, present, of the right type
    for key in doc:
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, KEYS)}; valid keys: {', '.join(KEYS)}")
    for key, (required, _, what) in KEYS.items():
        if required and key not in doc:
            raise ConfigError(f"{where}: missing required key {key!r} ({what})")
    for key, value in doc.items():
        _check_type(where, key, value)

    # 3. values
    name = doc["name"]
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}, key 'name': {name!r} is not a lowercase word (letters, digits, '-', '_'; "
                          "runs are filed under it), e.g. 'camelyon17'")
    classes = _names(where, "classes", doc["classes"])
    if len(classes) < 2:
        raise ConfigError(f"{where}, key 'classes': {list(classes)} has fewer than two classes")
    columns = {}
    for key in ("heldout_keys", "group_columns"):
        columns[key] = _names(where, key, doc[key])
        for column in columns[key]:
            if column in _NOT_COLUMNS:
                raise ConfigError(f"{where}, key {key!r}: {column!r} cannot be listed ({_NOT_COLUMNS[column]})")
    if not columns["heldout_keys"]:
        raise ConfigError(f"{where}, key 'heldout_keys': empty; name at least one manifest column, e.g. "
                          "[\"tissue_source_site\"]")
    split = {key: (float(doc[key]) if key != "guard" else doc[key]) for key in SPLIT_KEYS if key in doc}
    candidate = SplitConfig(**{**split, "heldout_keys": columns["heldout_keys"]})
    for ok, key, value, expected in split_checks(candidate):
        if not ok:
            raise ConfigError(f"{where}, key {key.split('.', 1)[1]!r}: {value!r} is invalid: expected {expected}")
    manifest = ""
    if "manifest" in doc:
        manifest = os.path.normpath(os.path.join(path.parent, os.path.expanduser(doc["manifest"])))
        if not os.path.isfile(manifest):
            raise ConfigError(f"{where}, key 'manifest': {doc['manifest']!r} (read as {manifest!r}, relative to the "
                              "task file) does not exist or is not a file")
    return TaskFile(path, hashlib.sha256(data).hexdigest(), name, classes, columns["heldout_keys"],
                    columns["group_columns"], doc.get("description", ""), manifest, split)


def _check_type(where: str, key: str, value: Any) -> None:
    _, expected, _ = KEYS[key]
    if expected == "a string":
        ok = isinstance(value, str)
    elif expected == "a number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ConfigError(f"{where}, key {key!r}: expected {expected}, got {type(value).__name__} {shown}")


def _names(where: str, key: str, values: list[str]) -> tuple[str, ...]:
    cleaned = tuple(v.strip() for v in values)
    if any(not v for v in cleaned):
        raise ConfigError(f"{where}, key {key!r}: {values} holds an empty name")
    twice = sorted({v for v in cleaned if cleaned.count(v) > 1})
    if twice:
        raise ConfigError(f"{where}, key {key!r}: {twice[0]!r} is listed more than once")
    return cleaned


# ---------------------------------------------------------------------------------------------------------------------
# the task


class FileTask(CancerTypeTask):
    """A task read from a TOML file: its classes are a manifest's labels (tasks/task_file.py)."""

    spec: ClassVar[TaskFile]

    def origin(self) -> str:
        return f"task file {str(self.spec.path)!r} (key 'classes')"

    def manifest_columns(self) -> dict[str, tuple[str, ...]]:
        where = f"task file {str(self.spec.path)!r}"
        keys = tuple(self.split.heldout_keys)
        asked = f"{where}, key 'heldout_keys'" if keys == self.spec.heldout_keys else "split.heldout_keys"
        return {asked: keys, f"{where}, key 'group_columns'": self.spec.group_columns}

    def load(self) -> Split:
        if self.data.source == "embedded":
            raise DataError(f"task file {str(self.spec.path)!r} names no manifest: add manifest = \"cohort.csv\" (a "
                            "path relative to the task file) or pass --set data.manifest=FILE")
        return super().load()


def task_class(spec: TaskFile) -> type[FileTask]:
    """The Task subclass of a task file."""
    attributes = {
        "__module__": __name__,
        "__qualname__": f"FileTask[{spec.name}]",
        "__doc__": spec.description or f"task file {spec.path}",
        "spec": spec,
        "name": spec.name,
        "description": spec.description,
        "classes": spec.classes,
        "group_columns": ("cancer_type", *spec.group_columns),
        "source_file": str(spec.path),
        "source_sha256": spec.sha256,
        "config_defaults": spec.config_defaults(),
    }
    return type(f"FileTask[{spec.name}]", (FileTask,), attributes)


_lock = threading.Lock()
_registered: dict[str, TaskFile] = {}  # task name -> the file registered under it in this process


def resolve_task_file(reference: str) -> str | None:
    """The task registry's resolver: a task file's task, registered under its name (the name is returned); None
    when ``reference`` is no task file. The same file read again is the same task; another file under a name taken
    in this process, or a file changed since it was read, is a ConfigError."""
    if not is_task_file(reference):
        return None
    spec = read_task_file(reference)
    with _lock:
        known = _registered.get(spec.name)
        if known is not None:
            if known.path == spec.path and known.sha256 == spec.sha256:
                return spec.name
            if known.path == spec.path:
                raise ConfigError(f"task file {str(reference)!r} changed since this command read it; run the "
                                  "command again")
            raise ConfigError(f"task file {str(reference)!r}, key 'name': {spec.name!r} is already the name of task "
                              f"file {str(known.path)!r} in this command; give one of them another name")
        if spec.name in TASKS:
            raise ConfigError(f"task file {str(reference)!r}, key 'name': {spec.name!r} is taken by a registered "
                              f"task ({TASKS.description(spec.name)}); choose another name")
        TASKS.register(spec.name, spec.description or f"from {spec.path}")(task_class(spec))
        _registered[spec.name] = spec
    return spec.name


__all__ = ["KEYS", "FileTask", "TaskFile", "is_task_file", "read_task_file", "resolve_task_file", "task_class"]
