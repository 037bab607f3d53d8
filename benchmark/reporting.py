"""Leaderboards from run records: a self-contained HTML page and a PDF, plus the per-run figures.

The report is a function of the run records (``results.jsonl`` / ``record.json``; the verdict's paired tests work on
their per-replicate metrics) and of the ``samples.npz`` the runner leaves in each run directory (for sample grids).
Nothing is read from MLflow, so a report rebuilds offline. Every string that comes from data or metadata is escaped
by the template engine (jinja2 autoescape); figures are PNGs embedded as data URIs.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark import endpoints, stats
from benchmark.config import SEED_SOURCES
from benchmark.data import UNKNOWN
from benchmark.endpoints import Endpoints

log = logging.getLogger(__name__)

#: The methods a complete leaderboard has (any other registered or recorded method is shown too).
CANONICAL_METHODS: tuple[str, ...] = ("none", "stain_norm", "cyclegan", "cls", "medi")
#: the controls (methods/oracle.py, methods/duplicate.py): listed after the methods, never "missing"
CONTROL_METHODS: tuple[str, ...] = ("oracle", "duplicate")
#: How a method's training images are labelled in sample grids.
SAMPLE_LABELS = {
    "none": "real", "stain_norm": "stain-normalized", "cyclegan": "CycleGAN", "cls": "CLS", "medi": "MeDi",
    "medi_cg": "MeDi-CG",
}
TABLE_SPLITS: tuple[str, ...] = ("test_unseen", "test_seen")
#: (metric key, column title); all higher-is-better.
TABLE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("balanced_accuracy", "balanced acc.", "max"),
    ("worst_group_accuracy", "worst-group acc.", "max"),
    ("worst20_group_accuracy", "worst-20% groups acc.", "max"),
    ("site_balanced_accuracy", "site-avg. balanced acc.", "max"),
    ("shortcut_gap", "shortcut gap", "zero"),
)
#: (metric key, title, direction): the verdict's paired comparisons on test_unseen, one forest-plot panel each
VERDICT_METRICS: tuple[tuple[str, str, int], ...] = (
    ("balanced_accuracy", "balanced accuracy", 1),
    ("worst_group_accuracy", "worst-group accuracy", 1),
    ("worst20_group_accuracy", "worst-20% groups accuracy", 1),
    # the patches whose site mostly sent the other class: the ones a site shortcut gets wrong (benchmark.metrics)
    ("misaligned_balanced_accuracy", "misaligned balanced accuracy", 1),
    ("shortcut_gap", "shortcut gap", -1),
)
DEFAULT_GROUP_COLUMNS: tuple[str, ...] = ("cancer_type", "tissue_source_site", "race")
SAMPLES_FILE = "samples.npz"
SAMPLES_PER_CELL = 8
RECORD_SCHEMAS = (1, 2, 3)
NAN = float("nan")


class ReportError(RuntimeError):
    """The report cannot be built as asked (the message names the offending file or value)."""


# ---------------------------------------------------------------------------------------------------------------
# records


def load_records(results_dir: Path | str) -> list[dict]:
    """Every finished run under ``results_dir`` (results.jsonl and runs/*/*/*/record.json), one per run id.

    Each record gets ``_run_dir``: its run directory when it exists here (also after the results folder was moved),
    else None.
    """
    from benchmark.tracking import read_records

    results_dir = Path(results_dir)
    found: list[dict] = list(read_records(results_dir))
    for path in sorted(results_dir.glob("runs/*/*/*/record.json")):
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            log.warning("unreadable run record %s: %s", path, exc)
    by_id: dict[str, dict] = {}
    for rec in found:
        key = record_key(rec)
        if key not in by_id or str(rec.get("started", "")) >= str(by_id[key].get("started", "")):
            by_id[key] = rec
    out = []
    for rec in by_id.values():
        rec = dict(rec)
        rec["_run_dir"] = _locate_run_dir(rec, results_dir)
        out.append(rec)
    return sorted(out, key=lambda r: (str(r.get("task")), str(r.get("method")), _seed(r), str(r.get("run_id"))))


def record_key(rec: dict) -> str:
    """What makes two records the same run: its run id (its run directory for records without one)."""
    return str(rec.get("run_id") or rec.get("run_dir") or id(rec))


def _locate_run_dir(rec: dict, results_dir: Path) -> str | None:
    recorded = Path(str(rec.get("run_dir") or ""))
    candidates = []
    # the copy under this results folder first (a frozen or moved folder), then the recorded path
    if rec.get("task") and rec.get("method") and recorded.name:
        candidates.append(results_dir / "runs" / str(rec["task"]) / str(rec["method"]) / recorded.name)
    if rec.get("run_dir"):
        candidates.append(recorded)
    for path in candidates:
        if path.is_dir():
            return str(path)
    return None


def _seed(rec: dict) -> int:
    try:
        return int(rec.get("seed", 0))
    except (TypeError, ValueError):
        return 0


def validate_record(rec: Any) -> str | None:
    """Why a record cannot be used (None when it can)."""
    if not isinstance(rec, dict):
        return f"not a JSON object ({type(rec).__name__})"
    missing = [k for k in ("task", "method", "seed", "metrics", "config") if k not in rec]
    if missing:
        return f"missing field(s) {missing}"
    if rec.get("schema") not in RECORD_SCHEMAS:
        return f"unknown record schema {rec.get('schema')!r} (known: {list(RECORD_SCHEMAS)})"
    if not isinstance(rec["metrics"], dict) or not isinstance(rec["config"], dict):
        return "metrics and config must be objects"
    return None


def _value(rec: dict, key: str) -> float:
    v = rec.get("metrics", {}).get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return NAN
    return v if math.isfinite(v) else NAN


def _run_dir(rec: dict) -> Path | None:
    """A record's run directory here (``_run_dir`` from load_records, else the recorded one when it exists)."""
    path = rec.get("_run_dir") if "_run_dir" in rec else rec.get("run_dir")
    return Path(path) if path and Path(path).is_dir() else None


def replicate_of(rec: dict) -> dict:
    """A record's replicate: its seed, each source's seed, and which sources followed the seed. Records older than
    the replicate protocol (schema 1) fixed the split and the generative model and varied sampling and the probe."""
    rep = rec.get("replicate")
    if isinstance(rep, dict) and isinstance(rep.get("seeds"), dict):
        return rep
    cfg = rec.get("config") or {}
    seed = _seed(rec)
    split_seed = int((cfg.get("split") or {}).get("seed", 0))
    model_seed = int((cfg.get("method_params") or {}).get("train_seed", 0))
    return {"seed": seed, "seeds": {"split": split_seed, "model": model_seed, "sampling": seed, "probe": seed},
            "varied": ["sampling", "probe"]}


# ---------------------------------------------------------------------------------------------------------------
# structure: sections (task x setting) -> rows (method x variant) -> runs (seeds)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~])(?:~|/)(?:[\w.+-]+/)+([\w.+-]+)")


def machine_free(text: str) -> str:
    """``text`` with every absolute path cut to its file name: a committed report names no folder of the machine
    that made it (records keep what their runs wrote, a run's notes included)."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def metric_bounds(key: str) -> tuple[float, float] | None:
    """The range a metric cannot leave: [0, 1] for accuracies, fidelities and the robustness index, [-1, 1] for a
    difference of two accuracies (the shortcut gap, MCC), [0, inf) for a distance (FID); None for counts."""
    last = key.rsplit("/", 1)[-1]
    if last.startswith(("n_", "patients_")) or last in ("n", "cells", "dim", "small_n"):
        return None
    if "/fid/" in f"/{key}":
        return (0.0, math.inf)
    if last in ("shortcut_gap", "mcc"):
        return (-1.0, 1.0)
    if "accuracy" in last or "fidelity" in last or last == "robustness_index":
        return (0.0, 1.0)
    return None


@dataclass
class Row:
    method: str
    label: str
    runs: list[dict]

    @property
    def seeds(self) -> list[int]:
        return sorted(_seed(r) for r in self.runs)

    def stat(self, key: str) -> stats.Estimate:
        """Mean over the row's replicates with its 95% t interval, kept inside the range the metric cannot leave."""
        return stats.replicate_estimate([_value(r, key) for r in self.runs], bounds=metric_bounds(key))

    def by_replicate(self, key: str) -> dict[tuple[int, int, int], float]:
        """(replicate seed, cohort, split seed) -> value: what pairs two methods' runs (the same cohort, split and
        seeds). The cohort is the generator world the replicate drew (records older than seeds.cohort: the data's
        generator seed); 0 on a fixed cohort."""
        def pair(r: dict) -> tuple[int, int, int]:
            rep = replicate_of(r)
            cohort = rep.get("cohort_world", (r.get("config") or {}).get("data", {}).get("generator_seed", 0))
            return _seed(r), int(cohort or 0), int(rep["seeds"].get("split", 0))

        return {pair(r): _value(r, key) for r in self.runs}


@dataclass
class Section:
    task: str
    preset: str
    encoder: str
    data_source: str
    setting: dict[str, Any]  # what sets this section apart from the task's other sections
    rows: list[Row]
    classes: list[str]
    anchor: str = ""
    missing: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[dict]:
        return [r for row in self.rows for r in row.runs]

    def baseline(self) -> Row | None:
        return next((r for r in self.rows if r.method == "none"), None)

    def varied(self) -> list[str]:
        """The sources of randomness every record of the section varied with its replicate seed."""
        sets = [set(replicate_of(r).get("varied") or []) for r in self.records]
        common = set.intersection(*sets) if sets else set()
        return [s for s in SEED_SOURCES if s in common]

    def n_replicates(self) -> int:
        return max((len(row.runs) for row in self.rows), default=0)

    def fid_spaces(self) -> list[str]:
        spaces = {k.split("/")[1] for r in self.records for k in r["metrics"] if k.startswith("fid/")
                  and k.endswith("/mean") and k.count("/") == 2}
        return sorted(spaces, key=lambda s: (s != "inception", s))


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple)) else v
    return out


