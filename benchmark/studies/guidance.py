"""The counterfactual-guidance frontier: how condition dropout and per-attribute guidance weights trade the class
that MeDi's patches of unseen combinations carry against the site they carry (``python -m benchmark guidance``).

For each dropout setting (class rate, metadata rate) one MeDi model is trained on the task's training split (the
model cache serves it again to a later run with the same settings); each is then sampled under every guidance
setting of the grid (``methods.diffusion.guidance_mix``: unguided, joint, composed class x metadata weights) for the
combinations the training split lacks, and the patches are judged against ground truth on the embedded data
(``evaluation.counterfactual.Judge``): class and site fidelity by probes that learn from real patches plus true
patches, FID against true patches of the same cells. The judge uses its own draws of true patches
(``counterfactual.VALIDATION_SALTS``), never the ones a run reports, so a setting chosen here is chosen on
validation data; the replicated runs of the chosen variant (``medi_cg``) then measure it on fresh cohorts.

Each point is appended to ``frontier.csv`` as it finishes; running the same command again skips the finished
points (and a trained model is reused from the cache), so an interrupted frontier resumes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: counterfactual class fidelity and site fidelity the issue asks of a point (cpu preset)
TARGET_CLASS, TARGET_SITE = 0.80, 0.60
KEYS = ("class_dropout", "meta_dropout", "guidance", "guidance_scale", "class_guidance", "meta_guidance")


class GuidanceError(ValueError):
    """A frontier grid that cannot be run as given (the message names the value)."""


@dataclass(frozen=True)
class Point:
    """One setting of the grid: training dropout rates and the sampling guidance."""

    class_dropout: float
    meta_dropout: float
    guidance: str = "joint"
    guidance_scale: float = 1.0
    class_guidance: float = 1.0
    meta_guidance: float = 1.0

    @property
    def label(self) -> str:
        if self.guidance == "composed":
            return f"composed c{self.class_guidance:g} m{self.meta_guidance:g}"
        return "unguided" if self.guidance_scale == 1.0 else f"joint {self.guidance_scale:g}"

    def key(self) -> tuple:
        return tuple(getattr(self, k) for k in KEYS)


def parse_floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GuidanceError(f"{name}={text!r}: expected comma-separated numbers, e.g. 1,2,3") from None
    if not values:
        raise GuidanceError(f"{name} is empty: give at least one number")
    return values


def parse_dropouts(text: str) -> list[tuple[float, float]]:
    """'0:0,0.1:0.1' -> [(class rate, metadata rate), ...]; a single rate '0.1' is 0.1:0.1."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        parts = item.split(":")
        try:
            pair = (float(parts[0]), float(parts[-1]))
        except ValueError:
            raise GuidanceError(f"--dropouts item {item!r}: expected CLASS:META rates, e.g. 0.1:0.1") from None
        if len(parts) > 2 or not all(0 <= r < 1 for r in pair):
            raise GuidanceError(f"--dropouts item {item!r}: expected CLASS:META rates in [0, 1), e.g. 0.1:0.1")
        out.append(pair)
    if not out:
        raise GuidanceError("--dropouts is empty: give at least one CLASS:META pair, e.g. 0:0,0.1:0.1")
    return out


def grid(dropouts: list[tuple[float, float]], class_weights: list[float], meta_weights: list[float],
         joint_scales: list[float]) -> list[Point]:
    """Every point: per dropout setting the unguided sample; where the model has an unconditional prediction
    (both rates > 0) the joint scales and every composed (class weight, metadata weight)."""
    points = []
    for c, m in dropouts:
        points.append(Point(c, m))
        if c > 0 and m > 0:
            points += [Point(c, m, guidance_scale=s) for s in joint_scales if s != 1.0]
            points += [Point(c, m, "composed", class_guidance=wc, meta_guidance=wm)
                       for wc in class_weights for wm in meta_weights]
    return points


