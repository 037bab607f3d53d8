"""Leaderboards from run records: a self-contained HTML page and a PDF, plus the per-run figures.

The report is a function of the run records (``results.jsonl`` / ``record.json``) and of two files the runner leaves
in each run directory: ``predictions.csv.gz`` (for paired bootstrap tests) and ``samples.npz`` (for sample grids).
Nothing is read from MLflow, so a report rebuilds offline. Every string that comes from data or metadata is escaped
by the template engine (jinja2 autoescape); figures are PNGs embedded as data URIs.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.data import UNKNOWN

log = logging.getLogger(__name__)

#: The methods a complete leaderboard has (any other registered or recorded method is shown too).
CANONICAL_METHODS: tuple[str, ...] = ("none", "stain_norm", "cyclegan", "cls", "medi")
#: How a method's training images are labelled in sample grids.
SAMPLE_LABELS = {
    "none": "real", "stain_norm": "stain-normalized", "cyclegan": "CycleGAN", "cls": "CLS", "medi": "MeDi"
}
TABLE_SPLITS: tuple[str, ...] = ("test_unseen", "test_seen")
#: (metric key, column title); all higher-is-better.
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("balanced_accuracy", "balanced acc."),
    ("worst_group_accuracy", "worst-group acc."),
    ("site_balanced_accuracy", "site-avg. balanced acc."),
)
DEFAULT_GROUP_COLUMNS: tuple[str, ...] = ("cancer_type", "tissue_source_site", "race")
SAMPLES_FILE = "samples.npz"
SAMPLES_PER_CELL = 8
RECORD_SCHEMAS = (1,)
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
        key = str(rec.get("run_id") or rec.get("run_dir") or id(rec))
        if key not in by_id or str(rec.get("started", "")) >= str(by_id[key].get("started", "")):
            by_id[key] = rec
    out = []
    for rec in by_id.values():
        rec = dict(rec)
        rec["_run_dir"] = _locate_run_dir(rec, results_dir)
        out.append(rec)
    return sorted(out, key=lambda r: (str(r.get("task")), str(r.get("method")), _seed(r), str(r.get("run_id"))))


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


# ---------------------------------------------------------------------------------------------------------------
# statistics


def mean_sem(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (sample std / sqrt n; NaN for n < 2) and n over the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(float(x))], dtype=float)
    if len(v) == 0:
        return NAN, NAN, 0
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else NAN
    return float(v.mean()), sem, len(v)


def _resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot x n multiplicities of a bootstrap resample of n items."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (np.arange(n_boot)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    ok = np.isfinite(x)
    cnt = ok.sum(axis=axis)
    return _ratio(np.where(ok, x, 0).sum(axis=axis), cnt.astype(float))


def weighted_metric(
    weights: np.ndarray, frame: pd.DataFrame, metric: str, min_group_size: int
) -> np.ndarray:
    """``metric`` of one split's predictions under each row of ``weights`` (B x n patch multiplicities).

    With all weights 1 this is the runner's metric (balanced_accuracy, worst_group_accuracy,
    site_balanced_accuracy, accuracy); flagged groups (n < min_group_size) are those of the unweighted split.
    """
    y = frame["label"].to_numpy()
    correct = (y == frame["pred"].to_numpy()).astype(float)
    w = np.atleast_2d(weights)

    def onehot(codes: np.ndarray) -> np.ndarray:
        m = np.zeros((len(codes), int(codes.max()) + 1 if len(codes) else 0))
        m[np.arange(len(codes)), codes] = 1.0
        return m

    if metric == "accuracy":
        return _ratio(w @ correct, w.sum(axis=1))
    if metric == "balanced_accuracy":
        onehot_y = onehot(pd.factorize(y, sort=True)[0])
        return _nanmean(_ratio(w @ (onehot_y * correct[:, None]), w @ onehot_y), axis=1)
    if metric == "worst_group_accuracy":
        codes = pd.factorize(frame["group"].astype(str), sort=True)[0]
        onehot_g = onehot(codes)
        keep = np.bincount(codes, minlength=onehot_g.shape[1]) >= min_group_size
        acc = _ratio(w @ (onehot_g * correct[:, None]), w @ onehot_g)[:, keep]
        out = np.full(len(w), np.nan)
        if acc.shape[1]:
            ok = np.isfinite(acc).any(axis=1)
            out[ok] = np.nanmin(acc[ok], axis=1)
        return out
    if metric == "site_balanced_accuracy":
        sites = frame["tissue_source_site"].astype(str).to_numpy()
        pair_codes, pairs = pd.factorize(pd.Series(sites) + "\x00" + pd.Series(y).astype(str), sort=True)
        recall = _ratio(w @ (onehot(pair_codes) * correct[:, None]), w @ onehot(pair_codes))  # B x pairs
        pair_site = pd.factorize(pd.Series(pairs).str.split("\x00").str[0], sort=True)[0]
        member = onehot(pair_site)  # pairs x sites
        ok = np.isfinite(recall)
        per_site = _ratio(np.where(ok, recall, 0) @ member, ok.astype(float) @ member)  # B x sites
        return _nanmean(per_site, axis=1)
    raise ValueError(f"no patch-level definition of metric {metric!r}")


def _run_dir(rec: dict) -> Path | None:
    """A record's run directory here (``_run_dir`` from load_records, else the recorded one when it exists)."""
    path = rec.get("_run_dir") if "_run_dir" in rec else rec.get("run_dir")
    return Path(path) if path and Path(path).is_dir() else None


