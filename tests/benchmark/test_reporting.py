"""Leaderboards from a small fixed set of run records: numbers, best marks, paired tests, figures, escaping, PDF,
the ``report`` command, and the ``ui`` command against a real MLflow server."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import report as R
from benchmark.core.data import METADATA_COLUMNS, Split
from benchmark.core.images import SAMPLES_FILE, load_samples, save_samples
from benchmark.report import verdicts
from tests.conftest import ROOT, free_port, run_cli

XSS_SITE = "<script>alert(1)</script>"
XSS_RACE = "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\">"
SITES = ("S1", "S2", "S3", XSS_SITE)

# test_unseen / test_seen values per method and seed (None: all groups too small, as the runner records it)
VALUES = {
    "none": {"bal": [0.70, 0.74, 0.72], "wg": [0.50, 0.55, 0.60], "site": [0.60, 0.62, 0.64],
             "seen": [0.95, 0.96, 0.97]},
    "medi": {"bal": [0.80, 0.84, 0.82], "wg": [0.70, 0.70, 0.70], "site": [0.66, 0.70, 0.74],
             "seen": [0.94, 0.95, 0.96]},
    "cls": {"bal": [0.75, 0.79, 0.74], "wg": [0.60, 0.62, None], "site": [0.60, 0.61, 0.62],
            "seen": [0.93, 0.95, 0.97]},
}
FID = {"medi": [30.0, 32.0, 34.0], "cls": [50.0, 52.0, 48.0]}


def _config(task: str, method_params: dict | None = None) -> dict:
    return {
        "method": "x", "task": task, "preset": "smoke", "seed": 0, "device": "cpu",
        "data": {"root": "", "image_size": 32, "shortcut_strength": 0.9},
        "split": {"seed": 0, "heldout_fraction": 0.3},
        "probe": {"encoder": "fbank", "min_group_size": 10, "C": 1.0},
        "method_params": method_params or {},
    }


def _groups(method: str, seed: int) -> list[dict]:
    rows = [("LUAD|S1|white", 40, 36), ("LUSC|S2|white", 40, 30), (f"LUAD|{XSS_SITE}|white", 20, 8),
            (f"LUSC|S2|{XSS_RACE}", 20, 4), ("LUSC|S3|asian", 4, 0)]
    bump = {"none": 0, "cls": 1, "medi": 2}[method]
    return [{"group": g, "n": n, "correct": min(n, c + bump), "accuracy": min(n, c + bump) / n, "flagged": n < 10}
            for g, n, c in rows]


def _predictions(method: str, seed: int) -> pd.DataFrame:
    """200 test_unseen + 40 test_seen patches; none is right on 70%, medi also on 10% more, cls exactly as none."""
    frames = []
    for split, n in (("test_unseen", 200), ("test_seen", 40)):
        rng = np.random.default_rng(100 + seed)  # the same test patches for every method of a seed
        label = np.arange(n) % 2
        site = np.array(SITES)[rng.integers(0, 3, n)]
        right = rng.random(n) < 0.7
        if method == "medi":
            right |= np.arange(n) % 10 == 3
        pred = np.where(right, label, 1 - label)
        ct = np.where(label == 0, "LUAD", "LUSC")
        frames.append(pd.DataFrame({
            "split": split, "patient_id": [f"TCGA-{s}-{i:04d}" for i, s in enumerate(site)],
            "tissue_source_site": site, "race": "white",
            "group": [f"{c}|{s}|white" for c, s in zip(ct, site, strict=True)],
            "label": label, "pred": pred, "p_LUAD": 1.0 - pred, "p_LUSC": pred.astype(float),
        }))
    return pd.concat(frames, ignore_index=True)


def _samples(method: str, run_dir: Path) -> None:
    colours = {"none": (230, 150, 200), "medi": (140, 80, 170), "cls": (120, 120, 210)}
    rows, images = [], []
    for ct_i, ct in enumerate(("LUAD", "LUSC")):
        for site_i, site in enumerate(SITES):
            for k in range(3):
                img = np.zeros((16, 16, 3), np.uint8) + np.array(colours[method], np.uint8)
                img[4:12, 4:12] = (40 * ct_i + 30 * site_i + 10 * k) % 255
                images.append(img)
                rows.append({"label": ct_i, "cancer_type": ct, "project_id": f"TCGA-{ct}", "tissue_source_site": site,
                             "race": "white", "gender": "male", "age_at_index": 60.0, "patient_id": f"P{k}",
                             "slide_id": f"SL{k}", "is_synthetic": method != "none", "source": method})
    meta = pd.DataFrame(rows)[list(METADATA_COLUMNS)]
    save_samples(Split(np.stack(images), meta, "train"), run_dir / SAMPLES_FILE, synthetic_only=method != "none")


def _record(task: str, method: str, seed: int, metrics: dict, run_dir: Path, groups=None, params=None) -> dict:
    return {
        "schema": 1, "run_id": f"{task}-{method}-{seed}-{json.dumps(params or {})}",
        "name": f"{method}-{task}-s{seed}",
        "method": method, "task": task, "preset": "smoke", "seed": seed, "device": "cpu", "encoder": "fbank",
        "config": _config(task, params), "code_version": "0.1.0", "git_commit": "abc1234",
        "started": f"2026-01-01T00:00:0{seed}+00:00", "duration_s": 1.0, "run_dir": str(run_dir),
        "metrics": metrics, "groups": {"test_unseen": groups or [], "test_seen": [], "val": []},
        "classes": ["LUAD", "LUSC"] if task == "nsclc" else ["UCEC", "UCS"], "data": {}, "method_report": {},
        "mlflow": {"tracking_uri": "sqlite:///x.db", "experiment": f"medibench-{task}", "run_id": "m"},
    }


def fixed_records(root: Path) -> list[dict]:
    """The fixed set: nsclc (none, medi, cls x seeds 0-2, with predictions and samples), uterine (none only)."""
    records = []
    for method, v in VALUES.items():
        for seed in range(3):
            run_dir = root / "runs" / "nsclc" / method / f"{method}-nsclc-s{seed}-000000"
            run_dir.mkdir(parents=True)
            _predictions(method, seed).to_csv(run_dir / "predictions.csv.gz", index=False)
            _samples(method, run_dir)
            metrics = {
                "test_unseen/balanced_accuracy": v["bal"][seed], "test_unseen/worst_group_accuracy": v["wg"][seed],
                "test_unseen/site_balanced_accuracy": v["site"][seed], "test_seen/balanced_accuracy": v["seen"][seed],
                "test_seen/worst_group_accuracy": None, "test_seen/site_balanced_accuracy": v["seen"][seed],
                "train/n_real": 100.0, "train/n_synthetic": 0.0 if method == "none" else 50.0,
            }
            if method in FID:
                f = FID[method][seed]
                metrics.update({"fid/fbank/mean": f, "fid/fbank/LUAD": f - 2, "fid/fbank/LUSC": f + 2,
                                "fid/fbank/mean/ci_low": f - 3, "fid/fbank/mean/ci_high": f + 3,
                                "fid/fbank/LUAD/n_real": 200.0, "fid/fbank/LUSC/n_real": 200.0,
                                "fid/fbank/n_real": 400.0, "fid/fbank/n_synthetic": 400.0, "fid/fbank/small_n": 2.0,
                                "fid/fbank/dim": 222.0})
            records.append(_record("nsclc", method, seed, metrics, run_dir, _groups(method, seed)))
    for seed, value in ((0, 0.61), (1, 0.65)):
        metrics = {"test_unseen/balanced_accuracy": value, "test_seen/balanced_accuracy": 0.9}
        records.append(_record("uterine", "none", seed, metrics, root / "gone" / f"u{seed}",
                               [{"group": "UCS|S9|white", "n": 12, "correct": 6, "accuracy": 0.5, "flagged": False}]))
    return records


class Cells(HTMLParser):
    """Collects leaderboard cells: (task, split, row label, metric key) -> (text, classes)."""

    def __init__(self):
        super().__init__()
        self.cells: dict[tuple, tuple[str, str]] = {}
        self.table = self.row = self.cell = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "leaderboard" in (a.get("class") or ""):
            self.table = (a["data-task"], a["data-split"])
        elif tag == "tr" and self.table and "data-method" in a:
            self.row = a["data-method"]
        elif tag == "td" and self.row and "data-metric" in a:
            self.cell, self.classes, self.text = a["data-metric"], a.get("class", ""), []

    def handle_data(self, data):
        if self.cell:
            self.text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self.cell:
            self.cells[(*self.table, self.row, self.cell)] = ("".join(self.text), self.classes)
            self.cell = None
        elif tag == "table":
            self.table = self.row = None


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    records = fixed_records(root)
    report = R.render(records, str(root))
    parser = Cells()
    parser.feed(report.html)
    return root, records, report, parser.cells


def _t_interval(values):
    from scipy import stats

    v = np.asarray(values, dtype=float)
    return stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=v.std(ddof=1) / np.sqrt(len(v)))


def test_table_numbers_intervals_and_best_marks(fixed):
    _, _, _, cells = fixed
    bal = "test_unseen/balanced_accuracy"
    text, cls = cells[("nsclc", "test_unseen", "none", bal)]
    low, high = _t_interval(VALUES["none"]["bal"])
    assert text == f"0.720[{low:.3f}, {high:.3f}]" == "0.720[0.670, 0.770]" and "best" not in cls
    text, cls = cells[("nsclc", "test_unseen", "medi", bal)]
    assert text.startswith("0.820★[0.770, 0.870]") and "best" in cls
    text, cls = cells[("nsclc", "test_unseen", "cls", bal)]
    low, high = _t_interval(VALUES["cls"]["bal"])
    assert text == f"0.760[{low:.3f}, {high:.3f}]" and "best" not in cls
    wg = "test_unseen/worst_group_accuracy"
    assert cells[("nsclc", "test_unseen", "medi", wg)][0].startswith("0.700★[0.700, 0.700]")
    assert cells[("nsclc", "test_unseen", "cls", wg)][0].startswith("0.610[")  # two seeds have a value
    seen = "test_seen/balanced_accuracy"
    assert cells[("nsclc", "test_seen", "none", seen)][0].startswith("0.960★")
    assert cells[("nsclc", "test_seen", "none", "test_seen/worst_group_accuracy")][0] == "n/a"
    # FID: lower is better, only on test_unseen, with the sample counts
    fid = "fid/fbank/mean"
    text, cls = cells[("nsclc", "test_unseen", "medi", fid)]
    low, high = _t_interval(FID["medi"])
    assert text.startswith(f"32.00★[{low:.2f}, {high:.2f}]") and "best" in cls and "n = 200 real" not in text
    assert "n = 400 real / 400 synth.unstable: few images" in text  # two lines
    assert cells[("nsclc", "test_unseen", "none", fid)][0] == "n/a"
    assert not any(k[1] == "test_seen" and k[3].startswith("fid/") for k in cells)
    # uterine: one method, two seeds, nothing to mark as best
    text, cls = cells[("uterine", "test_unseen", "none", bal)]
    assert text.startswith("0.630[") and "best" not in cls


def _independent(records: list[dict]) -> list[dict]:
    """The records as schema-3 runs that each drew their own cohort (the embedded data's default)."""
    out = []
    for rec in records:
        rec = json.loads(json.dumps(rec))
        rec["schema"] = 3
        rec["replicate"] = {"seed": rec["seed"], "seeds": {}, "varied": ["cohort", "split", "model", "sampling",
                                                                         "probe"]}
        out.append(rec)
    return out


def test_the_verdict_tests_the_declared_family_with_holm_across_it(fixed):
    """Independent cohorts: the paired t-test against scipy; Holm over the declared primary family (medi - cls on
    balanced accuracy and FID, medi - none on balanced accuracy) by hand; the rest exploratory, never significant."""
    from scipy import stats

    records = _independent(fixed[1])
    sections = R.build_sections(records)
    nsclc = next(s for s in sections if s.task == "nsclc")
    per = R.page_comparisons(sections)
    comps = {(c.a, c.b, c.metric): c for c in per[sections.index(nsclc)]}
    assert {(a, b) for a, b, _ in comps} == {("cls", "none"), ("medi", "none"), ("medi", "cls")}
    assert R.resplit_ratio(nsclc) == 0.0
    bal = {k: VALUES[k]["bal"] for k in VALUES}
    raw = {("medi", "cls", "balanced_accuracy"): stats.ttest_rel(bal["medi"], bal["cls"]).pvalue,
           ("medi", "cls", "fid/fbank"): stats.ttest_rel(FID["medi"], FID["cls"]).pvalue}
    # medi - none on balanced accuracy: +0.10 in every replicate; the t-test is undefined there (not p = 0)
    degenerate = comps[("medi", "none", "balanced_accuracy")]
    assert degenerate.role == "primary" and degenerate.degenerate and math.isnan(degenerate.p_holm)
    assert not degenerate.significant and verdicts._verdict_word(degenerate) == "t undefined: every difference equal"
    order = sorted(raw, key=raw.get)
    holm, running = {}, 0.0
    for i, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[key]))
        holm[key] = running
    for key, p in raw.items():
        c = comps[key]
        assert c.role == "primary" and c.n == 3 and c.p_t == pytest.approx(p) and c.p_holm == pytest.approx(holm[key])
        assert c.family_size == 3  # the declared family with paired runs: medi - cls x 2, medi - none x 1
    exploratory = comps[("cls", "none", "balanced_accuracy")]
    assert exploratory.role == "secondary" and math.isnan(exploratory.p_holm) and not exploratory.significant
    assert exploratory.p_t == pytest.approx(stats.ttest_rel(bal["cls"], bal["none"]).pvalue)
    table = R.verdict_table(list(comps.values()))
    row = next(r for r in table["rows"] if r["label"] == "cls − none")
    assert "exploratory" in row["cells"][0]["notes"] and not any("p(Holm)" in n for n in row["cells"][0]["notes"])
    assert any(n.startswith("MDE ") for n in row["cells"][0]["notes"])
    assert table["columns"][-1] == "FID (fbank)" and table["rows"][0]["cells"][-1]["notes"] == ["no FID"]
    # the page leads with the verdict across tasks, then each task's verdict before its tables
    page = R.render(records, "r").html
    first = page.index('id="' + nsclc.anchor + '"')
    assert page.index('id="verdict-across-tasks"') < first < page.index("Primary: medi − cls, balanced accuracy") \
        < page.index(f'id="{nsclc.anchor}-verdict"') < page.index('class="comparisons"') \
        < page.index('class="leaderboard"')
    assert "3 independent cohorts of the generator" in page and "Primary family (3 comparison(s)" in page


def test_re_splits_of_one_cohort_use_the_corrected_test(fixed):
    """Records that re-split one cohort (schema 1: split and model fixed; no cohort seed) get Nadeau and Bengio's
    corrected variance with n_test / n_train from their split counts, and the page says what they speak for."""
    from scipy import stats

    records = json.loads(json.dumps(fixed[1]))
    for rec in records:
        rec["data"] = {"splits": {"train": {"patients": 100}, "test_unseen": {"patients": 50}}}
    sections = R.build_sections(records)
    nsclc = next(s for s in sections if s.task == "nsclc")
    assert R.resplit_ratio(nsclc) == pytest.approx(0.5)
    c = next(c for c in R.page_comparisons(sections)[sections.index(nsclc)]
              if (c.a, c.b, c.metric) == ("medi", "cls", "balanced_accuracy"))
    d = np.subtract(VALUES["medi"]["bal"], VALUES["cls"]["bal"])
    t = d.mean() / (d.std(ddof=1) * math.sqrt(1 / 3 + 0.5))
    assert c.p_t == pytest.approx(2 * stats.t.sf(abs(t), 2)) and "Nadeau-Bengio" in c.inference
    page = R.render(records, "r").html
    assert "re-split 3 times (the verdict speaks for the one generated cohort, not for new ones)" in page
    # the exact sign-flip test has no correction: on re-splits the verdict uses the corrected t whatever --test says
    flip = next(c for c in R.page_comparisons(sections, test="signflip")[sections.index(nsclc)]
                if c.metric == "balanced_accuracy" and c.a == "medi" and c.b == "cls")
    assert flip.test == "t"


def test_sections_figures_and_notices(fixed):
    _, _, report, _ = fixed
    nsclc, uterine = report.sections
    assert [r.label for r in nsclc.rows] == ["none", "cls", "medi"]
    assert nsclc.missing == ["stain_norm", "cyclegan"] and uterine.missing == ["stain_norm", "cyclegan", "cls", "medi"]
    names = [f.name for f in report.figures]
    assert names == [f"{nsclc.anchor}-verdict", f"{nsclc.anchor}-groups-site", f"{nsclc.anchor}-groups-race",
                     f"{nsclc.anchor}-fid",
                     f"{nsclc.anchor}-samples", f"{uterine.anchor}-groups-site", f"{uterine.anchor}-groups-race"]
    for fig in report.figures:
        assert fig.png.startswith(b"\x89PNG") and len(fig.png) > 5000
    html = report.html
    assert "No records for stain_norm, cyclegan on this task" in html
    assert "No records for stain_norm, cyclegan, cls, medi on this task" in html
    assert "sample grid not drawn: no samples.npz" in html  # uterine's run directories are gone
    assert html.count('class="leaderboard"') == 4 and html.count('<table class="fid"') == 1
    assert html.count("<img ") == 7


def test_every_string_from_the_data_is_escaped(fixed):
    _, _, report, _ = fixed
    html = report.html
    assert XSS_SITE not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "LUSC | S2 | &lt;img src=x onerror=" in html  # the worst-groups table shows it as text
    assert "<script" not in html.lower()
    assert 'font-family: "DejaVu Sans"' in html and "&#34;" not in html.split("</style>")[0]  # CSS is not data