def run_frontier(task_name: str, preset: str | None, device: str, overrides: list[str], results_dir: Path,
                 points: list[Point], out: Path, per_class: int, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Train one model per dropout setting, sample and judge every point; the table (also ``out/frontier.csv``)."""
    from benchmark.core.cache import atomic_write_text
    from benchmark.core.registry import TASKS
    from benchmark.evaluation import counterfactual
    from benchmark.evaluation.fid import fid_config
    from benchmark.orchestration.runner import build_config
    from methods.diffusion import validate

    out.mkdir(parents=True, exist_ok=True)
    table_path = out / "frontier.csv"
    done = pd.read_csv(table_path) if table_path.exists() else pd.DataFrame()
    finished = {tuple(r[k] for k in KEYS) for _, r in done.iterrows()} if len(done) else set()
    base = build_config("medi", task_name, preset, seed, device, overrides)
    if not TASKS.get(base.task)(base.task_data(), base.split, results_dir / "cache", False).has_ground_truth:
        raise GuidanceError(f"task {task_name!r} reads a fixed cohort: the frontier needs ground truth (the "
                            "embedded data's generator)")
    rows = done.to_dict("records") if len(done) else []
    judge = None
    by_dropout: dict[tuple[float, float], list[Point]] = {}
    for p in points:
        by_dropout.setdefault((p.class_dropout, p.meta_dropout), []).append(p)
    for (c, m), todo in by_dropout.items():
        todo = [p for p in todo if p.key() not in finished]
        if not todo:
            continue
        method, ctx, train, cfg = _trained(task_name, preset, device, overrides, results_dir, c, m, seed, progress)
        task = ctx.task
        if judge is None:  # the same training split for every dropout setting: one judge
            judge = counterfactual.Judge(train, task, per_class, ctx.seed, counterfactual.VALIDATION_SALTS)
            if len(judge.rows) < 2:
                raise GuidanceError(f"task {task_name!r}: the training split has every combination, nothing to fill")
            # the floor: FID between the two draws of true patches (what a perfect generator would score)
            fid_cfg = replace(fid_config(cfg.preset), max_per_class=per_class)
            floor, _ = judge.score(judge.second_draw, cfg.probe, fid_cfg, ctx)
            fid_true = next((v for k, v in floor.items()
                             if k.startswith("counterfactual/fid/") and k.endswith("/mean")), float("nan"))
        for p in todo:
            params = replace(cfg.method_params, **{k: getattr(p, k) for k in KEYS})
            validate(params)
            method.params = method.model.params = params
            started = time.time()
            fake = np.asarray(method.synthesize(judge.rows, ctx))
            metrics, _ = judge.score(fake, cfg.probe, fid_cfg, ctx)
            row = {**{k: getattr(p, k) for k in KEYS}, "label": p.label, "seconds": round(time.time() - started, 1),
                   "fid_true": fid_true,
                   **{k.removeprefix("counterfactual/"): v for k, v in metrics.items()
                      if not any(part in k for part in ("/ci_", "/n_real", "/n_synthetic", "/dim", "/small_n"))}}
            rows.append(row)
            log.info("%s (dropout %g:%g): class fidelity %.3f, site fidelity %.3f", p.label, c, m,
                     row["class_fidelity"], row["site_fidelity"])
            atomic_write_text(table_path, pd.DataFrame(rows).to_csv(index=False, float_format="%.4f"))
    return pd.DataFrame(rows)


def _trained(task_name: str, preset: str | None, device: str, overrides: list[str], results_dir: Path,
             class_dropout: float, meta_dropout: float, seed: int, progress: bool):
    """The MeDi model of one dropout setting (trained now, or from the model cache), its context, training split and
    config."""
    from benchmark.core.registry import METHODS, TASKS
    from benchmark.orchestration.runner import build_config, seed_everything
    from benchmark.protocols import Context

    c, m = class_dropout, meta_dropout
    cfg = build_config("medi", task_name, preset, seed, device,
                       [*overrides, f"method.class_dropout={c}", f"method.meta_dropout={m}"])
    seed_everything(cfg.seed_for("sampling"))
    cache_dir = results_dir / "cache"
    task = TASKS.get(cfg.task)(cfg.task_data(), cfg.split, cache_dir, progress)
    train = task.splits(cfg.seed_for("split"))["train"]
    ctx = Context(device=cfg.device, preset=cfg.preset, seed=cfg.seed_for("sampling"),
                  model_seed=cfg.seed_for("model"), task=task, cache_dir=cache_dir,
                  run_dir=results_dir / "guidance" / f"{cfg.task}_{cfg.preset}_dropout{c:g}-{m:g}",  # previews
                  progress=progress)
    method = METHODS.get("medi")(cfg.method_params)
    started = time.time()
    method.fit(train, ctx)
    log.info("dropout %g:%g: model ready in %.0f s", c, m, time.time() - started)
    return method, ctx, train, cfg


def samples_png(task_name: str, preset: str | None, device: str, overrides: list[str], results_dir: Path,
                table: pd.DataFrame, seed: int = 0, cells_per_class: int = 3, per_cell: int = 4) -> bytes | None:
    """True patches, today's medi and the chosen point on the same unseen cells (a few per class), side by side;
    None when nothing is chosen. Models come from the cache the frontier filled (trained again if absent)."""
    from benchmark.core.images import grid_png, mosaic
    from benchmark.evaluation import counterfactual

    best, _ = best_point(table)
    base = baseline(table)
    if best is None or base is None:
        return None
    shown: list[tuple[str, pd.Series]] = [("medi (no dropout, unguided)", base)]
    if best["label"] != base["label"] or best["class_dropout"] != base["class_dropout"]:
        label = str(best["label"]).replace("composed ", "")
        shown.append((f"chosen ({best['class_dropout']:g}:{best['meta_dropout']:g}, {label})", best))
    images, rows, task, sampling_seed = [], None, None, 0
    for _, point in shown:
        method, ctx, train, cfg = _trained(task_name, preset, device, overrides, results_dir,
                                           float(point["class_dropout"]), float(point["meta_dropout"]), seed, False)
        if rows is None:
            task, sampling_seed = ctx.task, ctx.seed
            every = counterfactual.conditions(train, list(task.classes),
                                              [c for c in task.group_columns if c != "cancer_type"], 10_000, ctx.seed)
            cells = every.drop_duplicates(["cancer_type", "tissue_source_site"]).groupby("cancer_type").head(
                cells_per_class)
            rows = pd.concat([every[(every["cancer_type"] == r["cancer_type"])
                                    & (every["tissue_source_site"] == r["tissue_source_site"])].head(per_cell)
                              for _, r in cells.iterrows()], ignore_index=True)
        method.params = method.model.params = replace(cfg.method_params, **{k: point[k] for k in KEYS})
        images.append(np.asarray(method.synthesize(rows, ctx)))
    images.insert(0, task.true_patches(rows, sampling_seed, counterfactual.VALIDATION_SALTS[0]))
    keys = list(dict.fromkeys(zip(rows["cancer_type"].astype(str), rows["tissue_source_site"].astype(str),
                                  strict=True)))
    grid = {}
    for r, imgs in enumerate(images):
        for c, (ct, site) in enumerate(keys):
            sel = (rows["cancer_type"].astype(str) == ct) & (rows["tissue_source_site"].astype(str) == site)
            grid[(r, c)] = imgs[sel.to_numpy()]
    canvas = mosaic(grid, len(images), len(keys), per_cell=per_cell)
    return grid_png(canvas, ["true patches", *(name for name, _ in shown)], [f"{ct} at {site}" for ct, site in keys],
                    f"{task_name}: unseen class x site cells (none of the class at that site in training)",
                    col_title="cancer type at tissue source site")


def fid_column(table: pd.DataFrame) -> str | None:
    """The FID column the frontier reads (mean over cancer types, the first feature space)."""
    cols = [c for c in table.columns if c.startswith("fid/") and c.endswith("/mean")]
    return cols[0] if cols else None


def best_point(table: pd.DataFrame) -> tuple[pd.Series | None, str]:
    """The chosen point and the rule that chose it: the patches closest to the truth of the unseen cells (the
    lowest FID to true patches) among the points whose class AND site fidelity are both at least the unguided
    model's without dropout (today's medi), so that neither is traded for the other. That model qualifies itself:
    when no setting beats it, it is chosen. (None, why) when there is no baseline row or no FID."""
    fid = fid_column(table)
    base = baseline(table)
    if fid is None or base is None:
        return None, "the grid needs the unguided model without dropout (0:0) and an FID space to choose"
    ok = (table["class_fidelity"] >= base["class_fidelity"]) & (table["site_fidelity"] >= base["site_fidelity"])
    pick = table[ok]
    return pick.loc[pick[fid].idxmin()], "lowest FID to true patches keeping both fidelities of the unguided model"


def meets_target(row: pd.Series) -> bool:
    """The issue's target on the cpu preset: class fidelity >= 0.80 at site fidelity >= 0.60."""
    return bool(row["class_fidelity"] >= TARGET_CLASS and row["site_fidelity"] >= TARGET_SITE)