def _predictions(rec: dict, split: str) -> pd.DataFrame | None:
    run_dir = _run_dir(rec)
    if run_dir is None:
        return None
    path = run_dir / "predictions.csv.gz"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"tissue_source_site": str, "group": str, "patient_id": str})
    except (OSError, ValueError) as exc:
        log.warning("unreadable predictions %s: %s", path, exc)
        return None
    needed = {"split", "label", "pred", "group", "tissue_source_site"}
    if not needed <= set(frame.columns):
        return None
    return frame[frame["split"] == split].reset_index(drop=True)


@dataclass
class PairedTest:
    """A method against the baseline on one metric: mean paired difference and a two-sided bootstrap p-value."""

    delta: float
    p: float
    level: str  # "patch": test patches resampled jointly for both runs of each seed; "seed": paired seeds resampled
    n_pairs: int


def paired_bootstrap(
    method_runs: Sequence[dict],
    baseline_runs: Sequence[dict],
    split: str,
    metric: str,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedTest | None:
    """Paired bootstrap test of ``metric`` on ``split``: runs are paired by seed (None when no seed is shared).

    With every pair's predictions at hand the test patches are resampled (the same resample for both runs of a
    pair); otherwise the paired seeds are (which needs at least two pairs for a p-value).
    """
    base = {_seed(r): r for r in baseline_runs}
    pairs = [(r, base[_seed(r)]) for r in method_runs if _seed(r) in base]
    if not pairs:
        return None
    key = f"{split}/{metric}"
    deltas = [_value(a, key) - _value(b, key) for a, b in pairs]
    frames = [(_predictions(a, split), _predictions(b, split)) for a, b in pairs]
    usable = all(
        fa is not None and fb is not None and len(fa) == len(fb) and len(fa) > 0
        and (fa["label"].to_numpy() == fb["label"].to_numpy()).all()
        and (fa["group"].to_numpy() == fb["group"].to_numpy()).all()
        for fa, fb in frames
    )
    if usable:
        reps = np.zeros(n_boot)
        for (a, _), (fa, fb) in zip(pairs, frames, strict=True):
            mgs = int(a.get("config", {}).get("probe", {}).get("min_group_size", 10))
            w = _resample_weights(len(fa), n_boot, np.random.default_rng(seed))
            reps += weighted_metric(w, fa, metric, mgs) - weighted_metric(w, fb, metric, mgs)
        reps /= len(pairs)
        level = "patch"
    else:
        d = np.asarray(deltas, dtype=float)
        d = d[np.isfinite(d)]
        if len(d) < 2:
            return PairedTest(float(np.mean(d)) if len(d) else NAN, NAN, "seed", len(d))
        idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
        reps = d[idx].mean(axis=1)
        level = "seed"
    reps = reps[np.isfinite(reps)]
    delta = float(np.nanmean(deltas)) if np.isfinite(deltas).any() else NAN
    if len(reps) == 0:
        return PairedTest(delta, NAN, level, len(pairs))
    p = min(1.0, 2.0 * min(float((reps <= 0).mean()), float((reps >= 0).mean())))
    return PairedTest(delta, p, level, len(pairs))


# ---------------------------------------------------------------------------------------------------------------
# structure: sections (task x setting) -> rows (method x variant) -> runs (seeds)


@dataclass
class Row:
    method: str
    label: str
    runs: list[dict]

    @property
    def seeds(self) -> list[int]:
        return sorted(_seed(r) for r in self.runs)

    def stat(self, key: str) -> tuple[float, float, int]:
        return mean_sem(_value(r, key) for r in self.runs)


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
    return (CANONICAL_METHODS.index(method) if method in CANONICAL_METHODS else len(CANONICAL_METHODS), method)


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
                data_source=str(first["config"].get("data", {}).get("root") and "tcga-ut" or "embedded"),
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
    sem: float
    n: int
    best: bool = False
    notes: list[str] = field(default_factory=list)  # small lines under the value
    title: str = ""


def _cells(section: Section, key: str, digits: int, lower_is_better: bool) -> list[Cell]:
    stats = [row.stat(key) for row in section.rows]
    means = [m for m, _, n in stats if n]
    target = (min(means) if lower_is_better else max(means)) if means else NAN
    cells = []
    for mean, sem, n in stats:
        if n == 0:
            cells.append(Cell("n/a", NAN, NAN, 0))
            continue
        text = _fmt(mean, digits) + (f" ± {_fmt(sem, digits)}" if n > 1 else "")
        tied = all(abs(m - target) <= 1e-12 * max(1.0, abs(target)) for m in means)  # nothing to single out
        best = len(means) > 1 and not tied and abs(mean - target) <= 1e-12 * max(1.0, abs(target))
        cells.append(Cell(text, mean, sem, n, best))
    return cells


def split_table(section: Section, split: str, n_boot: int = 2000) -> dict:
    """Columns and rows of one split's leaderboard: mean ± SEM, best marked, paired test against ``none``."""
    columns: list[dict] = [{"key": f"{split}/{m}", "title": t, "metric": m, "kind": "acc"} for m, t in TABLE_METRICS]
    if split == "test_unseen":
        for space in section.fid_spaces():
            columns.append({"key": f"fid/{space}/mean", "title": f"FID ({space})", "metric": f"fid/{space}",
                            "kind": "fid", "space": space})
    base = section.baseline()
    grid = []
    for col in columns:
        fid = col["kind"] == "fid"
        cells = _cells(section, col["key"], 2 if fid else 3, lower_is_better=fid)
        for row, cell in zip(section.rows, cells, strict=True):
            if fid and cell.n:
                n_real = mean_sem(_value(r, f"fid/{col['space']}/n_real") for r in row.runs)[0]
                n_syn = mean_sem(_value(r, f"fid/{col['space']}/n_synthetic") for r in row.runs)[0]
                small = sum(_value(r, f"fid/{col['space']}/small_n") > 0 for r in row.runs)
                cell.notes.append(f"n = {_fmt(n_real, 0)} real / {_fmt(n_syn, 0)} synth.")
                if small:
                    cell.notes.append("unstable: few images")
                    cell.title = "fewer images than feature dimensions in some cancer types: the estimate is biased " \
                                 "upward and unstable"
            elif not fid and base is not None and row is not base and cell.n:
                test = paired_bootstrap(row.runs, base.runs, split, col["metric"], n_boot=n_boot)
                if test is not None:
                    if math.isfinite(test.delta):
                        cell.notes.append(f"Δ {test.delta:+.3f} · {_fmt_p(test.p)}")
                    unit = "patches" if test.level == "patch" else "seeds"
                    cell.title = f"paired bootstrap vs none over {test.n_pairs} seed pair(s), resampling {unit}"
        grid.append(cells)
    rows = []
    for i, row in enumerate(section.rows):
        rows.append({"label": row.label, "method": row.method, "seeds": row.seeds,
                     "cells": [grid[j][i] for j in range(len(columns))]})
    return {"split": split, "columns": columns, "rows": rows}


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
                mean, sem, n = row.stat(key)
                lows = [_value(r, f"{key}/ci_low") for r in row.runs]
                highs = [_value(r, f"{key}/ci_high") for r in row.runs]
                lows, highs = [x for x in lows if math.isfinite(x)], [x for x in highs if math.isfinite(x)]
                ci = f"CI [{_fmt(min(lows), 2)}, {_fmt(max(highs), 2)}]" if lows and highs else ""
                count = "" if ct == "mean" else f"n = {_fmt(row.stat(key + '/n_real')[0], 0)}"
                text = _fmt(mean, 2) + (f" ± {_fmt(sem, 2)}" if n > 1 else "")
                cells.append({"text": text if n else "n/a", "ci": ci, "count": count, "mean": mean})
            rows.append({"space": space, "label": row.label, "cells": cells})
    return {"cancer_types": [*cancer_types, "mean"], "rows": rows}


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


def _group_columns(task: str) -> tuple[str, ...]:
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
    columns = _group_columns(section.task)
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
        baseline = base_row.stat("test_unseen/balanced_accuracy")[0] if base_row else NAN
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
td.best { color: var(--best); font-weight: 700; }
.mark { font-size: .85em; margin-left: .15em; }
.sub { display: block; font-size: .8em; color: var(--muted); font-weight: 400; white-space: nowrap; }
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
  section.task { break-before: page; }
  .table-wrap { overflow: visible; }
  table { font-size: 7.6pt; width: 100%; }
  th, td { padding: .15rem .3rem; }
  thead { display: table-header-group; }
  tr, figure, .notice { break-inside: avoid; }
  h2, h3, caption { break-after: avoid; }
  figure img { max-height: 235mm; width: auto; max-width: 100%; }
  a { color: inherit; text-decoration: none; }
}
"""

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="generator" content="MeDiBench {{ version }}">
<title>{{ title }}</title>
<link rel="icon" href="data:,">
<style>{{ css }}</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p class="meta">Generated {{ generated }} from {{ n_records }} run record{{ '' if n_records == 1 else 's' }} in
<code>{{ source }}</code>{% if commits %} · code {{ commits | join(', ') }}{% endif %}.</p>
</header>
{% if skipped %}
<div class="notice" role="note"><strong>{{ skipped | length }} record(s) left out:</strong>
<ul>{% for s in skipped %}<li><code>{{ s.name }}</code>: {{ s.reason }}</li>{% endfor %}</ul></div>
{% endif %}
{% if not sections %}
<section class="empty" id="empty">
<h2>No run records</h2>
<p>No finished runs were found in <code>{{ source }}</code>, so there is nothing to compare yet.</p>
<p>Run some methods first, for example
<code>python -m benchmark run --method none --task nsclc --preset smoke --seed 0</code>
(repeat for seeds 1 and 2 and for other methods), then
<code>python -m benchmark report --results {{ source }}</code>.</p>
</section>
{% else %}
<nav aria-label="Contents"><strong>Contents</strong><ul>
{% for s in sections %}<li><a href="#{{ s.anchor }}">{{ s.heading }}</a></li>{% endfor %}
</ul></nav>
<p class="legend">Cells: mean ± standard error of the mean over seeds (no ± with one seed).
<span aria-hidden="true">★</span> <strong>bold</strong>: best in the column.
Δ: mean paired difference to <code>none</code> (same seeds), with the
two-sided p-value of a paired bootstrap ({{ n_boot }} resamples of the test patches, or of the seeds when predictions
are not at hand). Worst-group accuracy leaves out groups smaller than the probe's <code>min_group_size</code>.
FID compares synthetic images made for the held-out rows with the real held-out images, per cancer type and averaged;
the feature space is part of its name; n: real / synthetic images per run; unstable: fewer images than feature
dimensions in some cancer type.</p>
{% for s in sections %}
<section class="task" id="{{ s.anchor }}">
<h2>{{ s.heading }}</h2>
<p class="meta">{{ s.description }}</p>
{% for n in s.notices %}<p class="notice" role="note">{{ n }}</p>{% endfor %}
{% for t in s.tables %}
<h3>{{ t.split }}</h3>
<div class="table-wrap"><table class="leaderboard" data-task="{{ s.task }}" data-split="{{ t.split }}">
<caption>{{ t.caption }}</caption>
<thead><tr><th scope="col">method</th><th scope="col">seeds</th>
{% for c in t.columns %}<th scope="col">{{ c.title }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in t.rows %}<tr data-method="{{ r.label }}"><th scope="row">{{ r.label }}</th>
<td class="seeds">{{ r.seeds | join(', ') }}</td>
{% for cell in r.cells %}<td class="num{{ ' best' if cell.best else '' }}"
 data-metric="{{ t.columns[loop.index0].key }}" data-mean="{{ cell.mean }}" data-sem="{{ cell.sem }}"
 data-n="{{ cell.n }}"{% if cell.title %} title="{{ cell.title }}"{% endif %}>
{{- cell.text }}{% if cell.best %}<span class="mark" title="best">★</span>{% endif %}
{%- for note in cell.notes %}<span class="sub">{{ note }}</span>{% endfor %}</td>{% endfor %}
</tr>
{% endfor %}
</tbody></table></div>
{% endfor %}
{% if s.fid %}
<h3>FID per cancer type</h3>
<div class="table-wrap"><table class="fid" data-task="{{ s.task }}">
<caption>Mean ± SEM over seeds; CI: the widest of the runs' bootstrap {{ '%d' % (100 * s.fid_ci) }}% intervals;
n: real (= synthetic) held-out images per run.</caption>
<thead><tr><th scope="col">method</th><th scope="col" class="space">feature space</th>
{% for ct in s.fid.cancer_types %}<th scope="col">{{ ct }}</th>{% endfor %}</tr></thead>
<tbody>{% for r in s.fid.rows %}<tr><th scope="row">{{ r.label }}</th><td class="space">{{ r.space }}</td>
{% for c in r.cells %}<td class="num" data-mean="{{ c.mean }}">{{ c.text }}
{%- if c.ci %}<span class="sub">{{ c.ci }}</span>{% endif %}
{% if c.count %}<span class="sub">{{ c.count }}</span>{% endif %}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table></div>
{% endif %}
{% if s.worst %}
<h3>Lowest-accuracy groups (test_unseen)</h3>
<div class="table-wrap"><table class="groups">
<caption>The three worst groups ({{ s.group_columns | join(' | ') }}) of each method, pooled over seeds.</caption>
<thead><tr><th scope="col">method</th><th scope="col">group</th><th scope="col">n</th>
<th scope="col">accuracy</th></tr></thead>
<tbody>{% for g in s.worst %}<tr><td>{{ g.label }}</td><td class="group">{{ g.group }}</td><td>{{ g.n }}</td>
<td>{{ g.accuracy }}</td></tr>{% endfor %}</tbody></table></div>
{% endif %}
{% for f in s.figures %}
<figure id="{{ f.name }}"><img src="{{ f.data_uri }}" alt="{{ f.title }} ({{ s.heading }})">
<figcaption><strong>{{ f.title }}.</strong> {{ f.caption }}</figcaption></figure>
{% endfor %}
</section>
{% endfor %}
{% endif %}
</body>
</html>
"""