def _differing(dicts: Sequence[dict]) -> list[dict]:
    """For each dict, the items whose value is not the same in all of ``dicts``."""
    keys = sorted(set().union(*[d.keys() for d in dicts])) if dicts else []
    varying = [k for k in keys if len({json.dumps(d.get(k), sort_keys=True, default=str) for d in dicts}) > 1]
    return [{k: d.get(k) for k in varying} for d in dicts]


def _default_params(method: str, preset: str) -> dict[str, Any]:
    """The method's parameters for the preset as the code defines them now ({} when the method is not known here)."""
    import dataclasses

    try:
        from benchmark.registry import METHODS, load_plugins

        load_plugins()
        params = METHODS.get(method).default_params(preset) if method in METHODS else None
    except Exception as exc:  # a report must build without the method code
        log.debug("defaults of %r not available (%s)", method, exc)
        return {}
    if params is None or not dataclasses.is_dataclass(params):
        return {}
    return _flat(json.loads(json.dumps(dataclasses.asdict(params), default=list)))


def _method_order(method: str) -> tuple[int, str]:
    order = (*CANONICAL_METHODS, *CONTROL_METHODS)
    return (order.index(method) if method in order else len(order), method)


def build_sections(records: Sequence[dict], expected_methods: Sequence[str] = CANONICAL_METHODS) -> list[Section]:
    """Group valid records into sections (task x preset x data/split/probe settings) and rows (method x params)."""
    buckets: dict[tuple, list[dict]] = {}
    for rec in records:
        cfg = rec["config"]
        setting = {k: cfg.get(k, {}) for k in ("data", "split", "probe")}
        key = (str(rec["task"]), str(rec.get("preset", "")), json.dumps(setting, sort_keys=True, default=str))
        buckets.setdefault(key, []).append(rec)
    sections: list[Section] = []
    by_task: dict[str, list[tuple]] = {}
    for key in buckets:
        by_task.setdefault(key[0], []).append(key)
    for task in sorted(by_task):
        keys = sorted(by_task[task], key=lambda k: (k[1], k[2]))
        labels: dict[tuple, dict] = {}
        for preset in sorted({k[1] for k in keys}):  # the preset explains its own sizes: label what else differs
            same = [k for k in keys if k[1] == preset]
            labels.update(zip(same, _differing([_flat(json.loads(k[2])) for k in same]), strict=True))
        for key in keys:
            diff = labels[key]
            recs = buckets[key]
            variants: dict[tuple[str, str], list[dict]] = {}
            for rec in recs:
                params = json.dumps(rec["config"].get("method_params") or {}, sort_keys=True, default=str)
                variants.setdefault((str(rec["method"]), params), []).append(rec)
            rows = []
            for method in sorted({m for m, _ in variants}, key=_method_order):
                mine = sorted(p for m, p in variants if m == method)
                diffs = _differing([_flat(json.loads(p)) for p in mine])
                defaults = _default_params(method, key[1])
                for params, d in zip(mine, diffs, strict=True):
                    d = {**{k: v for k, v in _flat(json.loads(params)).items()
                            if k in defaults and json.dumps(v, default=str) != json.dumps(defaults[k], default=str)},
                         **d}  # what sets this row apart: non-default settings, and what differs between variants
                    label = method + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(d.items())) + ")" if d else "")
                    rows.append(Row(method, label, sorted(variants[(method, params)], key=_seed)))
            first = recs[0]
            classes = list(first.get("classes") or [])
            present = {row.method for row in rows}
            section = Section(
                task=task,
                preset=key[1],
                encoder=str(first["config"].get("probe", {}).get("encoder", first.get("encoder", ""))),
                data_source=_data_source(first["config"].get("data", {})),
                setting=diff,
                rows=rows,
                classes=classes,
                missing=[m for m in sorted(set(expected_methods), key=_method_order) if m not in present],
            )
            section.anchor = f"s{len(sections) + 1}-{''.join(c if c.isalnum() else '-' for c in task)}"
            sections.append(section)
    return sections


# ---------------------------------------------------------------------------------------------------------------
# tables


def _fmt(x: float, digits: int) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


@dataclass
class Cell:
    text: str
    mean: float
    low: float  # 95% t interval over replicates (NaN with one replicate)
    high: float
    n: int
    best: bool = False
    interval: str = ""  # "[low, high]", the first small line under the value (n > 1)
    notes: list[str] = field(default_factory=list)  # small lines under the value and its interval
    title: str = ""


def _interval(est: stats.Estimate, digits: int) -> str:
    if est.n == 0:
        return "n/a"
    if est.n < 2 or not math.isfinite(est.low):
        return _fmt(est.mean, digits)
    return f"{_fmt(est.mean, digits)} [{_fmt(est.low, digits)}, {_fmt(est.high, digits)}]"


def _cells(section: Section, key: str, digits: int, best: str) -> list[Cell]:
    """One cell per row: mean [95% interval] over replicates; ``best``: "max", "min" or "zero" (closest to 0)."""
    ests = [row.stat(key) for row in section.rows]
    score = {"max": lambda m: -m, "min": lambda m: m, "zero": abs}[best]
    scores = [score(e.mean) for e in ests if e.n and math.isfinite(e.mean)]
    target = min(scores) if scores else NAN
    tied = all(abs(v - target) <= 1e-12 for v in scores)  # nothing to single out
    cells = []
    for est in ests:
        if est.n == 0 or not math.isfinite(est.mean):
            cells.append(Cell("n/a", NAN, NAN, NAN, est.n))
            continue
        is_best = len(scores) > 1 and not tied and abs(score(est.mean) - target) <= 1e-12
        cell = Cell(_fmt(est.mean, digits), est.mean, est.low, est.high, est.n, is_best)
        if est.n > 1 and math.isfinite(est.low):
            cell.interval = f"[{_fmt(est.low, digits)}, {_fmt(est.high, digits)}]"
        cells.append(cell)
    return cells


