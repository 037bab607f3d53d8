"""The scale stage's parts (benchmark/studies/scale.py): the generated TCGA-UT folder, the process-tree memory
sampler against allocations of known size, the slope, the figure, and the in-memory reference path
(``data.in_memory``), which must give the mapped path's results exactly."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmark.studies import scale
from tests.conftest import run_cli
from tests.real_he import load as load_he

MB = 1024 * 1024


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_generated_folder_is_a_tcga_ut_cohort(tmp_path: Path) -> None:
    from tasks.tcga_ut import load_index

    root, csv = scale.make_folder(192, tmp_path / "tcga192", load_he())
    index, report = load_index(str(root), str(csv), cancer_types=["LUAD", "LUSC"])
    assert len(index) == 192 and report.class_counts == {"LUAD": 96, "LUSC": 96}
    assert index["tissue_source_site"].nunique() == 8  # four a class
    assert index.groupby("tissue_source_site")["cancer_type"].nunique().max() == 1
    assert index["race"].nunique() == 4 and index["slide_id"].nunique() == 64  # 3 patches a slide
    again, _ = scale.make_folder(192, tmp_path / "again", load_he())
    first = sorted(root.rglob("*.jpg"))[0]
    assert first.read_bytes() == (again / first.relative_to(root)).read_bytes()  # deterministic


def test_measure_sees_anonymous_memory(tmp_path: Path) -> None:
    ballast = np.ones(600 * MB, np.uint8)  # this process is large when it starts the child: not the child's peak
    usage = scale.measure(python("""
        import time, numpy as np
        a = np.ones(300 * 1024 * 1024, np.uint8)  # 300 MB, every page touched
        time.sleep(1.0)
    """))
    assert usage.returncode == 0
    assert 300 <= usage.peak_rss_mb < 450 and 300 <= usage.anon_mb < 450
    assert usage.peak_pss_mb >= 300 and usage.file_mb < 150
    del ballast


def test_measure_counts_a_shared_file_once_in_pss(tmp_path: Path) -> None:
    """Two processes that map and read the same 200 MB file: each one's RSS holds it, their PSS shares it."""
    path = tmp_path / "big.npy"
    np.save(path, np.ones(200 * MB, np.uint8))
    reader = f"""
        import time, numpy as np
        a = np.load({str(path)!r}, mmap_mode="r"); a.sum(dtype=np.uint64); time.sleep(1.5)
    """
    one = scale.measure(python(reader))
    two = scale.measure(python(f"""
        import subprocess, sys
        code = {textwrap.dedent(reader)!r}
        procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
        sys.exit(max(p.wait() for p in procs))
    """))
    assert one.returncode == two.returncode == 0 and two.processes >= 3
    assert one.file_mb >= 190 and one.anon_mb < 150
    assert two.rss_sum_mb >= 2 * 190  # RSS counts the shared pages in each process
    assert two.peak_pss_mb < one.peak_pss_mb + 150  # PSS divides them: far from twice one's



def test_steady_pss_is_the_median_while_the_ranks_ran_not_a_transient_peak() -> None:
    usage = scale.measure(python("""
        import time, numpy as np
        a = np.ones(100 * 1024 * 1024, np.uint8); time.sleep(2.0)  # held
        b = np.ones(300 * 1024 * 1024, np.uint8); time.sleep(0.3)  # a transient spike
    """))
    assert usage.returncode == 0 and usage.peak_pss_mb >= 390
    assert 90 <= usage.steady_pss_mb < 250
    # the ranks: a run and each process of a launch, not the launcher nor a decode worker
    assert scale._is_rank(["python", "-m", "benchmark", "-q", "run"])
    assert scale._is_rank(["python", "-u", "-m", "benchmark", "-q", "run"])
    assert not scale._is_rank(["python", "-m", "accelerate.commands.launch", "--multi_gpu", "-m", "benchmark"])
    assert not scale._is_rank(["python", "-B", "-c", "from multiprocessing.spawn import spawn_main"])

def test_slope_known_answer() -> None:
    assert scale.slope([100, 400, 1600], [10 + 0.5 * n for n in (100, 400, 1600)]) == pytest.approx(0.5)
    assert np.isnan(scale.slope([100, 100], [1, 2]))


def test_perf_rows_read_memory_as_lower_is_better() -> None:
    from benchmark.studies.perf import Row

    assert Row("scale:x", "MB", 500, 1000, "", "").ratio == pytest.approx(2.0)
    assert Row("scale:x", "KB/patch", 8, 64, "", "").ratio == pytest.approx(8.0)
    assert Row("scale:x", "images/s", 90, 100, "", "").ratio == pytest.approx(0.9)


def test_figure_draws_both_paths() -> None:
    runs = [dict(n=n, path=p, method=m, peak_rss_mb=(1300 if m == "medi" else 500) + n * (0.05 if p == "in_memory"
                                                                                       else 0.01))
            for n in (10, 40, 160) for p in scale.PATHS for m in ("none", "medi")]
    png = scale.figure_png({"runs": runs, "image_size": 128}, "title")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import io

    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 80)  # the mapped path's line (C0)
    halves = blue[:, : pixels.shape[1] // 2].sum(), blue[:, pixels.shape[1] // 2 :].sum()
    assert min(halves) > 100, halves  # a line in each panel


@pytest.mark.slow
def test_in_memory_path_gives_the_mapped_paths_results(tmp_path: Path) -> None:
    root, csv = scale.make_folder(320, tmp_path / "tcga", load_he())
    records = {}
    for path in scale.PATHS:
        out = tmp_path / path
        proc = run_cli(*scale.run_command("none", root, csv, out, "smoke", path)[3:], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        records[path] = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    mapped, memory = records["mapped"], records["in_memory"]
    assert memory["config"]["data"]["in_memory"] is True and mapped["config"]["data"]["in_memory"] is False
    assert mapped["data"]["load_report"]["decode_from_cache"] is False
    assert mapped["data"]["load_report"]["decode_seconds"] > 0
    assert mapped["metrics"] == memory["metrics"]


def test_cached_embeddings_come_back_mapped(tmp_path: Path) -> None:
    """An all-real split's embeddings are the cache file itself (mapped, read-only), on the first call and the
    next; a split with synthetic rows joins its two cached parts in memory; all equal the uncached embeddings."""
    from benchmark.core.config import ProbeConfig
    from benchmark.core.data import Split, concat
    from benchmark.evaluation.encoders import build_encoder
    from benchmark.orchestration.runner import embed_split
    from tasks.tcga_ut import PathImages, decode_all, load_index

    root, csv = scale.make_folder(64, tmp_path / "tcga", load_he())
    index, _ = load_index(str(root), str(csv))
    pixels, _, _ = decode_all(PathImages(index["path"], 32), tmp_path / "decoded", progress=False)
    meta = index.drop(columns="path").assign(is_synthetic=False)
    real = Split(pixels, meta, "train")
    encoder = build_encoder(ProbeConfig())
    plain = embed_split(encoder, real, None, "cpu", 16)
    for _ in range(2):
        mapped = embed_split(encoder, real, tmp_path / "cache", "cpu", 16)
        assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
        np.testing.assert_array_equal(mapped, plain)
    fake = Split(np.asarray(pixels[:5]), meta.iloc[:5].assign(is_synthetic=True).reset_index(drop=True), "s")
    joined = embed_split(encoder, concat([real, fake], "train"), tmp_path / "cache", "cpu", 16)
    assert not isinstance(joined, np.memmap)
    np.testing.assert_allclose(joined, np.concatenate([plain, plain[:5]]), rtol=1e-5)  # batches differ
