"""freeze: a finished sweep copied into a self-contained folder that the report renders on its own."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np

from benchmark.core.images import load_samples
from tests.conftest import run_cli

GRID = ["--methods", "none,stain_norm", "--tasks", "nsclc", "--seeds", "2", "--preset", "smoke"]


def test_freeze_copies_a_finished_sweep_that_the_report_renders_alone(tmp_path):
    out = tmp_path / "results"
    dest = tmp_path / "frozen"

    # nothing has run yet: a clear error naming the unfinished jobs, and no folder
    early = run_cli("freeze", *GRID, "--results", str(out), "--dest", str(dest), cwd=tmp_path)
    assert early.returncode != 0 and "Traceback" not in early.stderr
    assert "4 of 4 jobs have no finished record" in early.stderr and "none-nsclc-s0" in early.stderr
    assert not dest.exists()

    swept = run_cli("sweep", *GRID, "--out", str(out), "--no-progress", cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr
    # records of mixed or uncommitted code are refused: published results name one clean commit
    paths = sorted(out.glob("runs/*/*/*/record.json"))
    for i, path in enumerate(paths):
        rec = json.loads(path.read_text())
        rec["git_commit"] = "0123456789-dirty" if i == 0 else "0123456789"
        path.write_text(json.dumps(rec))
    mixed = run_cli("freeze", *GRID, "--results", str(out), "--dest", str(dest), cwd=tmp_path)
    assert mixed.returncode != 0 and "2 commit(s) (0123456789, 0123456789-dirty)" in mixed.stderr
    assert "one clean commit" in mixed.stderr and not dest.exists()
    rec = json.loads(paths[0].read_text())
    rec["git_commit"] = "0123456789"
    paths[0].write_text(json.dumps(rec))
    frozen = run_cli("freeze", *GRID, "--results", str(out), "--dest", str(dest), cwd=tmp_path)
    assert frozen.returncode == 0, frozen.stderr
    assert "froze 4 runs" in frozen.stdout

    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert manifest["runs"] == 4 and manifest["grid"]["seeds"] == [0, 1]
    assert manifest["command"].startswith("python -m benchmark sweep --methods none,stain_norm")
    assert manifest["record_commits"] == ["0123456789"] and manifest["one_clean_commit"]
    # the protocol the sweep declared travels with the records, byte for byte
    assert (dest / "endpoints.toml").read_bytes() == (out / "endpoints.toml").read_bytes()
    assert "endpoints.toml" in manifest["sha256"]
    # every copied file is listed with its hash, and nothing big came along
    for rel, digest in manifest["sha256"].items():
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == digest
    copied = {p.name for p in dest.glob("runs/*/*/*/*")}
    assert {"record.json", "predictions.csv.gz", "groups_test_unseen.csv"} <= copied
    assert not list(dest.glob("runs/*/*/*/figures")) and not list(dest.glob("**/*.safetensors"))
    # samples only for the lowest seed of each method, cut to the largest sites
    samples = sorted(dest.glob("runs/*/*/*/samples.npz"))
    assert [p.parent.name.split("-")[2] for p in samples] == ["s0", "s0"]
    images, meta = load_samples(samples[0])
    assert len(images) == len(meta) > 0 and meta["tissue_source_site"].nunique() <= 6

    lines = [json.loads(x) for x in (dest / "results.jsonl").read_text().splitlines()]
    originals = {r["run_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(lines) == 4
    for rec in lines:
        assert not rec["run_dir"].startswith("/") and rec["metrics"] == originals[rec["run_id"]]["metrics"]

    # the live results can go: the report renders from the frozen folder alone, paired tests included
    shutil.rmtree(out)
    report = run_cli("report", "--results", str(dest), "--out", str(tmp_path / "reports"), "--no-pdf",
                     cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "4 run records" in report.stdout
    md = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "endpoints declared before the runs (frozen/endpoints.toml)" in md
    html = (tmp_path / "reports" / "leaderboard.html").read_text()
    mean = np.mean([r["metrics"]["test_unseen/balanced_accuracy"] for r in lines if r["method"] == "stain_norm"])
    assert f"{mean:.3f}" in html
    # the verdict pairs the two replicates, each with its own split; the sample grid is drawn
    assert "2 paired replicate(s) from 2 independent cohorts of the generator" in html
    assert "Up to four training images per class and site" in html

    # frozen results are never overwritten
    before = (dest / "MANIFEST.json").read_bytes()
    again = run_cli("freeze", *GRID, "--results", str(tmp_path / "results"), "--dest", str(dest), cwd=tmp_path)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert (dest / "MANIFEST.json").read_bytes() == before


def test_a_process_records_the_commit_of_the_code_it_loaded(monkeypatch):
    """A sweep runs for hours; commits made meanwhile must not be attributed to runs of the code already loaded."""
    import subprocess

    from benchmark.core import provenance

    provenance.git_commit.cache_clear()
    first = provenance.git_commit()  # the checkout's commit, or "" outside git

    def moved_on(*args, **kwargs):
        return subprocess.CompletedProcess(args, 0, stdout="0123456789\n", stderr="")

    monkeypatch.setattr(provenance.subprocess, "run", moved_on)  # what git would answer after a new commit
    assert provenance.git_commit() == first != "0123456789"
    provenance.git_commit.cache_clear()
    assert provenance.git_commit().startswith("0123456789")  # a new process would see the new commit
    provenance.git_commit.cache_clear()


def test_a_partial_freeze_keeps_a_sweeps_progress_and_a_new_folder_resumes_from_it(tmp_path):
    """freeze --finished-only keeps what finished (the manifest says what did not); sweep --from-frozen on a machine
    without the sweep's folder takes those runs and runs only the rest; the full freeze then holds the same
    records."""
    out, partial = tmp_path / "results", tmp_path / "partial"
    first = run_cli("sweep", *GRID[:5], "1", *GRID[6:], "--out", str(out), "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    dirty_ok = "--allow-dirty"  # this test is about unfinished jobs, not commits (the test above is)
    frozen = run_cli("freeze", *GRID, "--results", str(out), "--dest", str(partial), "--finished-only", dirty_ok,
                     cwd=tmp_path)
    assert frozen.returncode == 0, frozen.stderr
    assert "froze 2 runs" in frozen.stdout and "2 of 4 jobs not finished" in frozen.stdout
    assert "--from-frozen" in frozen.stdout
    manifest = json.loads((partial / "MANIFEST.json").read_text())
    assert manifest["complete"] is False and manifest["unfinished"] == ["none-nsclc-s1", "stain_norm-nsclc-s1"]
    strict = run_cli("freeze", *GRID, "--results", str(out), "--dest", str(tmp_path / "strict"), dirty_ok,
                     cwd=tmp_path)
    assert strict.returncode != 0 and "2 of 4 jobs have no finished record" in strict.stderr

    shutil.rmtree(out)  # the machine lost the sweep's folder
    other = tmp_path / "elsewhere"
    resumed = run_cli("sweep", *GRID, "--out", str(other), "--no-progress", "--from-frozen", str(partial),
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "took 2 finished run(s) of this grid" in resumed.stdout and "done 2" in resumed.stdout
    assert "to run 2" in resumed.stdout
    full = tmp_path / "full"
    done = run_cli("freeze", *GRID, "--results", str(other), "--dest", str(full), dirty_ok, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((full / "MANIFEST.json").read_text())["complete"] is True
    kept = {r["run_id"]: r for r in map(json.loads, (partial / "results.jsonl").read_text().splitlines())}
    final = {r["run_id"]: r for r in map(json.loads, (full / "results.jsonl").read_text().splitlines())}
    assert set(kept) < set(final) and all(final[k]["metrics"] == kept[k]["metrics"] for k in kept)
    assert (full / "endpoints.toml").read_bytes() == (partial / "endpoints.toml").read_bytes()
    missing = run_cli("sweep", *GRID, "--out", str(other), "--from-frozen", str(tmp_path / "nothing"),
                      cwd=tmp_path)
    assert missing.returncode == 1 and "nothing is not a frozen results folder" in missing.stderr
