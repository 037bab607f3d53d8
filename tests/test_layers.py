"""The package layers and the absence of import circles, checked on the imports themselves (grimp parses every
import statement, also those inside functions), and the deprecation path of the old flat module names."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "methods", "tasks")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the contracts of ``root/pyproject.toml`` on the packages under ``root``."""
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": ""})


def test_the_layer_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_planted_back_edge_breaks_the_contract(tmp_path):
    """The check can fail: a core module that imports the runner inside a function (the kind of import that hid
    the circles of 0.1) breaks the contract, and the message names both ends."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    cache = tmp_path / "benchmark" / "core" / "cache.py"
    cache.write_text(cache.read_text() + "\n\ndef _planted():\n    from benchmark.orchestration import runner\n\n"
                     "    return runner\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "0 kept, 1 broken" in result.stdout
    assert "benchmark.core.cache -> benchmark.orchestration.runner" in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles():
    graph = grimp.build_graph(*PACKAGES)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_circle():
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.y", imported="a.z")
    assert _cycles(graph) == [["a.x", "a.y"]]


def test_the_registry_imports_nothing_it_lists():
    graph = grimp.build_graph(*PACKAGES)
    imported = graph.find_modules_directly_imported_by("benchmark.core.registry")
    assert not {m for m in imported if m.split(".")[0] in ("methods", "tasks") or m == "benchmark.plugins"}


@pytest.mark.parametrize("old, new", [("config", "benchmark.core.config"), ("cache", "benchmark.core.cache")])
def test_an_old_module_name_still_imports_and_says_where_it_went(old, new):
    code = (f"import warnings; warnings.simplefilter('error')\n"
            f"try:\n    import benchmark.{old}\nexcept DeprecationWarning as w:\n    print(w)\n"
            f"warnings.simplefilter('ignore')\nimport benchmark.{old} as a, {new} as b\nprint(a is b)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"benchmark.{old} moved to {new}: import it from there (the old name goes in MeDiBench 0.3)", "True"]


def test_the_plugin_api_is_one_import():
    import benchmark.protocols as api
    from benchmark.core import config, data, registry

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (api.tunable, api.Split, api.concat, api.METHODS) == (config.tunable, data.Split, data.concat,
                                                                     registry.METHODS)
