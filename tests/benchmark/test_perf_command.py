"""``python -m benchmark perf``: the JSON record and the markdown table, each stage against its reference.

Only cheap stages run here (the whole command is on demand); the figures themselves are not asserted, since these
machines are shared: a stage must produce positive throughputs, a ratio consistent with them, and peak memory.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


def test_perf_writes_json_and_markdown_with_ratios(tmp_path):
    out = tmp_path / "perf.json"
    proc = run_cli("perf", "--preset", "smoke", "--stages", "generate,diffusion_train", "--threads", "1",
                   "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    stages = {s["stage"]: s for s in record["stages"]}
    assert set(stages) == {"generate", "diffusion_train"} and not record["errors"]
    for s in stages.values():
        assert s["ours"] > 0 and s["reference"] > 0 and s["peak_mb"] > 50
        assert abs(s["ratio"] - s["ours"] / s["reference"]) < 1e-9  # throughput: higher is better
        assert s["ours_label"] and s["reference_label"]
    assert "plain fp32 diffusers loop" in stages["diffusion_train"]["reference_label"]
    assert record["machine"]["cores"] >= 1 and record["preset"] == "smoke"
    table = out.with_suffix(".md").read_text()
    assert "| stage | ours | reference | ratio | peak memory |" in table
    assert "| diffusion_train |" in table and "| generate |" in table
    assert "| diffusion_train |" in proc.stdout  # the table is printed too


def test_perf_names_a_bad_stage(tmp_path):
    proc = run_cli("perf", "--stages", "generate,warp", "--out", str(tmp_path / "p.json"), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown 'warp'" in proc.stderr and "Traceback" not in proc.stderr


def test_perf_suggests_the_stage_a_typo_meant(tmp_path):
    proc = run_cli("perf", "--stages", "time_to_qualty", "--out", str(tmp_path / "p.json"), cwd=tmp_path)
    assert proc.returncode == 2 and "did you mean 'time_to_quality'?" in proc.stderr


@pytest.mark.slow
def test_perf_workers_stage_times_two_workers_against_one(tmp_path):
    out = tmp_path / "perf.json"
    proc = run_cli("perf", "--preset", "smoke", "--stages", "workers", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())["stages"][0]
    assert row["stage"] == "workers" and row["ours"] > 0 and row["reference"] > 0
    assert abs(row["ratio"] - row["reference"] / row["ours"]) < 1e-9  # time: lower is better
    assert "2 workers" in row["ours_label"] and "1 worker" in row["reference_label"]