def _section_context(section: Section, n_boot: int) -> dict:
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
    description = (f"{len(section.rows)} method variant(s), {len(section.records)} run(s), seeds "
                   f"{', '.join(map(str, seeds))}; classes {', '.join(section.classes) or 'n/a'}; "
                   f"data {section.data_source}.")
    tables = []
    for split in TABLE_SPLITS:
        t = split_table(section, split, n_boot)
        t["caption"] = (f"{split}: held-out site x demographic combinations (never seen in training)"
                        if split == "test_unseen" else f"{split}: patients from training combinations")
        tables.append(t)
    cfg_preset = fid_config(section.preset)
    return {
        "anchor": section.anchor, "task": section.task, "heading": heading, "description": description,
        "notices": list(dict.fromkeys(notices)), "tables": tables, "fid": fid_table(section), "fid_ci": cfg_preset.ci,
        "worst": worst_groups(section), "group_columns": _group_columns(section.task), "figures": figures,
    }


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
    n_boot: int = 2000,
    title: str = "MeDiBench leaderboard",
    now: datetime | None = None,
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
    sections = build_sections(valid, expected_methods)
    contexts = [_section_context(s, n_boot) for s in sections]
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=False, lstrip_blocks=False)
    html = env.from_string(_TEMPLATE).render(
        title=title, css=Markup(_CSS), version=__version__, source=source, n_records=len(valid), skipped=skipped,
        generated=(now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"), n_boot=n_boot,
        commits=sorted({str(r.get("git_commit")) for r in valid if r.get("git_commit")}), sections=contexts,
    )
    return Report(html, [f for c in contexts for f in c["figures"]], sections, skipped)


def write_pdf(html: str, path: Path) -> Path:
    """The page printed to PDF with weasyprint (print styles: A4, one task per page, page numbers)."""
    for name in ("weasyprint", "fontTools"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from weasyprint import HTML

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    HTML(string=html).write_pdf(str(tmp))
    tmp.replace(path)
    return path


def write_report(
    results_dir: Path | str,
    out_dir: Path | str,
    expected_methods: Sequence[str] = CANONICAL_METHODS,
    n_boot: int = 2000,
    pdf: bool = True,
) -> dict[str, Any]:
    """Write ``leaderboard.html``, ``leaderboard.pdf`` and ``figures/*.png`` under ``out_dir``; what was written."""
    from benchmark.cache import atomic_write_bytes, atomic_write_text

    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if results_dir.exists() and not results_dir.is_dir():
        raise ReportError(f"--results {results_dir} is not a folder")
    records = load_records(results_dir) if results_dir.is_dir() else []
    report = render(records, str(results_dir), expected_methods, n_boot)
    html_path = out_dir / "leaderboard.html"
    atomic_write_text(html_path, report.html)
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