def test_runs_that_vary_the_synthetic_ratio_get_their_own_rows_and_a_figure(tmp_path):
    records = []
    for ratio, acc in ((0.5, [0.74, 0.76]), (1.0, [0.80, 0.82]), (2.0, [0.81, 0.85])):
        for seed in (0, 1):
            metrics = {"test_unseen/balanced_accuracy": acc[seed], "train/n_real": 100.0,
                       "train/n_synthetic": 100.0 * ratio}
            records.append(_record("nsclc", "medi", seed, metrics, tmp_path / "none",
                                   params={"synthetic_ratio": ratio}))
    records += [_record("nsclc", "none", s, {"test_unseen/balanced_accuracy": 0.7}, tmp_path / "n") for s in (0, 1)]
    records.append({"schema": 99, "name": "future-run", "task": "nsclc"})
    report = R.render(records, "r")
    (section,) = report.sections
    assert [r.label for r in section.rows] == ["none", "medi (synthetic_ratio=0.5)", "medi (synthetic_ratio=1.0)",
                                               "medi (synthetic_ratio=2.0)"]
    assert any(f.name.endswith("-ratio") for f in report.figures)
    assert report.skipped == [{"name": "future-run", "reason": "missing field(s) ['method', 'seed', 'metrics', "
                                                               "'config']"}]
    assert "1 record(s) left out" in report.html and "future-run" in report.html


def test_a_missing_or_empty_results_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(R.ReportError, match="nothing-here: no such folder"):
        R.write_report(tmp_path / "nothing-here", tmp_path / "reports")
    (tmp_path / "empty").mkdir()
    proc = run_cli("report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "reports"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'empty'}: no run records there" in proc.stderr
    assert not (tmp_path / "reports").exists()


def test_records_of_one_method_from_different_code_are_an_error_unless_asked_for(fixed, tmp_path):
    root, records, _, _ = fixed
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    changed = [dict(r, code_version="0.1.0+other") if (r["method"], r["seed"]) == ("medi", 0) else r for r in records]
    (mixed / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in changed))
    with pytest.raises(R.ReportError, match=r"records of medi on nsclc \(smoke\): 2 code versions \(0.1.0, "
                       r"0.1.0\+other\) may not be comparable.*--mixed-code.*nothing written"):
        R.write_report(mixed, tmp_path / "reports", pdf=False)
    assert not (tmp_path / "reports").exists()
    R.write_report(mixed, tmp_path / "reports", pdf=False, allow_mixed_code=True)
    page = (tmp_path / "reports" / "leaderboard.html").read_text()
    assert "come from 2 code versions (0.1.0, 0.1.0+other)" in page


def test_several_results_folders_are_reported_together_one_record_per_run(fixed, tmp_path):
    root, records, _, _ = fixed
    folders = {"nsclc": tmp_path / "frozen-a", "uterine": tmp_path / "frozen-b"}
    for task, folder in folders.items():
        folder.mkdir()
        mine = [r for r in records if r["task"] == task] + [records[0]]  # one run in both folders
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine))
    out = tmp_path / "reports"
    proc = run_cli("report", "--results", str(folders["nsclc"]), "--results", str(folders["uterine"]),
                   "--out", str(out), "--no-pdf")
    assert proc.returncode == 0, proc.stderr
    assert "nsclc (smoke): none, cls, medi" in proc.stdout and "uterine (smoke): " in proc.stdout
    assert f"({len(records)} run records," in proc.stdout  # the shared run counted once
    page = (out / "leaderboard.html").read_text()
    # absolute folders by their last two parts: a committed page carries no paths of the machine that made it
    shown = [f"{f.parent.name}/{f.name}" for f in folders.values()]
    assert f"{shown[0]}, {shown[1]}" in page and str(tmp_path) not in page
    md = (out / "leaderboard.md").read_text()  # the verdicts and tables for a README, the page's numbers
    assert "## nsclc, preset smoke" in md and "## uterine, preset smoke" in md
    assert "| medi − none (3) | +0.100; t undefined: every difference equal" in md
    assert "| none (3) | 0.720 [0.670, 0.770] |" in md
    proc = run_cli("report", "--results", str(folders["nsclc"]), "--results", str(tmp_path / "gone"),
                   "--out", str(tmp_path / "r2"), "--no-pdf")
    assert proc.returncode == 1 and f"{tmp_path / 'gone'}: no such folder" in proc.stderr
    assert not (tmp_path / "r2").exists()


