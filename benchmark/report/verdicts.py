"""The tables and the verdict: per-split metric tables, the paired comparisons over replicates (with the declared
protocol's families), the oracle fractions, the minimum detectable effects and the verdict sentences.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from benchmark.evaluation import endpoints, stats
from benchmark.evaluation.endpoints import Endpoints
from benchmark.report.records import NAN, TABLE_METRICS, VERDICT_METRICS, Row, Section, metric_bounds, metric_value

log = logging.getLogger(__name__)


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
        if any(math.isfinite(metric_value(r, "train/robustness_index")) for r in section.records):
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
                small = sum(metric_value(r, f"fid/{col['space']}/small_n") > 0 for r in row.runs)
                cell.notes.append(f"n = {_fmt(n_real, 0)} real / {_fmt(n_syn, 0)} synth.")
                if small:
                    cell.notes.append("unstable: few images")
                    cell.title = "fewer images than feature dimensions in some cancer types: the estimate is biased " \
                                 "upward and unstable"
            elif cell.n == 1:
                run = row.runs[0]
                low, high = metric_value(run, f"{col['key']}/ci_low"), metric_value(run, f"{col['key']}/ci_high")
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
            if not any(math.isfinite(metric_value(r, f"fid/{space}/mean")) for r in row.runs):
                continue
            cells = []
            for ct in [*cancer_types, "mean"]:
                key = f"fid/{space}/{ct}"
                est = row.stat(key)
                mean, n = est.mean, est.n
                lows = [metric_value(r, f"{key}/ci_low") for r in row.runs]
                highs = [metric_value(r, f"{key}/ci_high") for r in row.runs]
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
    the same cells (``evaluation.counterfactual``), mean [95% t interval] over replicates; None without such runs."""
    spaces = sorted({k.split("/")[2] for r in section.records for k in r["metrics"]
                     if k.startswith("counterfactual/fid/") and k.endswith("/mean")},
                    key=lambda s: (s != "inception", s))
    columns = [{"key": f"counterfactual/fid/{sp}/mean", "title": f"FID to true patches ({sp})", "digits": 2}
               for sp in spaces]
    columns += [{"key": f"counterfactual/{k}", "title": t, "digits": d} for k, t, d in COUNTERFACTUAL_COLUMNS]
    rows = []
    for row in section.rows:
        if not any(math.isfinite(metric_value(r, "counterfactual/class_fidelity")) for r in row.runs):
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
