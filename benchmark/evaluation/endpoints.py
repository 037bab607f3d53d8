"""Declared endpoints: the comparisons and metrics the verdict tests, read from a TOML file fixed before the runs.

The shipped protocol (``benchmark/endpoints.toml``) names the paper's claims as the primary family and the oracle and
duplicate controls as a family of their own; a user's own file has the same shape. ``sweep`` copies the protocol into
its results folder (:func:`declare`) before its first job, and ``report`` reads it from there (:func:`for_results`),
so the family is the one declared before the numbers existed.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "endpoints.toml"  # benchmark/endpoints.toml: a user-facing file
DECLARED_NAME = "endpoints.toml"  # the copy in a results folder
ROLES = ("primary", "control")  # the sections of a protocol file
#: the roles a declared comparison takes: the primary family and the positive controls are each Holm-corrected
#: across tasks; a negative control ("expect = no difference") is tested alone at alpha, the stricter test for it
DECLARED = ("primary", "control", "negative")
FAMILIES = ("primary", "control")
EXPECT = ("higher", "lower", "no difference")


class EndpointsError(ValueError):
    """A protocol file that cannot be read or says something invalid (the message names the file and the entry)."""


@dataclass(frozen=True)
class Endpoint:
    """One declared comparison ``a - b`` on one metric."""

    a: str
    b: str
    metric: str
    role: str  # primary | control (positive) | negative (a control expected not to differ)
    expect: str = ""  # controls: what the benchmark must show


@dataclass(frozen=True)
class Endpoints:
    alpha: float
    split: str
    tasks: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    path: str = ""  # where it was read from, as given (the page names the file by its name only)
    sha256: str = ""
    text: str = field(default="", repr=False)

    def role(self, a: str, b: str, metric: str) -> Endpoint | None:
        """The declared endpoint for methods ``a`` - ``b`` on ``metric``, or None (exploratory)."""
        return next((e for e in self.endpoints if (e.a, e.b, e.metric) == (a, b, metric)), None)

    def of_role(self, role: str) -> list[Endpoint]:
        return [e for e in self.endpoints if e.role == role]

    def pairs(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((e.a, e.b) for e in self.endpoints))

    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for e in self.endpoints for m in (e.a, e.b)))

    def task_order(self, task: str) -> tuple[int, str]:
        return (self.tasks.index(task) if task in self.tasks else len(self.tasks), task)


def parse(text: str, where: str) -> Endpoints:
    """The protocol in ``text`` (TOML); ``where`` names it in messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EndpointsError(f"{where}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"alpha", "split", "tasks", *ROLES})
    if unknown:
        raise EndpointsError(f"{where}: unknown key(s) {unknown}; expected alpha, split, tasks, [[primary]], "
                             "[[control]]")
    alpha = data.get("alpha", 0.05)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise EndpointsError(f"{where}: alpha = {alpha!r} is invalid: expected a number in (0, 1)")
    tasks = data.get("tasks", [])
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise EndpointsError(f"{where}: tasks = {tasks!r} is invalid: expected a list of task names")
    out: list[Endpoint] = []
    for role in ROLES:
        entries = data.get(role, [])
        if not isinstance(entries, list):
            raise EndpointsError(f"{where}: {role} must be an array of tables ([[{role}]])")
        for i, entry in enumerate(entries):
            name = f"{where}: [[{role}]] #{i + 1}"
            if not isinstance(entry, dict):
                raise EndpointsError(f"{name} is not a table")
            extra = sorted(set(entry) - {"comparison", "metrics", "expect"})
            if extra:
                raise EndpointsError(f"{name}: unknown key(s) {extra}; expected comparison, metrics, expect")
            comparison = entry.get("comparison", "")
            a, sep, b = str(comparison).partition(" - ")
            if not sep or not a.strip() or not b.strip():
                raise EndpointsError(f"{name}: comparison = {comparison!r} is invalid: expected 'method - method', "
                                     "e.g. 'medi - cls'")
            metrics = entry.get("metrics")
            if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
                raise EndpointsError(f"{name}: metrics = {metrics!r} is invalid: expected a non-empty list, e.g. "
                                     "['worst20_group_accuracy']")
            expect = entry.get("expect", "higher" if role == "control" else "")
            if role == "control" and expect not in EXPECT:
                raise EndpointsError(f"{name}: expect = {expect!r} is invalid: expected one of {', '.join(EXPECT)}")
            for metric in metrics:
                kind = "negative" if role == "control" and expect == "no difference" else role
                endpoint = Endpoint(a.strip(), b.strip(), metric, kind, expect if role == "control" else "")
                if any((e.a, e.b, e.metric) == (endpoint.a, endpoint.b, metric) for e in out):
                    raise EndpointsError(f"{name}: {comparison} on {metric} is declared twice")
                out.append(endpoint)
    if not any(e.role == "primary" for e in out):
        raise EndpointsError(f"{where}: no [[primary]] comparison declared")
    return Endpoints(float(alpha), str(data.get("split", "test_unseen")), tuple(tasks), tuple(out), where,
                     hashlib.sha256(text.encode()).hexdigest(), text)


def load(path: Path | str | None = None) -> Endpoints:
    """The protocol in ``path`` (default: the shipped one); a missing or unreadable file is an EndpointsError."""
    path = Path(path) if path is not None else DEFAULT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EndpointsError(f"--endpoints {path}: cannot read it ({exc.strerror or exc})") from None
    return parse(text, str(path))


def declare(results_dir: Path | str, endpoints: Endpoints) -> Path:
    """Write the protocol into ``results_dir`` before its first run; a results folder that declared another
    protocol keeps it, and asking for a different one is an EndpointsError (nothing is overwritten)."""
    from benchmark.core.cache import atomic_write_text

    target = Path(results_dir) / DECLARED_NAME
    if target.is_file():
        existing = target.read_text(encoding="utf-8")
        if existing != endpoints.text:
            raise EndpointsError(f"{target} declares another protocol than {endpoints.path}: a results folder keeps "
                                 "the endpoints it was started with; use another --out, or the same file")
        return target
    atomic_write_text(target, endpoints.text)
    return target


def for_results(folders: list[Path], given: Path | str | None = None) -> tuple[Endpoints, str]:
    """The protocol a report uses and a note on where it came from: ``given`` if set, else the one declared in the
    first results folder that has one, else the shipped default."""
    declared = [f / DECLARED_NAME for f in folders if (f / DECLARED_NAME).is_file()]
    if given is not None:
        chosen = load(given)
        if declared and declared[0].read_text(encoding="utf-8") != chosen.text:
            return chosen, (f"endpoints from {Path(given).name}, NOT the protocol declared before the runs "
                            f"({declared[0].parent.name}/{DECLARED_NAME}): an analysis chosen afterwards")
        return chosen, f"endpoints from {Path(given).name}"
    if declared:
        return load(declared[0]), f"endpoints declared before the runs ({declared[0].parent.name}/{DECLARED_NAME})"
    return load(), "the shipped default endpoints (benchmark/endpoints.toml; no protocol declared in the results)"