def baseline(table: pd.DataFrame) -> pd.Series | None:
    rows = table[(table["class_dropout"] == 0) & (table["meta_dropout"] == 0) & (table["guidance"] == "joint")]
    return None if rows.empty else rows.iloc[0]


def frontier_png(table: pd.DataFrame, title: str) -> bytes:
    """Class against site fidelity of every point (one colour per dropout setting), the true patches' fidelity
    (the ceiling), the target region; and class fidelity against the unseen cells' FID."""
    from benchmark.core.images import png_bytes, pyplot

    plt = pyplot()

    fid = fid_column(table)
    fig, axes = plt.subplots(1, 2 if fid else 1, figsize=(11 if fid else 6, 4.6), squeeze=False)
    ax = axes[0, 0]
    colours = plt.get_cmap("tab10")
    settings = list(dict.fromkeys(zip(table["class_dropout"], table["meta_dropout"], strict=True)))
    for i, (c, m) in enumerate(settings):
        sel = table[(table["class_dropout"] == c) & (table["meta_dropout"] == m)]
        for (x_col, axis) in [("site_fidelity", ax)] + ([(fid, axes[0, 1])] if fid else []):
            axis.scatter(sel[x_col], sel["class_fidelity"], color=colours(i), label=f"dropout {c:g}:{m:g}", s=36,
                         marker="o")
            for _, r in sel.iterrows():
                axis.annotate(r["label"].replace("composed ", ""), (r[x_col], r["class_fidelity"]), fontsize=7,
                              xytext=(3, 3), textcoords="offset points")
    best, _ = best_point(table)
    if best is not None:  # the chosen point, ringed in both panels
        for (x_col, axis) in [("site_fidelity", ax)] + ([(fid, axes[0, 1])] if fid else []):
            axis.scatter([best[x_col]], [best["class_fidelity"]], s=220, facecolors="none", edgecolors="red",
                         linewidths=1.5, label="chosen")
    truth = table.iloc[0]
    ax.scatter([truth["site_fidelity_true"]], [truth["class_fidelity_true"]], marker="*", s=160, color="black",
               label="true patches (ceiling)")
    ax.fill_between([TARGET_SITE, 1.0], TARGET_CLASS, 1.0, color="green", alpha=0.08, label="target")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("site fidelity (unseen cells)")
    ax.set_ylabel("class fidelity (unseen cells)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0.3, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    floor = table["fid_true"].dropna() if "fid_true" in table else pd.Series(dtype=float)
    if fid and len(floor):
        axes[0, 1].scatter([floor.iloc[0]], [truth["class_fidelity_true"]], marker="*", s=160, color="black",
                           label="true patches (a second draw)")
        axes[0, 1].legend(fontsize=7, loc="lower right")
    if fid:
        axes[0, 1].set_xlabel(f"FID of the unseen cells to true patches ({fid.split('/')[1]}, lower is better)")
        axes[0, 1].set_ylabel("class fidelity (unseen cells)")
        axes[0, 1].axhline(0.5, color="grey", lw=0.8, ls=":")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png_bytes(fig, dpi=130, crop=False)


def markdown(table: pd.DataFrame, title: str) -> str:
    """The frontier as a Markdown table, the chosen point and the target named."""
    fid = fid_column(table)
    lines = [f"# {title}", "",
             "Patches of the class x site x race combinations the training split lacks, judged against true patches "
             "of the same cells (validation draws, never the ones a run reports): class and site fidelity (probes "
             "trained on real and true patches), FID to the true patches (lower is closer).", "",
             "| dropout class:meta | guidance | class fidelity | site fidelity |" + (" FID |" if fid else ""),
             "|---|---|---|---|" + ("---|" if fid else "")]
    for _, r in table.iterrows():
        lines.append(f"| {r['class_dropout']:g}:{r['meta_dropout']:g} | {r['label']} | {r['class_fidelity']:.3f} | "
                     f"{r['site_fidelity']:.3f} |" + (f" {r[fid]:.3f} |" if fid else ""))
    t = table.iloc[0]
    floor = table["fid_true"].dropna() if "fid_true" in table else pd.Series(dtype=float)
    lines += ["", f"True patches of the same cells: class fidelity {t['class_fidelity_true']:.3f}, site fidelity "
              f"{t['site_fidelity_true']:.3f}" + (f", FID of a second draw {floor.iloc[0]:.3f}" if len(floor) else "")
              + f" (the ceiling). Rows judged: {int(t['n'])} over {int(t['cells'])} cells."]
    best, rule = best_point(table)
    if best is None:
        lines.append(f"No point chosen: {rule}.")
    else:
        lines.append(f"Chosen ({rule}): dropout {best['class_dropout']:g}:{best['meta_dropout']:g}, {best['label']}: "
                     f"class fidelity {best['class_fidelity']:.3f}, site fidelity {best['site_fidelity']:.3f}, FID "
                     f"{best[fid]:.3f}.")
    hits = table[[meets_target(r) for _, r in table.iterrows()]]
    lines.append(f"Points meeting the target (class >= {TARGET_CLASS:.2f}, site >= {TARGET_SITE:.2f}): "
                 + (", ".join(f"{r['class_dropout']:g}:{r['meta_dropout']:g} {r['label']}" for _, r in hits.iterrows())
                    or "none") + ".")
    return "\n".join(lines) + "\n"