def test_a_page_without_valid_records_says_how_to_make_some(tmp_path):
    from pypdf import PdfReader

    report = R.render([{"schema": 99, "name": "future-run", "task": "nsclc"}], "r")
    assert "No run records" in report.html and "python -m benchmark run --method none" in report.html
    R.write_pdf(report.html, tmp_path / "x.pdf")
    pdf = PdfReader(str(tmp_path / "x.pdf"))
    assert len(pdf.pages) == 1 and "No run records" in pdf.pages[0].extract_text()


def test_run_figures_write_samples_as_the_method_returns_them(tmp_path):
    rows = []
    for i in range(30):
        rows.append({"label": i % 2, "cancer_type": ["LUAD", "LUSC"][i % 2], "project_id": "p",
                     "tissue_source_site": f"0{i % 3}", "race": "white", "gender": "male",
                     "age_at_index": float("nan"),
                     "patient_id": f"P{i}", "slide_id": f"S{i}", "is_synthetic": i >= 12, "source": "x",
                     "group": f"{['LUAD', 'LUSC'][i % 2]}|0{i % 3}|white"})
    images = np.random.default_rng(0).integers(0, 255, (30, 8, 8, 3), dtype=np.uint8)
    split = Split(images, pd.DataFrame(rows), "train")
    groups = {"test_unseen": [{"group": "LUAD|01|white", "n": 5, "correct": 4, "accuracy": 0.8, "flagged": True}]}
    logged = []
    paths = R.run_figures(split, groups, tmp_path, "medi-nsclc-s0", True, 0,
                          ("cancer_type", "tissue_source_site", "race"), ("LUAD", "LUSC"),
                          lambda p, a=None: logged.append((p.name, a)))
    imgs, meta = load_samples(tmp_path / SAMPLES_FILE)
    assert len(meta) == 18 and meta["is_synthetic"].all()  # 6 (class, site) cells x 3 synthetic rows, at most 8
    assert meta["tissue_source_site"].tolist()[0] == "00"  # site codes stay strings
    assert imgs.shape == (18, 8, 8, 3) and imgs.dtype == np.uint8
    assert ("samples.png", "figures") in logged and ("groups_test_unseen_site.png", "figures") in logged
    assert all(p.is_file() for p in paths)
    R.run_figures(split, groups, tmp_path, "none", False, 0, ("cancer_type", "tissue_source_site", "race"),
                  ("LUAD", "LUSC"))
    assert len(load_samples(tmp_path / SAMPLES_FILE)[1]) == 30  # every real row: 6 cells of 5


