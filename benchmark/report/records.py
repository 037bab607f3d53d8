"""Run records and their structure: load and validate the records of results folders, group them into sections
(task x setting), rows (method x variant) and runs (replicates).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.core.config import SEED_SOURCES
from benchmark.evaluation import stats

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
    # the patches whose site mostly sent the other class: the ones a site shortcut gets wrong (evaluation.metrics)
    ("misaligned_balanced_accuracy", "misaligned balanced accuracy", 1),
    ("shortcut_gap", "shortcut gap", -1),
)


DEFAULT_GROUP_COLUMNS: tuple[str, ...] = ("cancer_type", "tissue_source_site", "race")


RECORD_SCHEMAS = (1, 2, 3)


NAN = float("nan")


class ReportError(RuntimeError):
    """The report cannot be built as asked (the message names the offending file or value)."""


def load_records(results_dir: Path | str) -> list[dict]:
    """Every finished run under ``results_dir`` (results.jsonl and runs/*/*/*/record.json), one per run id.

    Each record gets ``run_dir_of``: its run directory when it exists here (also after the results folder was moved),
    else None.
    """
    from benchmark.core.tracking import read_records

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
        rec["run_dir_of"] = _locate_run_dir(rec, results_dir)
        out.append(rec)
    return sorted(out, key=lambda r: (str(r.get("task")), str(r.get("method")), seed_of(r), str(r.get("run_id"))))


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


def seed_of(rec: dict) -> int:
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


def metric_value(rec: dict, key: str) -> float:
    v = rec.get("metrics", {}).get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return NAN
    return v if math.isfinite(v) else NAN


def run_dir_of(rec: dict) -> Path | None:
    """A record's run directory here (``run_dir_of`` from load_records, else the recorded one when it exists)."""
    path = rec.get("run_dir_of") if "run_dir_of" in rec else rec.get("run_dir")
    return Path(path) if path and Path(path).is_dir() else None


def replicate_of(rec: dict) -> dict:
    """A record's replicate: its seed, each source's seed, and which sources followed the seed. Records older than
    the replicate protocol (schema 1) fixed the split and the generative model and varied sampling and the probe."""
    rep = rec.get("replicate")
    if isinstance(rep, dict) and isinstance(rep.get("seeds"), dict):
        return rep
    cfg = rec.get("config") or {}
    seed = seed_of(rec)
    split_seed = int((cfg.get("split") or {}).get("seed", 0))
    model_seed = int((cfg.get("method_params") or {}).get("train_seed", 0))
    return {"seed": seed, "seeds": {"split": split_seed, "model": model_seed, "sampling": seed, "probe": seed},
            "varied": ["sampling", "probe"]}


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
        return sorted(seed_of(r) for r in self.runs)

    def stat(self, key: str) -> stats.Estimate:
        """Mean over the row's replicates with its 95% t interval, kept inside the range the metric cannot leave."""
        return stats.replicate_estimate([metric_value(r, key) for r in self.runs], bounds=metric_bounds(key))

    def by_replicate(self, key: str) -> dict[tuple[int, int, int], float]:
        """(replicate seed, cohort, split seed) -> value: what pairs two methods' runs (the same cohort, split and
        seeds). The cohort is the generator world the replicate drew (records older than seeds.cohort: the data's
        generator seed); 0 on a fixed cohort."""
        def pair(r: dict) -> tuple[int, int, int]:
            rep = replicate_of(r)
            cohort = rep.get("cohort_world", (r.get("config") or {}).get("data", {}).get("generator_seed", 0))
            return seed_of(r), int(cohort or 0), int(rep["seeds"].get("split", 0))

        return {pair(r): metric_value(r, key) for r in self.runs}


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
        from benchmark.core.registry import METHODS
        from benchmark.plugins import load_plugins

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
                    rows.append(Row(method, label, sorted(variants[(method, params)], key=seed_of)))
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


def _data_source(data: dict) -> str:
    """Where a run's images came from, from its config's data section."""
    if data.get("manifest"):
        return "manifest " + Path(str(data["manifest"])).name
    return "tcga-ut" if data.get("root") else "embedded"
