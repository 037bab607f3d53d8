"""The documentation site builds in strict mode (every link, anchor and page checked) and its result tables are the
generated leaderboards themselves, not copies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([str(MKDOCS), "build", "--strict", "--config-file", str(root / "mkdocs.yml"), "--site-dir",
                           str(site)], cwd=root, capture_output=True, text=True, timeout=600, env=env)


def test_the_docs_build_strictly_and_carry_the_generated_leaderboard(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tmp_path / "site" / "reports" / "leaderboard" / "index.html").read_text(encoding="utf-8")
    first_verdict = next(line for line in (ROOT / "reports" / "leaderboard.md").read_text().splitlines()
                         if line.startswith("- "))[2:40]
    assert first_verdict in page
    assert (tmp_path / "site" / "reports" / "figures" / "s2-nsclc-verdict.png").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    """Strict mode is on: a page that links to a page that does not exist stops the build, naming both."""
    import shutil

    copy = tmp_path / "repo"
    for name in ("docs", "reports", "results", "examples"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("runs", "*.egg-info"))
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(ROOT / name, copy)
    (copy / "docs" / "metrics.md").write_text((copy / "docs" / "metrics.md").read_text()
                                              + "\nSee [the missing page](nowhere.md).\n")
    result = build(copy, tmp_path / "site")
    assert result.returncode == 1
    assert "metrics.md" in result.stderr and "nowhere.md" in result.stderr
