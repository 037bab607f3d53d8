"""The figures: heatmaps of per-group accuracy, FID, the forest plot of the verdict, sample grids, and the per-run
figures the runner logs to MLflow.
"""

from __future__ import annotations

import base64
import logging
import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.core.data import UNKNOWN
from benchmark.core.images import (
    SAMPLES_FILE,
    SAMPLES_PER_CELL,
    grid_png,
    load_samples,
    mosaic,
    plot_style,
    png_bytes,
    pyplot,
    sample_grid_png,
    save_samples,
    short_labels,
    tight_layout,
)
from benchmark.evaluation import stats
from benchmark.report.records import (
    DEFAULT_GROUP_COLUMNS,
    NAN,
    SAMPLE_LABELS,
    ReportError,
    Section,
    metric_value,
    run_dir_of,
)
from benchmark.report.verdicts import verdict_metrics

log = logging.getLogger(__name__)


@dataclass
class Figure:
    name: str  # file stem under reports/figures
    title: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def task_group_columns(task: str, records: Sequence[dict] = ()) -> tuple[str, ...]:
    """The columns a task's group names join: as its records say (a task from a file is not registered in the
    report's process), else as its registered definition says, else the defaults."""
    for rec in records:
        if rec.get("group_columns"):
            return tuple(rec["group_columns"])
    try:
        from benchmark.core.registry import TASKS
        from benchmark.plugins import load_plugins

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

    plt = pyplot()
    values = sorted({str(v) for _, f in panels for v in f[column]})
    n = len(panels)
    width = min(18.0, max(5.5, 0.42 * len(values) + 2.2))
    height_each = 0.42 * max(1, len(classes)) + 1.1
    with plot_style():
        # constrained layout keeps the title clear of the first panel, however wide the figure (tight_layout did not)
        fig, axes = plt.subplots(n, 1, figsize=(width, height_each * n + 0.6), squeeze=False, layout="constrained")
        for ax, (name, frame) in zip(axes[:, 0], panels, strict=True):
            agg = frame.groupby(["cancer_type", column])[["n", "correct"]].sum()
            acc = (agg["correct"] / agg["n"]).unstack(column)
            acc = acc.reindex(index=list(classes) or sorted(acc.index), columns=values)
            few = len(values) <= 8  # few columns: long labels wrap onto lines; many: short labels, turned upright
            acc.columns = [textwrap.fill(v, 14) for v in short_labels(values, 28)] if few else short_labels(values)
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
        return png_bytes(fig)


def fid_png(frame: pd.DataFrame, title: str) -> bytes:
    """Bars of FID per cancer type and their mean, one hue per method, one panel per feature space."""
    import seaborn as sns

    plt = pyplot()
    spaces = list(dict.fromkeys(frame["space"]))
    order = list(dict.fromkeys(frame["cancer_type"]))
    with plot_style():
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
        tight_layout(fig)
        return png_bytes(fig)


def forest_png(comparisons: Sequence[stats.Comparison], title: str) -> bytes:
    """One panel per verdict metric: each comparison's mean paired difference with its 95% interval; filled:
    significant after Holm, open: not, grey cross: not testable with this many replicates."""
    plt = pyplot()
    metrics = verdict_metrics(comparisons)
    names = list(dict.fromkeys(f"{c.a} − {c.b}" for c in comparisons))
    with plot_style():
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
        axes[0][0].set_yticks(range(len(names)), short_labels(names, 26))
        axes[0][0].set_ylim(len(names) - 0.5, -0.5)
        fig.suptitle(title, x=0.01, ha="left", fontsize=10)
        tight_layout(fig)
        return png_bytes(fig)


def ratio_png(frame: pd.DataFrame, baseline: float, title: str) -> bytes:
    """Balanced accuracy on test_unseen against the synthetic-to-real ratio, one line per method."""
    import seaborn as sns

    plt = pyplot()
    with plot_style():
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        sns.lineplot(frame, x="ratio", y="value", hue="method", marker="o", errorbar="se", ax=ax,
                     palette="colorblind")
        if math.isfinite(baseline):
            ax.axhline(baseline, ls="--", color="grey", lw=1, label="none (no augmentation)")
        ax.set_xlabel("synthetic / real training patches")
        ax.set_ylabel("balanced acc. (test_unseen)")
        ax.legend(fontsize=8)
        ax.set_title(title, loc="left")
        tight_layout(fig)
        return png_bytes(fig)


def section_figures(section: Section) -> tuple[list[Figure], list[str]]:
    """The section's figures and notes on figures that could not be drawn."""
    figures: list[Figure] = []
    notes: list[str] = []
    base = f"{section.anchor}"
    # 1. per-group accuracy heatmaps on test_unseen (class x site, class x race), pooled over seeds
    columns = task_group_columns(section.task, section.records)
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
                    v = metric_value(rec, f"fid/{space}/{ct}")
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
            n_real, n_syn = metric_value(rec, "train/n_real"), metric_value(rec, "train/n_synthetic")
            if row.method != "none" and math.isfinite(n_real) and n_real > 0 and math.isfinite(n_syn):
                ratio_rows.append({"method": row.method, "ratio": round(n_syn / n_real, 2),
                                   "value": metric_value(rec, "test_unseen/balanced_accuracy")})
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
            path = run_dir_of(rec) / SAMPLES_FILE if run_dir_of(rec) else None
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