def split_table(section: Section, split: str) -> dict:
    """Columns and rows of one split's table: mean [95% t interval] over replicates, the best mean marked."""
    columns: list[dict] = [{"key": f"{split}/{m}", "title": t, "metric": m, "kind": "acc", "best": b}
                           for m, t, b in TABLE_METRICS]
    if split == "test_unseen":
        if any(math.isfinite(_value(r, "train/robustness_index")) for r in section.records):
            # PathoROB's robustness index of the training set each method gives the probe (the encoder's space)
            columns.append({"key": "train/robustness_index", "title": "robustness index (train)",
                            "metric": "robustness_index", "kind": "ri", "best": "max"})
        for space in section.fid_spaces():
            columns.append({"key": f"fid/{space}/mean", "title": f"FID ({space})", "metric": f"fid/{space}",
                            "kind": "fid", "space": space, "best": "min"})
    grid = []
    for col in columns:
        fid = col["kind"] == "fid"
        cells = _cells(section, col["key"], 2 if fid else 3, col["best"])
        for row, cell in zip(section.rows, cells, strict=True):
            if fid and cell.n:
                n_real = row.stat(f"fid/{col['space']}/n_real").mean
                n_syn = row.stat(f"fid/{col['space']}/n_synthetic").mean
                small = sum(_value(r, f"fid/{col['space']}/small_n") > 0 for r in row.runs)
                cell.notes.append(f"n = {_fmt(n_real, 0)} real / {_fmt(n_syn, 0)} synth.")
                if small:
                    cell.notes.append("unstable: few images")
                    cell.title = "fewer images than feature dimensions in some cancer types: the estimate is biased " \
                                 "upward and unstable"
            elif cell.n == 1:
                run = row.runs[0]
                low, high = _value(run, f"{col['key']}/ci_low"), _value(run, f"{col['key']}/ci_high")
                if math.isfinite(low) and math.isfinite(high):
                    cell.notes.append(f"run: [{_fmt(low, 3)}, {_fmt(high, 3)}]")
                    cell.title = "one replicate: 95% interval of this run from a bootstrap over test patients; it " \
                                 "leaves out the variance between splits and trained models"
        grid.append(cells)
    rows = []
    for i, row in enumerate(section.rows):
        rows.append({"label": row.label, "method": row.method, "seeds": row.seeds, "n": len(row.runs),
                     "cells": [grid[j][i] for j in range(len(columns))]})
    return {"split": split, "columns": columns, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# the verdict: paired differences over replicates


def comparison_pairs(section: Section) -> list[tuple[Row, Row]]:
    """What the verdict compares: every row against ``none``, ``medi`` against ``cls`` (the paper's claim) and the
    guided variant ``medi_cg`` against ``medi``."""
    base = section.baseline()
    pairs = [(row, base) for row in section.rows if base is not None and row is not base]
    for a, b in (("medi", "cls"), ("medi_cg", "medi")):
        first = [r for r in section.rows if r.method == a]
        second = [r for r in section.rows if r.method == b]
        if len(first) == 1 and len(second) == 1:
            pairs.append((first[0], second[0]))
    return pairs


def resplit_ratio(section: Section) -> float:
    """0 when the section's replicates drew independent cohorts (the cohort seed varied on generated data); else
    n_test / n_train (test_unseen patients over training patients, averaged over the records), the overlap term of
    Nadeau & Bengio's corrected variance for re-splits of one cohort."""
    if "cohort" in section.varied():
        return 0.0
    ratios = []
    for rec in section.records:
        splits = (rec.get("data") or {}).get("splits") or {}
        n_test = (splits.get("test_unseen") or {}).get("patients")
        n_train = (splits.get("train") or {}).get("patients")
        if n_test and n_train:
            ratios.append(float(n_test) / float(n_train))
    return float(np.mean(ratios)) if ratios else 1.0  # unknown sizes: the cautious side (test as large as train)


def population(section: Section) -> str:
    """What population the section's verdict speaks for, in words."""
    if "cohort" in section.varied():
        return f"{section.n_replicates()} independent cohorts of the generator (a fresh population per replicate)"
    what = "the one generated cohort" if section.data_source.startswith("embedded") else "this cohort"
    return f"{what}, re-split {section.n_replicates()} times (the verdict speaks for {what}, not for new ones)"


def section_comparisons(section: Section, test: str = "t", split: str = "test_unseen",
                        protocol: Endpoints | None = None) -> list[stats.Comparison]:
    """Paired comparisons on ``split`` for every verdict metric, each with its role under ``protocol`` (the declared
    endpoints; default the shipped ones) and not yet Holm-adjusted: :func:`page_comparisons` adjusts the declared
    families across every section. FID (per feature space, lower is closer to the real images) is compared where
    both sides have one."""
    protocol = protocol or endpoints.load()
    pairs = comparison_pairs(section)
    ratio = resplit_ratio(section)
    named = [metric for metric, _, _ in VERDICT_METRICS]
    named += [e.metric for e in protocol.endpoints if e.metric not in named and not e.metric.startswith("fid/")]
    keys = [(metric, f"{split}/{metric}") for metric in dict.fromkeys(named)]
    keys += [(f"fid/{space}", f"fid/{space}/mean") for space in section.fid_spaces()]
    out: list[stats.Comparison] = []
    for metric, key in keys:
        mine = [(a, b) for a, b in pairs if not metric.startswith("fid/")
                or all(math.isfinite(v) for row in (a, b) for v in row.by_replicate(key).values())]
        for a, b in mine:
            va, vb = a.by_replicate(key), b.by_replicate(key)
            common = sorted(set(va) & set(vb))
            declared = protocol.role(a.method, b.method, metric) if (a.label, b.label) == (a.method, b.method) \
                else None
            c = stats.paired_comparison([va[k] for k in common], [vb[k] for k in common], metric, a.label, b.label,
                                        test, resplit_ratio=ratio)
            out.append(replace(c, role=declared.role if declared else "secondary", alpha=protocol.alpha))
    return out


def page_comparisons(sections: Sequence[Section], test: str = "t",
                     protocol: Endpoints | None = None) -> list[list[stats.Comparison]]:
    """Every section's comparisons with the declared families adjusted: Holm over the whole primary family across
    the sections (tasks), Holm over the controls likewise; secondary comparisons keep no p(Holm) (exploratory)."""
    protocol = protocol or endpoints.load()
    per = [section_comparisons(s, test, protocol.split, protocol) for s in sections]
    flat = [(i, j) for i, comps in enumerate(per) for j, _ in enumerate(comps)]
    for role in endpoints.FAMILIES:
        members = [(i, j) for i, j in flat if per[i][j].role == role and per[i][j].n > 0]
        m = len(members)
        family = [replace(per[i][j], family_size=m, needs=stats.min_replicates(per[i][j].test, protocol.alpha, m))
                  for i, j in members]
        for (i, j), c in zip(members, stats.adjust_family(family), strict=True):
            per[i][j] = c
    for i, j in flat:  # a negative control alone at alpha: the harder test for "must not differ"
        if per[i][j].role == "negative" and per[i][j].n > 0:
            per[i][j] = stats.adjust_family([per[i][j]])[0]
    return per


def verdict_metrics(comparisons: Sequence[stats.Comparison]) -> list[tuple[str, str, int]]:
    """(metric, title, direction) of the metrics ``comparisons`` cover, in the verdict's order; FID last."""
    out = [(m, t, d) for m, t, d in VERDICT_METRICS if any(c.metric == m for c in comparisons)]
    known = {m for m, _, _ in VERDICT_METRICS}
    # a user's protocol may declare any other metric of the records (higher taken as better)
    out += [(m, m.replace("_", " "), 1) for m in dict.fromkeys(c.metric for c in comparisons)
            if m not in known and not m.startswith("fid/")]
    fids = dict.fromkeys(c.metric for c in comparisons if c.metric.startswith("fid/"))
    return out + [(m, f"FID ({m.split('/', 1)[1]})", -1) for m in fids]


def metric_title(metric: str) -> str:
    return next((t for m, t, _ in VERDICT_METRICS if m == metric),
                f"FID ({metric.split('/', 1)[1]})" if metric.startswith("fid/") else metric)


def _verdict_word(c: stats.Comparison) -> str:
    if c.n < 2:
        return f"n/a: needs >= {max(c.needs, 2)} replicates"
    if c.role == "secondary":
        return "exploratory"
    if c.degenerate:
        return "t undefined: every difference equal"
    if not c.reachable:
        return f"n/a: needs >= {c.needs} replicates"
    if c.significant:
        return "higher" if c.delta > 0 else "lower"
    return "no significant difference"


def _mde_note(c: stats.Comparison) -> str:
    mde = c.mde()
    return f"MDE {mde:.3f}" if math.isfinite(mde) else ""


def oracle_fractions(section: Section, comparisons: Sequence[stats.Comparison],
                     split: str = "test_unseen") -> dict[tuple[str, str], stats.Fraction]:
    """(row label, metric) -> the row's gain over ``none`` as a share of the oracle's, for every row compared with
    ``none`` on the metrics of the declared endpoints (Fieller's interval over paired replicates)."""
    base = section.baseline()
    oracle = next((r for r in section.rows if r.method == "oracle" and r.label == "oracle"), None)
    if base is None or oracle is None:
        return {}
    metrics = {c.metric for c in comparisons if c.role in endpoints.DECLARED and not c.metric.startswith("fid/")}
    out = {}
    for metric in sorted(metrics):
        key = f"{split}/{metric}"
        vb, vo = base.by_replicate(key), oracle.by_replicate(key)
        for row in section.rows:
            if row is base or row is oracle:
                continue
            va = row.by_replicate(key)
            common = sorted(set(va) & set(vb) & set(vo))
            out[(row.label, metric)] = stats.fraction_of([va[k] - vb[k] for k in common],
                                                         [vo[k] - vb[k] for k in common])
    return out


def _fraction_text(f: stats.Fraction) -> str:
    if not math.isfinite(f.value):
        return ""
    if math.isfinite(f.low):
        return f"{100 * f.value:.0f}% of oracle [{100 * f.low:.0f}, {100 * f.high:.0f}]"
    return f"{100 * f.value:.0f}% of oracle (interval unbounded)"


def verdict_table(comparisons: Sequence[stats.Comparison],
                  fractions: dict[tuple[str, str], stats.Fraction] | None = None) -> dict:
    """Rows = comparisons, columns = verdict metrics; each cell: difference [interval], its role, Holm p (declared
    endpoints only), verdict, minimum detectable effect, and the share of the oracle's gain where there is one."""
    metrics = verdict_metrics(comparisons)
    names = list(dict.fromkeys((c.a, c.b) for c in comparisons))
    fractions = fractions or {}
    rows = []
    for a, b in names:
        cells = []
        for metric, _, _ in metrics:
            c = next((x for x in comparisons if (x.a, x.b) == (a, b) and x.metric == metric), None)
            if c is None or c.n == 0:
                none = "no paired replicates" if c is not None or not metric.startswith("fid/") else "no FID"
                cells.append({"text": "n/a", "interval": "", "notes": [none], "significant": False, "title": "",
                              "role": ""})
                continue
            interval = f"[{c.low:+.3f}, {c.high:+.3f}]" if math.isfinite(c.low) else ""
            declared = c.role in endpoints.DECLARED
            notes = [f"p(Holm) {_fmt_p(c.p_holm)[2:]}" if declared and c.reachable and math.isfinite(c.p_holm)
                     else "", _verdict_word(c), _mde_note(c)]
            if b == "none":
                notes.append(_fraction_text(fractions.get((a, metric), stats.Fraction(NAN, NAN, NAN, 0))))
            cells.append({"text": f"{c.delta:+.3f}", "interval": interval, "notes": [n for n in notes if n],
                          "significant": c.significant, "role": c.role,
                          "title": f"{c.role}; {c.n} paired replicates; {c.inference} p = {_fmt(c.p_t, 4)}, exact "
                                   f"sign-flip p = {_fmt(c.p_signflip, 4)}; Cohen's d_z = {_fmt(c.effect_size, 2)}; "
                                   f"MDE: the smallest true difference detected with 80% power"
                                   + (f" at alpha {c.alpha:g}/{c.family_size} (its family's first Holm step)"
                                      if declared else f" at alpha {c.alpha:g}")})
        n = max((c.n for c in comparisons if (c.a, c.b) == (a, b)), default=0)
        rows.append({"label": f"{a} − {b}", "n": n, "cells": cells})
    return {"columns": [t for _, t, _ in metrics], "rows": rows}


def verdict_sentences(section: Section, comparisons: Sequence[stats.Comparison], test: str) -> list[str]:
    """Sentences a reader can quote: the declared endpoints first (significant or, plainly, not, with the smallest
    difference the design would have detected), then the controls; the rest is exploratory."""
    n = max((c.n for c in comparisons), default=0)
    inference = comparisons[0].inference if comparisons else ("paired t" if test == "t" else "exact sign-flip")
    head = (f"{section.task}, test_unseen, {n} paired replicate(s) from {population(section)}; {inference}; Holm "
            f"over the declared primary family across tasks, and over the controls.")
    if not comparisons:
        return [head, "No comparison: the section has no run of none (and not both medi and cls)."]
    declared = [c for c in comparisons if c.role in endpoints.DECLARED]
    if declared and all(not c.reachable for c in declared):
        need = max(c.needs for c in declared)
        return [head, f"No difference can be tested with {n} replicate(s): the test needs >= {need} in this family."]
    out = [head]
    for role, word in (("primary", "Primary"), ("control", "Positive control"), ("negative", "Negative control")):
        mine = [c for c in comparisons if c.role == role]
        for c in mine:
            out.append(f"{word}: {c.a} − {c.b}, {metric_title(c.metric)}: {_finding(c)}")
    secondary = [c for c in comparisons if c.role == "secondary"]
    if secondary:
        out.append(f"{len(secondary)} other comparison(s) are exploratory: shown with their intervals, not tested.")
    return out


def _finding(c: stats.Comparison) -> str:
    interval = f" [{c.low:+.3f}, {c.high:+.3f}]" if math.isfinite(c.low) else ""
    if c.significant:
        return (f"{c.delta:+.3f}{interval}, {'higher' if c.delta > 0 else 'lower'} (p(Holm) "
                f"{_fmt_p(c.p_holm)[2:]}).")
    word = _verdict_word(c)
    mde = c.mde()
    bounds = metric_bounds(c.metric)
    if math.isfinite(mde) and bounds and math.isfinite(bounds[1]) and mde >= bounds[1] - bounds[0]:
        rules = (f"; the design's minimum detectable effect ({mde:.2f}) exceeds the metric's whole range: no true "
                 "difference would be detected with 80% power")
    elif math.isfinite(mde):
        rules = f"; a true difference of {mde:.3f} or more would have been detected with 80% power"
    else:
        rules = ""
    return f"{c.delta:+.3f}{interval}, {word}{rules}."


def task_summary(section: Section, comparisons: Sequence[stats.Comparison]) -> str:
    """The task's verdict in one sentence, for the first page."""
    prim = [c for c in comparisons if c.role == "primary" and c.n > 0]
    ctrl = [c for c in comparisons if c.role in ("control", "negative") and c.n > 0]
    kind = "independent cohorts" if resplit_ratio(section) == 0 else "one cohort re-split"
    head = f"{section.task} ({section.n_replicates()} replicates, {kind})"
    if not prim and not ctrl:
        return f"{head}: no declared endpoint has paired runs."
    sig = [c for c in prim if c.significant]
    parts = []
    if sig:
        parts.append("; ".join(f"{c.a} − {c.b} {metric_title(c.metric)} {c.delta:+.3f} (p(Holm) "
                               f"{_fmt_p(c.p_holm)[2:]})" for c in sig))
    rest = [c for c in prim if not c.significant]
    if rest:
        mdes = [c.mde() for c in rest if not c.metric.startswith("fid/")]
        mdes = [m for m in mdes if math.isfinite(m)]
        bound = (f" (minimum detectable effects {min(mdes):.2f}-{max(mdes):.2f}: smaller differences are not ruled "
                 "out)") if mdes else ""
        what = ", ".join(dict.fromkeys(f"{c.a} − {c.b}" for c in rest))
        parts.append(f"no significant difference for {what} on {len(rest)} primary endpoint(s){bound}")
    for c in ctrl:
        what = f"control {c.a} − {c.b} on {metric_title(c.metric)} {c.delta:+.3f}"
        if math.isfinite(c.low):
            what += f" [{c.low:+.3f}, {c.high:+.3f}]"
        parts.append(what + (f", p(Holm) {_fmt_p(c.p_holm)[2:]}" if c.significant else ", not significant"))
    return f"{head}: " + "; ".join(parts) + "."


def fid_table(section: Section) -> dict | None:
    """FID per cancer type and averaged, per method and feature space (mean ± SEM over seeds, bootstrap CIs)."""
    spaces = section.fid_spaces()
    if not spaces:
        return None
    cancer_types = [c for c in section.classes]
    extra = sorted({k.split("/")[2] for r in section.records for k in r["metrics"] if k.startswith("fid/")
                    and k.count("/") == 2} - set(cancer_types) - {"mean", "n_real", "n_synthetic", "dim", "small_n"})
    cancer_types += extra
    rows = []
    for space in spaces:
        for row in section.rows:
            if not any(math.isfinite(_value(r, f"fid/{space}/mean")) for r in row.runs):
                continue
            cells = []
            for ct in [*cancer_types, "mean"]:
                key = f"fid/{space}/{ct}"
                est = row.stat(key)
                mean, n = est.mean, est.n
                lows = [_value(r, f"{key}/ci_low") for r in row.runs]
                highs = [_value(r, f"{key}/ci_high") for r in row.runs]
                lows, highs = [x for x in lows if math.isfinite(x)], [x for x in highs if math.isfinite(x)]
                ci = f"CI [{_fmt(min(lows), 2)}, {_fmt(max(highs), 2)}]" if lows and highs else ""
                count = "" if ct == "mean" else f"n = {_fmt(row.stat(key + '/n_real').mean, 0)}"
                text = _interval(est, 2)
                cells.append({"text": text if n else "n/a", "ci": ci, "count": count, "mean": mean})
            rows.append({"space": space, "label": row.label, "cells": cells})
    return {"cancer_types": [*cancer_types, "mean"], "rows": rows}


COUNTERFACTUAL_CAPTION = (
    "Counterfactual quality against true patches: each generator's patches of the class x site x race "
    "combinations the training split lacks, against true patches of the same cells rendered by the embedded "
    "generator; fidelity: the share of patches that linear probes (trained on the real training patches and a "
    "separate draw of true patches) read as the class (site) asked for; the true patches' own fidelity is the "
    "ceiling. Mean [95% t interval] over replicates.")

#: the columns of the counterfactual-quality table: (metric key after ``counterfactual/``, title, digits)
COUNTERFACTUAL_COLUMNS = (
    ("class_fidelity", "class fidelity", 3),
    ("class_fidelity_true", "class fidelity, true patches", 3),
    ("site_fidelity", "site fidelity", 3),
    ("site_fidelity_true", "site fidelity, true patches", 3),
)


def counterfactual_table(section: Section) -> dict | None:
    """Per generative method: its patches of the combinations the training split lacks against true patches of
    the same cells (``benchmark.counterfactual``), mean [95% t interval] over replicates; None without such runs."""
    spaces = sorted({k.split("/")[2] for r in section.records for k in r["metrics"]
                     if k.startswith("counterfactual/fid/") and k.endswith("/mean")},
                    key=lambda s: (s != "inception", s))
    columns = [{"key": f"counterfactual/fid/{sp}/mean", "title": f"FID to true patches ({sp})", "digits": 2}
               for sp in spaces]
    columns += [{"key": f"counterfactual/{k}", "title": t, "digits": d} for k, t, d in COUNTERFACTUAL_COLUMNS]
    rows = []
    for row in section.rows:
        if not any(math.isfinite(_value(r, "counterfactual/class_fidelity")) for r in row.runs):
            continue
        cells = [_interval(row.stat(c["key"]), c["digits"]) for c in columns]
        n = row.stat("counterfactual/n")
        rows.append({"label": row.label, "n": len(row.runs), "cells": cells,
                     "patches": _fmt(n.mean, 0), "cells_n": _fmt(row.stat("counterfactual/cells").mean, 0)})
    if not rows:
        return None
    return {"columns": columns, "rows": rows}


def worst_groups(section: Section, split: str = "test_unseen", k: int = 3) -> list[dict]:
    """The k lowest-accuracy unflagged groups of each row, pooled over seeds."""
    out = []
    for row in section.rows:
        pooled: dict[str, list[int]] = {}
        flagged: dict[str, bool] = {}
        for rec in row.runs:
            for g in (rec.get("groups") or {}).get(split, []) or []:
                name = str(g.get("group"))
                acc = pooled.setdefault(name, [0, 0])
                acc[0] += int(g.get("n") or 0)
                acc[1] += int(g.get("correct") or 0)
                flagged[name] = flagged.get(name, True) and bool(g.get("flagged"))
        items = sorted(((c / n, n, g) for g, (n, c) in pooled.items() if n and not flagged[g]), key=lambda t: t[:2])
        for acc, n, g in items[:k]:
            out.append({"label": row.label, "group": g.replace("|", " | "), "n": n, "accuracy": _fmt(acc, 3)})
    return out


# ---------------------------------------------------------------------------------------------------------------
# figures


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _style():
    """Plot settings: no mathtext or TeX (so data labels such as '$x$' are drawn literally), compact fonts."""
    plt = _mpl()
    return plt.rc_context({"text.parse_math": False, "text.usetex": False, "font.size": 9, "axes.titlesize": 10,
                           "figure.dpi": 110, "savefig.dpi": 110, "svg.fonttype": "none"})


def _short(labels: Sequence[str], width: int = 22) -> list[str]:
    """Tick labels cut to ``width`` characters (the tables show them in full), kept distinct."""
    out: list[str] = []
    for label in labels:
        text = str(label) if len(str(label)) <= width else str(label)[: width - 1] + "…"
        while text in out:
            text += "'"
        out.append(text)
    return out


def _tight(fig) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "tight layout not applied": the figure is still readable
        fig.tight_layout()


def _png(fig) -> bytes:
    plt = _mpl()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class Figure:
    name: str  # file stem under reports/figures
    title: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def _data_source(data: dict) -> str:
    """Where a run's images came from, from its config's data section."""
    if data.get("manifest"):
        return "manifest " + Path(str(data["manifest"])).name
    return "tcga-ut" if data.get("root") else "embedded"


def _group_columns(task: str, records: Sequence[dict] = ()) -> tuple[str, ...]:
    """The columns a task's group names join: as its records say (a task from a file is not registered in the
    report's process), else as its registered definition says, else the defaults."""
    for rec in records:
        if rec.get("group_columns"):
            return tuple(rec["group_columns"])
    try:
        from benchmark.registry import TASKS, load_plugins

        load_plugins()
        if task in TASKS:
            return tuple(TASKS.get(task).group_columns)
    except Exception as exc:  # a report must build without the task code (e.g. a renamed task)
        log.debug("task %r not loadable (%s); default group columns", task, exc)
    return DEFAULT_GROUP_COLUMNS


def group_frame(groups: Iterable[dict], group_columns: Sequence[str]) -> pd.DataFrame:
    """Per-group rows (group, n, correct, ...) with the group split into ``group_columns``; n and correct summed."""
    rows = []
    for g in groups:
        parts = str(g.get("group", "")).split("|")
        if len(parts) != len(group_columns):
            raise ReportError(f"group {g.get('group')!r} does not have the {len(group_columns)} parts "
                              f"{list(group_columns)}")
        rows.append({**dict(zip(group_columns, parts, strict=True)), "n": int(g.get("n") or 0),
                     "correct": int(g.get("correct") or 0)})
    frame = pd.DataFrame(rows, columns=[*group_columns, "n", "correct"])
    return frame


def heatmap_png(panels: Sequence[tuple[str, pd.DataFrame]], column: str, classes: Sequence[str], title: str) -> bytes:
    """One heatmap per panel: accuracy by class (rows) x ``column`` (columns), pooled over the frame's groups."""
    import seaborn as sns

    plt = _mpl()
    values = sorted({str(v) for _, f in panels for v in f[column]})
    n = len(panels)
    width = min(18.0, max(5.5, 0.42 * len(values) + 2.2))
    height_each = 0.42 * max(1, len(classes)) + 1.1
    with _style():
        # constrained layout keeps the title clear of the first panel, however wide the figure (tight_layout did not)
        fig, axes = plt.subplots(n, 1, figsize=(width, height_each * n + 0.6), squeeze=False, layout="constrained")
        for ax, (name, frame) in zip(axes[:, 0], panels, strict=True):
            agg = frame.groupby(["cancer_type", column])[["n", "correct"]].sum()
            acc = (agg["correct"] / agg["n"]).unstack(column)
            acc = acc.reindex(index=list(classes) or sorted(acc.index), columns=values)
            few = len(values) <= 8  # few columns: long labels wrap onto lines; many: short labels, turned upright
            acc.columns = [textwrap.fill(v, 14) for v in _short(values, 28)] if few else _short(values)
            annot = acc.size <= 90
            sns.heatmap(acc.astype(float), ax=ax, vmin=0, vmax=1, cmap="viridis", annot=annot, fmt=".2f",
                        annot_kws={"fontsize": 7}, cbar=True, linewidths=0.5, linecolor="white",
                        cbar_kws={"label": "accuracy", "shrink": 0.8})
            ax.set_title(name, loc="left")
            ax.set_ylabel("class")
            ax.set_xlabel(column.replace("_", " "))
            upright = not few and max(len(str(c)) for c in acc.columns) > 3  # site codes stay level
            ax.tick_params(axis="x", labelrotation=90 if upright else 0)
            ax.tick_params(axis="y", labelrotation=0)
        fig.suptitle(title, x=0.01, ha="left", fontsize=10)
        return _png(fig)


def fid_png(frame: pd.DataFrame, title: str) -> bytes:
    """Bars of FID per cancer type and their mean, one hue per method, one panel per feature space."""
    import seaborn as sns

    plt = _mpl()
    spaces = list(dict.fromkeys(frame["space"]))
    order = list(dict.fromkeys(frame["cancer_type"]))
    with _style():
        fig, axes = plt.subplots(1, len(spaces), figsize=(min(16, 1.0 + 0.9 * len(order)) * len(spaces) ** 0.5 + 3,
                                                          3.4), squeeze=False)
        for ax, space in zip(axes[0], spaces, strict=True):
            part = frame[frame["space"] == space]
            sns.barplot(part, x="cancer_type", y="fid", hue="method", order=order, errorbar="se", ax=ax,
                        palette="colorblind", capsize=0.1, err_kws={"linewidth": 1})
            ax.set_title(f"feature space: {space}", loc="left")
            ax.set_xlabel("cancer type")
            ax.set_ylabel(f"FID ({space}), lower is better")
            ax.legend(title="method", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      frameon=False)
        fig.suptitle(title, x=0.01, ha="left", fontsize=10)
        _tight(fig)
        return _png(fig)


def forest_png(comparisons: Sequence[stats.Comparison], title: str) -> bytes:
    """One panel per verdict metric: each comparison's mean paired difference with its 95% interval; filled:
    significant after Holm, open: not, grey cross: not testable with this many replicates."""
    plt = _mpl()
    metrics = verdict_metrics(comparisons)
    names = list(dict.fromkeys(f"{c.a} − {c.b}" for c in comparisons))
    with _style():
        fig, axes = plt.subplots(1, len(metrics), figsize=(2.3 * len(metrics) + 1.6, 0.42 * len(names) + 1.3),
                                 sharey=True, squeeze=False)
        for ax, (metric, mtitle, direction) in zip(axes[0], metrics, strict=True):
            ax.axvline(0.0, color="#444", lw=0.8, zorder=1)
            for y, name in enumerate(names):
                c = next((x for x in comparisons if x.metric == metric and f"{x.a} − {x.b}" == name), None)
                if c is None or not math.isfinite(c.delta):
                    continue
                color = "#0a6b2c" if c.significant and c.delta * direction > 0 else \
                    "#b3261e" if c.significant else "#1f4e8c"
                if math.isfinite(c.low):
                    ax.plot([c.low, c.high], [y, y], color=color if c.reachable else "#999", lw=2, zorder=2)
                if not c.reachable:
                    ax.plot(c.delta, y, marker="x", color="#999", ms=6, zorder=3)
                else:
                    ax.plot(c.delta, y, marker="o", ms=6, zorder=3, color=color,
                            markerfacecolor=color if c.significant else "white")
            better = ("\n(lower: closer to real)" if metric.startswith("fid/") else "\n(lower: less shortcut)"
                      if direction < 0 else "\n(higher is better)")
            ax.set_title(mtitle + better, fontsize=9, loc="left")
            ax.set_xlabel("paired difference")
            ax.grid(axis="x", color="#e6e6e6", lw=0.6)
        axes[0][0].set_yticks(range(len(names)), _short(names, 26))
        axes[0][0].set_ylim(len(names) - 0.5, -0.5)
        fig.suptitle(title, x=0.01, ha="left", fontsize=10)
        _tight(fig)
        return _png(fig)


def ratio_png(frame: pd.DataFrame, baseline: float, title: str) -> bytes:
    """Balanced accuracy on test_unseen against the synthetic-to-real ratio, one line per method."""
    import seaborn as sns

    plt = _mpl()
    with _style():
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        sns.lineplot(frame, x="ratio", y="value", hue="method", marker="o", errorbar="se", ax=ax,
                     palette="colorblind")
        if math.isfinite(baseline):
            ax.axhline(baseline, ls="--", color="grey", lw=1, label="none (no augmentation)")
        ax.set_xlabel("synthetic / real training patches")
        ax.set_ylabel("balanced acc. (test_unseen)")
        ax.legend(fontsize=8)
        ax.set_title(title, loc="left")
        _tight(fig)
        return _png(fig)


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
    plt = _mpl()
    h, w = canvas.shape[:2]
    n_rows, n_cols = max(1, len(row_labels)), max(1, len(col_labels))
    with _style():
        fig, ax = plt.subplots(figsize=(min(16, 1.6 + w / 70), min(22, 0.8 + h / 70)))
        ax.imshow(canvas, interpolation="nearest")
        ax.set_yticks([(i + 0.5) * h / n_rows for i in range(len(row_labels))], _short(row_labels, 34))
        ax.set_xticks([(i + 0.5) * w / n_cols for i in range(len(col_labels))], _short(col_labels))
        ax.tick_params(length=0)
        ax.tick_params(axis="x", labelrotation=90 if max((len(s) for s in _short(col_labels)), default=0) > 12 else 0)
        ax.set_xlabel(col_title)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(title, loc="left")
        _tight(fig)
        return _png(fig)


# ---------------------------------------------------------------------------------------------------------------
# samples.npz: what a method trains on, for sample grids


def save_samples(split: Any, path: Path, synthetic_only: bool, per_cell: int = SAMPLES_PER_CELL, seed: int = 0) -> int:
    """Write up to ``per_cell`` images per (class, site) of ``split`` and their metadata to ``path``; the count.

    ``synthetic_only``: only the rows a generative method added; otherwise every row, as the method returned them
    (real for none, stain-normalized for stain_norm).
    """
    from benchmark.cache import atomic_write_bytes
    from benchmark.data import METADATA_COLUMNS

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
        raise ReportError(f"{path}: {len(images)} images but {len(meta)} metadata rows")
    for col in ("cancer_type", "tissue_source_site"):
        if len(meta) and col not in meta.columns:
            raise ReportError(f"{path}: metadata lacks column {col!r}")
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


# ---------------------------------------------------------------------------------------------------------------
# a section's figures


def section_figures(section: Section) -> tuple[list[Figure], list[str]]:
    """The section's figures and notes on figures that could not be drawn."""
    figures: list[Figure] = []
    notes: list[str] = []
    base = f"{section.anchor}"
    # 1. per-group accuracy heatmaps on test_unseen (class x site, class x race), pooled over seeds
    columns = _group_columns(section.task, section.records)
    try:
        panels = []
        for row in section.rows:
            groups = [g for r in row.runs for g in ((r.get("groups") or {}).get("test_unseen") or [])]
            if groups:
                panels.append((row.label, group_frame(groups, columns)))
        for column, what in (("tissue_source_site", "site"), ("race", "race")):
            if panels and column in columns and "cancer_type" in columns:
                png = heatmap_png(panels, column, section.classes,
                                  f"Accuracy per class x {what} on test_unseen (pooled over seeds)")
                figures.append(Figure(f"{base}-groups-{what}", f"Per-group accuracy: class x {what}",
                                      f"Accuracy of each class at each {what} on test_unseen, pooled over seeds; one "
                                      f"panel per method; empty cells: no such patches.", png))
    except ReportError as exc:
        notes.append(f"per-group heatmaps not drawn: {exc}")
    # 2. FID per cancer type, generative methods
    rows = []
    for space in section.fid_spaces():
        for row in section.rows:
            for rec in row.runs:
                for ct in [*section.classes, "mean"]:
                    v = _value(rec, f"fid/{space}/{ct}")
                    if math.isfinite(v):
                        rows.append({"space": space, "method": row.label, "cancer_type": ct, "fid": v})
    if rows:
        png = fid_png(pd.DataFrame(rows), "FID per cancer type, synthetic vs real test_unseen images")
        figures.append(Figure(f"{base}-fid", "FID per cancer type",
                              "Frechet distance between synthetic and real held-out images of the same class, site "
                              "and demographics, per cancer type and averaged; bars: mean over seeds, whiskers: SEM. "
                              "Lower is better; the feature space is named in each panel.", png))
    # 3. sample grids: real / normalized / synthetic training images per site
    sample_fig = _samples_figure(section)
    if isinstance(sample_fig, Figure):
        figures.append(sample_fig)
    elif sample_fig:
        notes.append(sample_fig)
    # 4. accuracy against the synthetic ratio, where runs vary it
    ratio_rows = []
    for row in section.rows:
        for rec in row.runs:
            n_real, n_syn = _value(rec, "train/n_real"), _value(rec, "train/n_synthetic")
            if row.method != "none" and math.isfinite(n_real) and n_real > 0 and math.isfinite(n_syn):
                ratio_rows.append({"method": row.method, "ratio": round(n_syn / n_real, 2),
                                   "value": _value(rec, "test_unseen/balanced_accuracy")})
    frame = pd.DataFrame(ratio_rows, columns=["method", "ratio", "value"])
    varied = [m for m, part in frame.groupby("method") if part["ratio"].nunique() > 1]
    if varied:
        base_row = section.baseline()
        baseline = base_row.stat("test_unseen/balanced_accuracy").mean if base_row else NAN
        png = ratio_png(frame[frame["method"].isin(varied)], baseline, "Accuracy against the synthetic ratio")
        figures.append(Figure(f"{base}-ratio", "Accuracy against the synthetic ratio",
                              "Balanced accuracy on test_unseen for runs that differ in how many synthetic patches "
                              "were added (mean ± SEM over seeds); dashed: no augmentation.", png))
    return figures, notes


def _samples_figure(section: Section, max_sites: int = 6, max_classes: int = 4) -> Figure | str | None:
    per_method: list[tuple[str, np.ndarray, pd.DataFrame]] = []
    missing = []
    for row in section.rows:
        found = None
        for rec in row.runs:
            path = _run_dir(rec) / SAMPLES_FILE if _run_dir(rec) else None
            if path is not None and path.is_file():
                try:
                    found = load_samples(path)
                except (OSError, ValueError, KeyError, ReportError) as exc:
                    log.warning("unreadable %s: %s", path, exc)
                    continue
                break
        if found is None or len(found[0]) == 0:
            missing.append(row.label)
            continue
        label = SAMPLE_LABELS.get(row.method, row.method)
        if label == row.method or row.label != row.method:
            label = row.label
        per_method.append((label, *found))
    if not per_method:
        return f"sample grid not drawn: no {SAMPLES_FILE} in the run directories" if section.rows else None
    classes = (section.classes or sorted({c for _, _, m in per_method for c in m["cancer_type"]}))[:max_classes]
    counts: dict[str, int] = {}  # site -> how many of the grid's rows (method x class) it would fill
    for _, _, meta in per_method:
        shown = meta[meta["cancer_type"].isin(classes)]
        for site in shown.drop_duplicates(["cancer_type", "tissue_source_site"])["tissue_source_site"]:
            counts[site] = counts.get(site, 0) + 1
    sites = sorted(sorted(s for s in counts if s != UNKNOWN), key=lambda s: -counts[s])[:max_sites]
    if UNKNOWN in counts:  # class-only generators (cls) make images of no particular site
        sites.append(UNKNOWN)
    cells, labels = {}, []
    for m, (label, images, meta) in enumerate(per_method):
        for k, ct in enumerate(classes):
            r = m * len(classes) + k
            labels.append(f"{label} · {ct}")
            for c, site in enumerate(sites):
                sel = ((meta["cancer_type"] == ct) & (meta["tissue_source_site"] == site)).to_numpy()
                if sel.any():
                    cells[(r, c)] = images[sel]
    columns = ["class only" if s == UNKNOWN else s for s in sites]
    png = grid_png(mosaic(cells, len(labels), max(1, len(sites))), labels, columns, "Training images per site")
    caption = ("Up to four training images per class and site as each method trains on them: real patches (none), "
               "stain-normalized ones, and synthetic ones for the generative methods; grey: none of that kind.")
    if missing:
        caption += " No samples for: " + ", ".join(missing) + "."
    return Figure(f"{section.anchor}-samples", "Sample grid", caption, png)


# ---------------------------------------------------------------------------------------------------------------
# the page


_CSS = """
:root { --fg: #1b1b1b; --muted: #575757; --line: #d5d5d5; --best: #0a6b2c; --head: #f3f5f8; --warn: #fff4d6; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { font-size: 15px; line-height: 1.45; font-family: "DejaVu Sans", "Segoe UI", Roboto, Arial, sans-serif;
       color: var(--fg);
       margin: 0 auto; max-width: 1120px; padding: 1rem 1.25rem 3rem; background: #fff; }
h1 { font-size: 1.55rem; margin: .2rem 0 .3rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .3rem; padding-top: .6rem; border-top: 2px solid #1b1b1b; }
h3 { font-size: 1.02rem; margin: 1.2rem 0 .3rem; }
p, li { max-width: 75ch; }
.meta, figcaption, .legend { color: var(--muted); font-size: .86rem; }
code { font-family: "DejaVu Sans Mono", ui-monospace, monospace; font-size: .88em; background: #f2f2f2;
       padding: 0 .2em; overflow-wrap: anywhere; }
nav ul { padding-left: 1.1rem; margin: .3rem 0; }
.notice { background: var(--warn); border-left: 4px solid #d99a00; padding: .5rem .75rem; margin: .6rem 0; }
.table-wrap { overflow-x: auto; margin: .4rem 0 .8rem; max-width: 100%; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-size: .86rem; color: var(--muted); padding: .2rem 0; }
th, td { padding: .3rem .55rem; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { background: var(--head); font-weight: 600; }
tbody th { background: none; }
th:first-child, td:first-child, td.group, .space { text-align: left; }
td.num, td.seeds { white-space: nowrap; }
td.best, td.significant { color: var(--best); font-weight: 700; }
.mark { font-size: .85em; margin-left: .15em; }
.sub { display: block; font-size: .8em; color: var(--muted); font-weight: 400; white-space: nowrap; }
table.comparisons td.num { white-space: normal; min-width: 8.5em; }
table.comparisons .sub { white-space: normal; }
table.comparisons .sub.interval { white-space: nowrap; color: inherit; font-size: .9em; }
figure { margin: 1rem 0 1.4rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e6e6e6; }
.empty { margin-top: 2rem; }
@media (max-width: 640px) {
  body { font-size: 14px; padding: .6rem .6rem 2rem; }
  th, td { padding: .25rem .35rem; }
  h1 { font-size: 1.3rem; }
}
@page { size: A4; margin: 14mm 11mm 16mm;
  @bottom-center { content: "MeDiBench leaderboard · page " counter(page) " of " counter(pages);
                   font: 8pt "DejaVu Sans", Arial, sans-serif; color: #666; } }
@media print {
  body { max-width: none; padding: 0; font-size: 9pt; }
  h2 { border-top: none; margin-top: 0; }
  section.task { break-before: page; }  /* page 1: the verdict across tasks, the contents and the legend */
  .table-wrap { overflow: visible; }
  table { font-size: 7.6pt; width: 100%; }
  th, td { padding: .15rem .3rem; }
  thead { display: table-header-group; }
  tr, figure, .notice { break-inside: avoid; }
  h2, h3, caption { break-after: avoid; }
  figure img { max-height: 150mm; width: auto; max-width: 100%; }
  a { color: inherit; text-decoration: none; }
}
"""

#: the page's jinja2 template (autoescaped), beside this module
TEMPLATE_FILE = Path(__file__).with_name("leaderboard.html.j2")


def _section_context(section: Section, test: str, comparisons: list[stats.Comparison]) -> dict:
    from benchmark.fid import fid_config

    figures, fig_notes = section_figures(section)
    notices = []
    if section.missing:
        notices.append("No records for " + ", ".join(section.missing) + " on this task and setting: those methods "
                       "are not in the tables (run them, e.g. python -m benchmark run --method "
                       f"{section.missing[0]} --task {section.task} --preset {section.preset}).")
    if section.baseline() is None:
        notices.append("No run of the baseline none: no paired tests.")
    notices += fig_notes
    fid_notes: dict[str, list[str]] = {}  # a left-out feature space or cancer type -> the methods it concerns
    for row in section.rows:
        for rec in row.runs:
            for note in ((rec.get("method_report") or {}).get("fid") or {}).get("notes", []):
                if "left out" in str(note) and row.label not in fid_notes.setdefault(str(note), []):
                    fid_notes[str(note)].append(row.label)
    notices += [f"{note} (runs of {', '.join(labels)})" for note, labels in fid_notes.items()]
    setting = ", ".join(f"{k}={v}" for k, v in section.setting.items() if k != "preset")
    heading = f"Task {section.task} · preset {section.preset} · encoder {section.encoder}"
    if setting:
        heading += f" · {setting}"
    seeds = sorted({_seed(r) for r in section.records})
    varied = section.varied()
    description = (f"{len(section.rows)} method variant(s), {len(section.records)} run(s), replicate seeds "
                   f"{', '.join(map(str, seeds))}, each varying {', '.join(varied) or 'nothing'}; classes "
                   f"{', '.join(section.classes) or 'n/a'}; data {section.data_source}.")
    if section.preset == "smoke":
        notices.insert(0, "Smoke preset: tiny data and models that only check the code runs end to end. These "
                       "numbers are not results.")
    for row in section.rows:  # each method's code is part of its identity: its replicates must share one version
        codes = sorted({str(r.get("code_version")) for r in row.runs if r.get("code_version")})
        if len(codes) > 1:
            notices.append(f"The replicates of {row.label} come from {len(codes)} code versions ({', '.join(codes)}):"
                           " their numbers may not be comparable; re-run them with one version of the code.")
    forest = None
    if any(math.isfinite(c.delta) for c in comparisons):
        inference = comparisons[0].inference
        forest = Figure(f"{section.anchor}-verdict", "Paired differences on test_unseen",
                        f"Mean paired difference over replicates with its 95% interval ({inference}), one panel per "
                        f"metric; filled: a declared endpoint that is significant (Holm over its family across "
                        f"tasks, alpha {comparisons[0].alpha:g}); open: not significant, or exploratory (not "
                        f"tested); grey cross: not testable with this many replicates. Green: better than the "
                        f"reference, red: worse.",
                        forest_png(comparisons, f"{section.task}: method − reference"))
        figures.insert(0, forest)
    fractions = oracle_fractions(section, comparisons)
    tables = []
    for split in TABLE_SPLITS:
        t = split_table(section, split)
        t["caption"] = (f"{split}: held-out site x demographic combinations (never seen in training)"
                        if split == "test_unseen" else f"{split}: patients from training combinations")
        if any(c["key"] == "train/robustness_index" for c in t["columns"]):
            t["caption"] += ("; robustness index (train): PathoROB's index of the training set the method gives the "
                             "probe, in the encoder's space (1: neighbours share the class across sites, 0: they "
                             "share the site across classes; random neighbours give (S-1)/S for S sites)")
        tables.append(t)
    cfg_preset = fid_config(section.preset)
    return {
        "anchor": section.anchor, "task": section.task, "heading": heading, "description": description,
        "notices": list(dict.fromkeys(machine_free(n) for n in notices)), "tables": tables,
        "fid": fid_table(section), "fid_ci": cfg_preset.ci,
        "counterfactual": counterfactual_table(section),
        "worst": worst_groups(section), "group_columns": _group_columns(section.task, section.records),
        "figures": [f for f in figures if f is not forest], "forest": forest,
        "verdict": verdict_sentences(section, comparisons, test),
        "comparisons": verdict_table(comparisons, fractions), "summary": task_summary(section, comparisons),
    }


def family_statement(protocol: Endpoints, comparisons: Sequence[Sequence[stats.Comparison]], where: str) -> list[str]:
    """What the page tests and how, in words: the declared families and their sizes, and where they come from."""
    flat = [c for comps in comparisons for c in comps]
    lines = []
    for role, what in (("primary", "Primary family"), ("control", "Positive controls"),
                       ("negative", "Negative controls")):
        mine = protocol.of_role(role)
        if not mine:
            continue
        tested = [c for c in flat if c.role == role and c.n > 0]
        pairs = dict.fromkeys(f"{e.a} − {e.b} on {metric_title(e.metric)}" for e in mine)
        how = "each alone at alpha (the stricter test for 'must not differ')" if role == "negative" else \
            "Holm across tasks"
        lines.append(f"{what} ({len(tested)} comparison(s) with paired runs, {how}, alpha {protocol.alpha:g}): "
                     f"{'; '.join(pairs)}.")
    lines.append(f"Protocol: {where} (SHA-256 {protocol.sha256[:12]}). Every other comparison is exploratory: "
                 "shown with its 95% interval and its minimum detectable effect (MDE: the smallest true difference "
                 "the design detects with 80% power), never starred.")
    return lines


@dataclass
class Report:
    """A rendered leaderboard: the HTML page and its figures."""

    html: str
    figures: list[Figure]
    sections: list[Section]
    skipped: list[dict]


def render(
    records: Sequence[dict],
    source: str = "results",
    expected_methods: Sequence[str] = CANONICAL_METHODS,
    test: str = "t",
    title: str = "MeDiBench leaderboard",
    now: datetime | None = None,
    protocol: Endpoints | None = None,
    protocol_note: str = "the shipped default endpoints",
) -> Report:
    """The leaderboard page of ``records`` (invalid ones are listed on the page, not used)."""
    from jinja2 import Environment, StrictUndefined
    from markupsafe import Markup

    from benchmark import __version__

    valid, skipped = [], []
    for rec in records:
        reason = validate_record(rec)
        if reason:
            name = rec.get("name") or rec.get("run_id") if isinstance(rec, dict) else None
            skipped.append({"name": str(name or "?"), "reason": reason})
            log.warning("record %s left out of the report: %s", name, reason)
        else:
            valid.append(rec)
    protocol = protocol or endpoints.load()
    sections = sorted(build_sections(valid, expected_methods), key=lambda s: protocol.task_order(s.task))
    if test not in stats.TESTS:
        raise ReportError(f"unknown test {test!r}; choose from: {', '.join(stats.TESTS)}")
    comparisons = page_comparisons(sections, test, protocol)
    contexts = [_section_context(s, test, c) for s, c in zip(sections, comparisons, strict=True)]
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=False, lstrip_blocks=False)
    html = env.from_string(TEMPLATE_FILE.read_text(encoding="utf-8")).render(
        title=title, css=Markup(_CSS), version=__version__, source=source, n_records=len(valid), skipped=skipped,
        generated=(now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        test_name="paired t-test" if test == "t" else "exact sign-flip permutation test",
        commits=sorted({str(r.get("git_commit")) for r in valid if r.get("git_commit")}), sections=contexts,
        family=family_statement(protocol, comparisons, protocol_note), counterfactual_caption=COUNTERFACTUAL_CAPTION,
    )
    figures = [f for c in contexts for f in ([c["forest"]] if c["forest"] else []) + c["figures"]]
    return Report(html, figures, sections, skipped)


def write_pdf(html: str, path: Path) -> Path:
    """The page printed to PDF with weasyprint (print styles: A4, one task per page, page numbers)."""
    for name in ("weasyprint", "fontTools"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from weasyprint import HTML

    from benchmark.cache import atomic_path

    with atomic_path(path) as tmp:
        HTML(string=html).write_pdf(tmp)
    return path


def mixed_code(records: Sequence[dict]) -> list[str]:
    """One line per method and task whose records come from more than one version of the code that decides their
    numbers (the ``code_version`` in the run hash): their replicates may not be comparable."""
    versions: dict[tuple[str, str, str], set[str]] = {}
    for rec in records:
        if isinstance(rec, dict) and rec.get("code_version"):
            key = (str(rec.get("task")), str(rec.get("preset")), str(rec.get("method")))
            versions.setdefault(key, set()).add(str(rec["code_version"]))
    return [f"{method} on {task} ({preset}): {len(codes)} code versions ({', '.join(sorted(codes))})"
            for (task, preset, method), codes in sorted(versions.items()) if len(codes) > 1]


def markdown(sections: Sequence[Section], source: str, test: str = "t", protocol: Endpoints | None = None,
             protocol_note: str = "the shipped default endpoints") -> str:
    """The leaderboard's verdict and test_unseen table per task as Markdown (``leaderboard.md``): what a README or a
    paper quotes, with the same numbers as the page."""
    protocol = protocol or endpoints.load()
    all_comparisons = page_comparisons(sections, test, protocol)
    lines = ["# MeDiBench leaderboard: the verdicts", "", f"Run records: {source}.", "", "## Verdict across tasks", ""]
    lines += [f"- {task_summary(s, c)}" for s, c in zip(sections, all_comparisons, strict=True)] + [""]
    lines += family_statement(protocol, all_comparisons, protocol_note) + [""]
    for section, comparisons in zip(sections, all_comparisons, strict=True):
        setting = ", ".join(f"{k}={v}" for k, v in sorted(section.setting.items()))
        lines += [f"## {section.task}, preset {section.preset}" + (f" ({setting})" if setting else ""), ""]
        sentences = verdict_sentences(section, comparisons, test)
        lines += [sentences[0], ""] + [f"- {s}" for s in sentences[1:]] + [""]
        if comparisons:
            table = verdict_table(comparisons, oracle_fractions(section, comparisons))
            lines += ["| difference (n) | " + " | ".join(table["columns"]) + " |",
                      "|---|" + "---|" * len(table["columns"])]
            for row in table["rows"]:
                cells = ["; ".join([" ".join(filter(None, [c["text"], c["interval"]])), *c["notes"][:1]])
                         + "".join(f", {n}" for n in c["notes"][1:]) for c in row["cells"]]
                lines.append(f"| {row['label']} ({row['n']}) | " + " | ".join(cells) + " |")
            lines.append("")
        table = split_table(section, "test_unseen")
        lines += ["test_unseen, mean [95% t interval] over replicates:", "",
                  "| method (n) | " + " | ".join(c["title"] for c in table["columns"]) + " |",
                  "|---|" + "---|" * len(table["columns"])]
        for row in table["rows"]:
            cells = [" ".join(filter(None, [c.text, c.interval])) for c in row["cells"]]
            lines.append(f"| {row['label']} ({row['n']}) | " + " | ".join(cells) + " |")
        lines.append("")
        cf = counterfactual_table(section)
        if cf:
            lines += [COUNTERFACTUAL_CAPTION, "",
                      "| method (n) | " + " | ".join(c["title"] for c in cf["columns"]) + " |",
                      "|---|" + "---|" * len(cf["columns"])]
            lines += [f"| {r['label']} ({r['n']}) | " + " | ".join(r["cells"]) + " |" for r in cf["rows"]]
            lines.append("")
    return "\n".join(lines)


def read_folders(folders: Sequence[Path]) -> list[dict]:
    """The run records of every folder, one per run id; a missing or empty folder is a ReportError naming it."""
    records: list[dict] = []
    seen: set[str] = set()
    for folder in folders:
        if not folder.exists():
            raise ReportError(f"--results {folder}: no such folder")
        if not folder.is_dir():
            raise ReportError(f"--results {folder} is not a folder")
        found = load_records(folder)
        if not found:
            raise ReportError(f"--results {folder}: no run records there (results.jsonl or "
                              "runs/<task>/<method>/<run>/record.json); nothing written")
        for rec in found:
            if record_key(rec) not in seen:
                seen.add(record_key(rec))
                records.append(rec)
    return records


def power_plan(results_dir: Path | str | Sequence[Path | str], effect: float, test: str = "t",
               endpoints_file: Path | str | None = None, power: float = 0.8) -> list[str]:
    """How many replicates each declared endpoint needs to detect a true difference of ``effect`` with ``power``,
    from the SD of its paired differences in the records (a pilot) and its family's first Holm level."""
    folders = [Path(results_dir)] if isinstance(results_dir, (str, Path)) else [Path(d) for d in results_dir]
    if not (math.isfinite(effect) and effect > 0):
        raise ReportError(f"--power {effect}: expected a difference > 0 (e.g. 0.05 for five accuracy points)")
    records = [r for r in read_folders(folders) if validate_record(r) is None]
    try:
        protocol, note = endpoints.for_results(folders, endpoints_file)
    except endpoints.EndpointsError as exc:
        raise ReportError(str(exc)) from None
    sections = sorted(build_sections(records), key=lambda s: protocol.task_order(s.task))
    out = [f"replicates needed for a true difference of {effect:g} at {100 * power:.0f}% power ({note}):"]
    for section, comparisons in zip(sections, page_comparisons(sections, test, protocol), strict=True):
        for c in comparisons:
            if c.role not in endpoints.DECLARED:
                continue
            alpha = c.alpha / max(1, c.family_size)
            if c.n < 2 or not (math.isfinite(c.sd) and c.sd > 0):
                out.append(f"  {section.task}: {c.a} − {c.b}, {metric_title(c.metric)}: no variance estimate "
                           f"({c.n} paired replicate(s))")
                continue
            need = stats.replicates_needed(effect, c.sd, alpha, power, c.resplit_ratio)
            mde = c.mde(power)
            verdict = (f"{need} replicates" if need is not None else
                       "no replicate count suffices (re-splits of one cohort: the corrected variance does not "
                       "shrink below (n_test/n_train) s^2)")
            out.append(f"  {section.task}: {c.a} − {c.b}, {metric_title(c.metric)} (SD of differences {c.sd:.3f} "
                       f"over {c.n}, alpha {alpha:.4f}): {verdict}; MDE now {mde:.3f}")
    return out


def _shown_path(folder: Path) -> str:
    """A results folder as the page names it: as given when relative; an absolute path by its last two parts, so a
    committed report carries no paths of the machine that made it."""
    return str(folder) if not folder.is_absolute() else "/".join(folder.parts[-2:])


def write_report(
    results_dir: Path | str | Sequence[Path | str],
    out_dir: Path | str,
    expected_methods: Sequence[str] = CANONICAL_METHODS,
    test: str = "t",
    pdf: bool = True,
    allow_mixed_code: bool = False,
    endpoints_file: Path | str | None = None,
) -> dict[str, Any]:
    """Write ``leaderboard.html``, ``leaderboard.pdf``, ``leaderboard.md`` (the verdicts and test_unseen tables, for
    a README) and ``figures/*.png`` under ``out_dir``; what was written.
    ``results_dir`` may be several folders (for example two frozen grids): their records are read together, one per
    run id. Records of one method made by different code are a ReportError unless ``allow_mixed_code`` (then the
    page says so beside that method)."""
    from benchmark.cache import atomic_write_bytes, atomic_write_text

    folders = [Path(results_dir)] if isinstance(results_dir, (str, Path)) else [Path(d) for d in results_dir]
    out_dir = Path(out_dir)
    records = read_folders(folders)
    source = ", ".join(_shown_path(f) for f in folders)
    try:
        protocol, protocol_note = endpoints.for_results(folders, endpoints_file)
    except endpoints.EndpointsError as exc:
        raise ReportError(f"{exc}; nothing written") from None
    mixed = mixed_code(records)
    if mixed and not allow_mixed_code:
        more = f" (and {len(mixed) - 1} more)" if len(mixed) > 1 else ""
        raise ReportError(f"--results {source}: the records of {mixed[0]}{more} may not be comparable; re-run "
                          "them with one version of the code, or pass --mixed-code to report them with a notice; "
                          "nothing written")
    report = render(records, source, expected_methods, test, protocol=protocol, protocol_note=protocol_note)
    html_path = out_dir / "leaderboard.html"
    atomic_write_text(html_path, report.html)
    atomic_write_text(out_dir / "leaderboard.md", markdown(report.sections, source, test, protocol, protocol_note))
    for fig in report.figures:
        atomic_write_bytes(out_dir / "figures" / f"{fig.name}.png", fig.png)
    pdf_path = write_pdf(report.html, out_dir / "leaderboard.pdf") if pdf else None
    return {
        "html": html_path, "pdf": pdf_path, "figures": len(report.figures), "records": sum(
            len(s.records) for s in report.sections), "skipped": report.skipped,
        "sections": [(s.task, s.preset, [r.label for r in s.rows], s.missing) for s in report.sections],
    }


# ---------------------------------------------------------------------------------------------------------------
# per-run figures (the runner logs them as MLflow artifacts)


def run_figures(
    train: Any, groups: dict[str, list[dict]], run_dir: Path, title: str, synthetic_only: bool, seed: int,
    group_columns: Sequence[str], classes: Sequence[str], log_artifact: Callable[..., None] | None = None,
) -> list[Path]:
    """Write samples.npz, figures/samples.png and figures/groups_test_unseen_{site,race}.png for one run."""
    out: list[Path] = []
    samples = run_dir / SAMPLES_FILE
    save_samples(train, samples, synthetic_only, SAMPLES_PER_CELL, seed)
    out.append(samples)
    images, meta = load_samples(samples)
    kind = "synthetic" if synthetic_only else "training"
    figures = {"samples.png": sample_grid_png(images, meta, f"{title}: {kind} images per site", classes=classes)}
    rows = groups.get("test_unseen") or []
    if rows and len(str(rows[0].get("group", "")).split("|")) == len(group_columns):
        frame = group_frame(rows, group_columns)
        for column, what in (("tissue_source_site", "site"), ("race", "race")):
            if column in group_columns and "cancer_type" in group_columns:
                figures[f"groups_test_unseen_{what}.png"] = heatmap_png(
                    [(title, frame)], column, classes, f"Accuracy per class x {what} on test_unseen")
    for name, png in figures.items():
        path = run_dir / "figures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        out.append(path)
    if log_artifact is not None:
        for path in out:
            log_artifact(path, "figures" if path.suffix == ".png" else None)
    return out
