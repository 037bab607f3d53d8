"""Which code made a number: the source hash that is part of every run's identity, and the git commit.

A run's content address covers its resolved config and :func:`code_version`: the package version plus a hash of the
source of every module that decides the run's numbers: the runner and what it imports, the method's module and the
task's module, followed through their imports inside the project's packages (and a plug-in's own package). Modules
that only present, schedule or track results (:data:`NOT_NUMBERS`) are left out, so a new leaderboard layout does
not invalidate finished runs, while any change to the evaluation, a method or a task does: a record made by other
code is never reused, and ``report`` flags sections whose records come from more than one code version.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import subprocess
from collections.abc import Iterable
from pathlib import Path

#: modules that do not decide a run's numbers: commands, reports, tracking, scheduling
#: (a package stands for its modules too)
NOT_NUMBERS = frozenset({
    "benchmark.__main__", "benchmark.cli", "benchmark.report", "benchmark.studies", "benchmark.plugins",
    "benchmark.orchestration.ui", "benchmark.orchestration.sweep", "benchmark.orchestration.freeze",
    "benchmark.orchestration.tune", "benchmark.orchestration.launchers", "benchmark.core.tracking",
    "benchmark.core.interrupts", "benchmark.core.registry", "benchmark.core.provenance", "benchmark.core.images",
})
PROJECT_PACKAGES = ("benchmark", "methods", "tasks")


def not_numbers(module: str) -> bool:
    """Whether ``module`` is in :data:`NOT_NUMBERS` or inside a package listed there."""
    return any(module == name or module.startswith(name + ".") for name in NOT_NUMBERS)


def _origin(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):  # "package.function" is not a module
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imported(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports (also inside functions), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@functools.cache
def source_closure(roots: tuple[str, ...]) -> dict[str, Path]:
    """The modules ``roots`` import, transitively, within their own top-level packages and the project's (less
    :data:`NOT_NUMBERS`), with their files."""
    follow = set(PROJECT_PACKAGES) | {r.split(".")[0] for r in roots}
    found: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in found or not_numbers(module) or module.split(".")[0] not in follow:
            continue
        path = _origin(module)
        if path is None:
            continue
        found[module] = path
        todo.extend(_imported(path, module))
    return found


def code_hash(modules: Iterable[str]) -> str:
    """SHA-256 (16 hex digits) of the source of ``modules``' closure (:func:`source_closure`)."""
    closure = source_closure(tuple(sorted(set(modules))))
    digest = hashlib.sha256()
    for name in sorted(closure):
        digest.update(name.encode() + b"\0" + closure[name].read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run_code_hash(method_module: str, task_module: str) -> str:
    """The code hash of a run of a method (its class's module) on a task (its class's module)."""
    return code_hash(("benchmark.orchestration.runner", method_module, task_module))


@functools.cache
def git_commit() -> str:
    """The source checkout's commit ("" outside git), with "-dirty" when it has uncommitted changes.

    Asked once per process: a long sweep records the commit of the code it loaded, not commits made meanwhile."""
    root = Path(__file__).resolve().parents[2]  # benchmark/core/provenance.py -> the checkout
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not sha:
            return ""
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""