def _poppler(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: run scripts/setup.sh --test (installs poppler-utils and chromium)")
    return path


def test_report_command_writes_html_and_a_pdf_with_the_expected_pages(fixed, tmp_path):
    from pypdf import PdfReader

    root, records, _, _ = fixed
    with open(root / "results.jsonl", "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    out = tmp_path / "reports"
    proc = run_cli("report", "--results", str(root), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "nsclc (smoke): none, cls, medi; no records for stain_norm, cyclegan" in proc.stdout
    assert f"wrote {out / 'leaderboard.html'} (11 run records, 7 figures)" in proc.stdout
    assert (out / "figures").is_dir() and len(list((out / "figures").glob("*.png"))) == 7
    pdf = PdfReader(str(out / "leaderboard.pdf"))
    pages = [p.extract_text() for p in pdf.pages]
    assert "MeDiBench leaderboard" in pages[0] and "Contents" in pages[0]
    assert "Task nsclc · preset smoke" in pages[0] and "Task uterine · preset smoke" in pages[0]  # contents
    nsclc = next(i for i, t in enumerate(pages) if "3 method variant(s), 9 run(s)" in t)
    uterine = next(i for i, t in enumerate(pages) if "1 method variant(s), 2 run(s)" in t)
    assert "Task nsclc · preset smoke" in pages[nsclc] and "Task uterine · preset smoke" in pages[uterine]
    assert nsclc < uterine  # every task after the first starts on its own page; the first follows the contents
    text = "\n".join(pages)
    for needle in ("0.720", "[0.670, 0.770]", "0.820", "Verdict", "Paired differences on test_unseen.",
                   "Primary: medi − none, balanced accuracy: +0.100", "Verdict across tasks", "FID (fbank)",
                   "test_unseen", "test_seen",
                   "No records for stain_norm, cyclegan, cls, medi"):
        assert needle in text, needle
    assert len(pdf.pages) >= 4 and f"page 2 of {len(pdf.pages)}" in pages[1]
    for caption in ("Per-group accuracy: class x site.", "Per-group accuracy: class x race.", "FID per cancer type.",
                    "Sample grid."):
        assert caption in text, caption
    listing = subprocess.run([_poppler("pdfimages"), "-list", str(out / "leaderboard.pdf")], capture_output=True,
                             text=True, check=True).stdout
    assert sum(1 for line in listing.splitlines()[2:] if line.split()[2] == "image") == 7  # every figure drawn once
    # every page rendered: the first not blank; no near-empty page (content only at its top) except where a task
    # section ends, since the next task starts a page
    subprocess.run([_poppler("pdftoppm"), "-png", "-r", "30", str(out / "leaderboard.pdf"), str(tmp_path / "page")],
                   check=True, timeout=120)
    from PIL import Image

    rendered = sorted(tmp_path.glob("page*.png"))
    assert len(rendered) == len(pdf.pages)
    inked = [np.asarray(Image.open(f).convert("L")) < 200 for f in rendered]
    assert inked[0].mean() > 0.005
    starts = {i for i, t in enumerate(pages) if "method variant(s)" in t}
    for i, ink in enumerate(inked[:-1]):
        if i + 1 in starts:
            continue
        rows = np.flatnonzero(ink[: int(0.93 * len(ink))].any(axis=1))  # above the footer ("page n of m")
        # the first page (the verdict across tasks, contents, legend) filled; later ones at least 40% down, since a
        # figure or table that does not fit moves to the next page whole
        assert rows.size and rows[-1] > (0.8 if i == 0 else 0.4) * len(ink), f"page {i + 1} of {len(inked)} is " \
            "nearly empty"


# ---------------------------------------------------------------------------------------------------------------
# the MLflow UI


def test_ui_serves_the_store_and_links_a_comparison_of_two_methods(tmp_path):
    from benchmark.core.tracking import Tracker

    results = tmp_path / "results"
    ids = {}
    for method, value in (("none", 0.70), ("medi", 0.82)):
        tags = {"method": method, "task": "nsclc", "seed": "0", "preset": "smoke"}
        tracker = Tracker(results, "medibench-nsclc", f"{method}-nsclc-s0", tags, {"method": method})
        tracker.log_metrics({"test_unseen/balanced_accuracy": value})
        tracker.finish()
        ids[method] = tracker.run_id
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "benchmark", "ui", "--results", str(results), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        lines, deadline = [], time.time() + 150
        while not any(line.startswith("Compare methods") for line in lines):
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"`benchmark ui` exited ({proc.poll()}) before printing its URL: {lines}")
            lines.append(line.strip())
            assert time.time() < deadline, lines
        url = f"http://127.0.0.1:{port}"
        # it says at once that it is starting (before the server answers), then the URL once the server answers
        assert lines[0].startswith("starting the MLflow server for sqlite:///") and "15-45 s" in lines[0], lines
        assert f"MLflow UI: {url}" in lines[1]
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            assert resp.status == 200
        compare = next(line for line in lines if line.startswith("compare "))
        assert "medi vs none" in compare and ids["none"] in compare and ids["medi"] in compare
        req = urllib.request.Request(url + "/api/2.0/mlflow/runs/search", data=json.dumps(
            {"experiment_ids": [re.search(r"experiments/(\d+)", lines[2]).group(1)]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            runs = json.loads(resp.read())["runs"]
        values = {next(t["value"] for t in r["data"]["tags"] if t["key"] == "method"):
                  {m["key"]: m["value"] for m in r["data"]["metrics"]} for r in runs}
        assert values == {"none": {"test_unseen/balanced_accuracy": 0.70},
                          "medi": {"test_unseen/balanced_accuracy": 0.82}}
    finally:
        proc.send_signal(signal.SIGTERM)  # `benchmark ui` stops its server, which is in its own group
        proc.wait(timeout=40)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3)


def test_ui_without_a_store_says_what_to_do(tmp_path):
    proc = run_cli("ui", "--results", str(tmp_path / "empty"), "--port", str(free_port()))
    assert proc.returncode == 1 and "no MLflow store at" in proc.stderr and "Traceback" not in proc.stderr
    port = free_port()  # nothing listens: with a tracking server configured, ui points at it, after checking it
    proc = run_cli("ui", env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert proc.returncode == 1 and "unreachable" in proc.stderr and str(port) in proc.stderr


def test_sections_are_labelled_by_what_differs_and_ties_are_not_marked(tmp_path):
    def rec(method, seed, preset, strength, value):
        r = _record("nsclc", method, seed, {"test_unseen/balanced_accuracy": value}, tmp_path / "gone")
        r["preset"] = r["config"]["preset"] = preset
        r["config"]["data"] = {**r["config"]["data"], "shortcut_strength": strength,
                               "image_size": 32 if preset == "smoke" else 64}
        return r

    records = [rec(m, s, "smoke", k, 0.7) for m in ("none", "medi") for s in (0, 1) for k in (0.9, 0.5)]
    records += [rec("none", 0, "cpu", 0.9, 0.8)]
    report = R.render(records, "r")
    labels = [(s.preset, s.setting) for s in report.sections]
    assert labels == [("cpu", {}), ("smoke", {"data.shortcut_strength": 0.5}),
                      ("smoke", {"data.shortcut_strength": 0.9})]
    assert "Task nsclc · preset smoke · encoder fbank · data.shortcut_strength=0.5" in report.html
    assert "data.image_size" not in report.html  # the presets explain their own sizes
    assert 'class="num best"' not in report.html  # every method has 0.700: no best to mark


def test_rows_name_parameters_that_differ_from_the_method_defaults(tmp_path):
    from benchmark.core.registry import METHODS
    from benchmark.plugins import load_plugins

    load_plugins()
    default_steps = METHODS.get("medi").default_params("smoke").steps
    records = [_record("nsclc", "medi", s, {"test_unseen/balanced_accuracy": 0.7}, tmp_path / "x",
                       params={"steps": default_steps + 1}) for s in (0, 1)]
    records += [_record("nsclc", "none", 0, {"test_unseen/balanced_accuracy": 0.6}, tmp_path / "y")]
    (section,) = R.render(records, "r").sections
    assert [r.label for r in section.rows] == ["none", f"medi (steps={default_steps + 1})"]


def test_leaderboard_intervals_stay_inside_the_metrics_range():
    from benchmark.report import Row

    row = Row("m", "m", [{"metrics": {"test_unseen/worst_group_accuracy": v, "test_unseen/shortcut_gap": g,
                                      "fid/fbank/mean": f}}
                         for v, g, f in ((1.0, -0.95, 0.1), (0.97, -0.99, 0.05), (0.75, -0.6, 3.0))])
    acc = row.stat("test_unseen/worst_group_accuracy")
    assert acc.high == 1.0 and acc.low > 0
    gap = row.stat("test_unseen/shortcut_gap")
    assert gap.low == -1.0
    fid = row.stat("fid/fbank/mean")
    assert fid.low == 0.0 and math.isfinite(fid.high)


def test_runs_pair_only_within_one_cohort():
    from benchmark.report import Row

    def rec(seed, world):
        return {"seed": seed, "metrics": {"m": 0.5},
                "replicate": {"seed": seed, "seeds": {"cohort": seed, "split": seed}, "cohort_world": world}}

    a = Row("a", "a", [rec(0, 0), rec(1, 1)])
    b = Row("b", "b", [rec(0, 0), rec(1, 7)])  # seed 1 drew another world (data.generator_seed differed)
    assert set(a.by_replicate("m")) & set(b.by_replicate("m")) == {(0, 0, 0)}


def test_notices_name_no_folder_of_the_machine():
    note = ("copy it to /root/.cache/torch/hub/checkpoints/w.pth; looked at: /home/u/w.pth, "
            "see https://pypi.org/project/croma/ and reports/README.md")
    assert R.machine_free(note) == ("copy it to w.pth; looked at: w.pth, see https://pypi.org/project/croma/ and "
                                    "reports/README.md")
