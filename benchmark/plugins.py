"""Loads the built-in methods, tasks and encoders, then those of installed packages (entry points).

An installed package adds a method, task or encoder by declaring an entry point in one of :data:`GROUPS`::

    [project.entry-points."medibench.methods"]
    hed_jitter = "medibench_hed_jitter.method:HEDJitter"

registers ``HEDJitter`` (a :class:`~benchmark.protocols.Method` subclass) under ``hed_jitter``, described by the
first line of its docstring. A task is a :class:`~benchmark.protocols.Task` subclass; an encoder is a factory
``(ProbeConfig[, arg]) -> Encoder``, like the built-ins in ``evaluation.encoders``. A plug-in that fails to import,
is of the wrong kind or takes a name already registered is left out with a one-line warning naming its
distribution, its entry point and the error; the built-ins keep working.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

from benchmark.core.registry import ENCODERS, METHODS, TASKS, Registry, RegistryError

log = logging.getLogger(__name__)

#: entry-point group -> the registry its entries join
GROUPS: dict[str, Registry] = {"medibench.methods": METHODS, "medibench.tasks": TASKS, "medibench.encoders": ENCODERS}

_lock = threading.RLock()
_state = "new"  # new -> loading -> done (a failed built-in import leaves it new, so the next call tries again)
#: names registered from entry points: (registry kind, name) -> where they came from (for clash messages)
_plugin_origins: dict[tuple[str, str], str] = {}


def load_plugins() -> None:
    """Register the built-ins and the installed plug-ins, once per process (later calls return at once)."""
    global _state
    with _lock:
        if _state != "new":  # done, or a built-in module calling back while it is being imported
            return
        _state = "loading"
        try:
            load_builtins()
        except BaseException:
            _state = "new"
            raise
        for line in load_entry_points(GROUPS):
            log.warning("%s", line)
        _state = "done"


def ensure_task(cfg) -> None:
    """Make a run config's task known in this process (built-ins and plug-ins loaded; a task file's task read again
    from ``cfg.task_file``): for a worker process or a cluster job that receives configs rather than command lines.
    A task file whose content is no longer the one the config was made with (``cfg.task_sha256``) is an error."""
    load_plugins()
    path = getattr(cfg, "task_file", "")
    if not path or cfg.task in TASKS and getattr(TASKS.get(cfg.task), "source_sha256", "") == cfg.task_sha256:
        return
    name = TASKS.canonical(path)
    found = getattr(TASKS.get(name), "source_sha256", "")
    if name != cfg.task or found != cfg.task_sha256:
        raise RegistryError(f"task file {path!r} changed since run {cfg.name} was planned (task {name!r}, SHA-256 "
                            f"{found[:12]}, planned {cfg.task!r}, {cfg.task_sha256[:12]}); plan the runs again")


def load_builtins() -> None:
    """Import the packages whose modules register the built-in methods, tasks and encoders."""
    import benchmark.evaluation.encoders  # noqa: F401
    import methods  # noqa: F401
    import tasks  # noqa: F401


def load_entry_points(groups: Mapping[str, Registry], found: Iterable[Any] | None = None) -> list[str]:
    """Register the installed entry points of ``groups`` (group -> registry); returns one warning line per entry
    point left out. ``found``: the entry points to consider (default: those installed in any of ``groups``)."""
    if found is None:
        found = [ep for group in groups for ep in metadata.entry_points(group=group)]
    warnings = []
    for ep in sorted(found, key=lambda e: (e.group, e.name, _distribution(e))):
        registry = groups.get(ep.group)
        if registry is None:
            continue
        problem = _register(ep, registry)
        if problem:
            warnings.append(f"plug-in {registry.kind} {ep.name!r} ({_where(ep)}) left out: {problem}")
    return warnings


def _register(ep: Any, registry: Registry) -> str:
    """Load and register one entry point; "" on success, else what went wrong (one line)."""
    kind = registry.kind
    try:
        obj = ep.load()
    except Exception as exc:  # any error of a third-party import: reported, never fatal
        return _one_line(exc)
    wrong = _wrong_kind(kind, obj)
    if wrong:
        return wrong
    if ep.name in registry:
        other = _plugin_origins.get((kind, ep.name))
        if other is None and registry.get(ep.name) is obj:  # the module registered it with the decorator on import
            _plugin_origins[(kind, ep.name)] = _where(ep)
            return ""
        owner = f"the {kind} of {other}" if other else f"the built-in {kind}"
        return f"the name {ep.name!r} is taken by {owner}"
    try:
        registry.register(ep.name, describe(obj, ep))(obj)
    except (ValueError, KeyError) as exc:  # a name that is not a lowercase word
        return _one_line(exc)
    _plugin_origins[(kind, ep.name)] = _where(ep)
    return ""


def _wrong_kind(kind: str, obj: Any) -> str:
    """Why ``obj`` cannot be a ``kind`` entry, or ""."""
    from benchmark.protocols import Method, Task

    expected = {"method": Method, "task": Task}.get(kind)
    if expected is not None:
        if isinstance(obj, type) and issubclass(obj, expected):
            return ""
        return f"expected a subclass of {expected.__module__}.{expected.__name__}, got {_describe_object(obj)}"
    if callable(obj) and not (isinstance(obj, type) and issubclass(obj, (Method, Task))):
        return ""
    return f"expected an encoder factory (ProbeConfig[, arg]) -> Encoder, got {_describe_object(obj)}"


def describe(obj: Any, ep: Any) -> str:
    """The first line of ``obj``'s own docstring without its full stop (a class does not inherit its base's here)."""
    doc = obj.__doc__ if isinstance(obj.__doc__, str) else ""
    lines = [line.strip() for line in inspect.cleandoc(doc).splitlines() if line.strip()]
    return lines[0].removesuffix(".") if lines else f"(no docstring; from {_distribution(ep)})"


def _describe_object(obj: Any) -> str:
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__name__} {obj!r}"[:120]


def _distribution(ep: Any) -> str:
    """``distribution NAME VERSION`` of an entry point, or ``package NAME`` (its top-level module) without one."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "package " + ep.value.split(":")[0].split(".")[0].strip()
    return f"distribution {dist.name} {dist.version}"


def _where(ep: Any) -> str:
    return f"{_distribution(ep)}, entry point {ep.name} = {ep.value}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
