"""The whole benchmark on a TCGA-UT-layout folder of real JPEGs, through the command line a user types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.tasks.test_tcga_ut import FOLDER, crops, gdc_table  # noqa: F401  (crops is a fixture)

RACES = ["white", "black or african american", "asian", "not reported"]


def slides() -> dict[str, tuple[str, str, str, str]]:
    """12 patients per class over 3 sites each, one slide per patient."""
    out = {}
    for project, sites in (("TCGA-LUAD", ("05", "44", "55")), ("TCGA-LUSC", ("18", "22", "33"))):
        for i in range(12):
            site = sites[i % 3]
            out[f"TCGA-{site}-{4000 + i:04d}-01Z-00-DX1"] = (project, "female" if i % 2 else "male", RACES[i % 4],
                                                             str(50 + i))
    return out


@pytest.fixture
def tcga(tmp_path: Path, crops):  # noqa: F811
    root = tmp_path / "TCGA-UT"
    table = slides()
    k = 0
    for slide, (project, *_) in table.items():
        folder = root / FOLDER[project] / slide
        folder.mkdir(parents=True)
        for j in range(4):
            Image.fromarray(crops[k % len(crops)]).save(folder / f"{slide[:12]}_{j}.jpg", quality=90)
            k += 1
    csv = tmp_path / "clinical.csv"
    gdc_table(table).to_csv(csv, index=False)
    return root, csv


def test_every_task_input_path_runs_on_a_tcga_ut_folder(tcga, tmp_path):
    root, csv = tcga
    out = tmp_path / "results"
    proc = run_cli("run", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--out", str(out),
                   "--no-progress", "--set", f"data.root={root}", f"data.metadata={csv}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["data"]["data_source"] == "tcga-ut"
    assert record["data"]["load_report"]["n_images"] == 96
    assert record["config"]["data"]["root"] == str(root)
    assert record["metrics"]["test_unseen/n"] > 0


def test_corrupt_file_fail_and_skip_policies_from_the_cli(tcga, tmp_path):
    root, csv = tcga
    bad = sorted(root.glob("*/*/*.jpg"))[5]
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    out = tmp_path / "results"
    args = ["run", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--out", str(out), "--no-progress",
            "--set", f"data.root={root}", f"data.metadata={csv}"]
    failed = run_cli(*args, cwd=tmp_path)
    assert failed.returncode == 1
    assert bad.name in failed.stderr and "Traceback" not in failed.stderr
    assert not (out / "results.jsonl").exists()
    assert not list(out.glob("runs/*/*/*/record.json"))  # nothing that looks finished
    skipped = run_cli(*args, "data.on_error=skip", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 unreadable image" in skipped.stderr
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["data"]["n_skipped_files"] == 1
    assert record["data"]["load_report"]["skipped"][0][0].endswith(bad.name)
    assert record["data"]["load_report"]["n_images"] == 95


def test_missing_root_is_one_clear_line(tmp_path):
    csv = tmp_path / "clinical.csv"
    gdc_table().to_csv(csv, index=False)
    proc = run_cli("run", "--method", "none", "--task", "nsclc", "--preset", "smoke", "--out", str(tmp_path / "r"),
                   "--set", f"data.root={tmp_path / 'nowhere'}", f"data.metadata={csv}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr
