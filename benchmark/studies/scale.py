"""The ``scale`` stage of ``perf``: how memory and speed grow with a cohort that lives in image files, the mapped
decode cache (the default) against the in-memory path (``data.in_memory=true``) in the same run.

For N, 4N and 16N patches (a TCGA-UT-layout folder of real H&E crops, :func:`make_folder`) at 128 px it runs, as a
user would, ``run --method none``, ``run --method stain_norm`` (which writes a normalized copy of every split) and
``run --method medi`` for 50 training steps (a token generation, so that the training dominates), each in its own
process on each path, and reads from the process tree while it runs (psutil, every 0.1 s): peak RSS (the kernel's
high-water mark, what ``/usr/bin/time -v`` reports), and at the peak of the proportional set size (PSS, shared
pages divided among the processes that map them) the anonymous and the file-backed resident memory, and the median
total PSS while the run's processes were alive (``steady_pss_mb``: a training peak swings with its steps'
allocations). The marginal resident memory per added patch is the least-squares slope of peak RSS (and, for
training, of the steady PSS) against N. At 16N it also measures the embedding throughput of the default encoder
over the mapped file against the same rows in memory, and ``medi`` under ``accelerate launch`` with two processes
against one at N and 16N (total PSS of the process tree, since RSS counts the shared pages once per process; and
its slope against N, the part that grows with the cohort).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.studies import timing

#: Patches of the smallest folder per preset (the stage measures N, 4N and 16N).
BASE_N = {"smoke": 48, "cpu": 360}
FACTORS = (1, 4, 16)
IMAGE_SIZE = 128
TRAIN_STEPS = 50
PATHS = ("mapped", "in_memory")
#: What each folder is run with: no augmentation, stain normalization (a normalized copy of every split) and medi's
#: training.
METHODS = ("none", "stain_norm", "medi")
#: Every run's settings: batches small enough that even the smallest folder's splits fill them, so a batch's
#: working memory (a fixed cost) is the same at every N and the slope is what the cohort itself costs.
RUN_SETTINGS = (f"data.image_size={IMAGE_SIZE}", "probe.batch_size=32")
#: The medi run's: 50 training steps and a token generation (the stage measures the data path, not the sampler);
#: batch 4 keeps a 128 px step near half a second on 2 cores.
BATCH = 4
MEDI_SETTINGS = (f"method.steps={TRAIN_STEPS}", f"method.batch_size={BATCH}", "method.synthetic_ratio=0.02",
                 "method.sample_batch_size=8", "method.sampling_steps=10", "method.fid_max_per_class=16",
                 "method.checkpoint_every=1000", "method.preview_every=0")
LAUNCH = ("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no")
_SITES = {"TCGA-LUAD": ("05", "44", "55", "49"), "TCGA-LUSC": ("18", "22", "33", "43")}
_RACES = ("white", "black or african american", "asian", "not reported")


def make_folder(n: int, root: Path, he: np.ndarray, seed: int = 0) -> tuple[Path, Path]:
    """A TCGA-UT-layout folder of ``n`` LUAD / LUSC patches under ``root`` (256 px JPEG crops of ``he`` with random
    rotations and flips; four sites per class, slides of several patches) and its GDC clinical CSV beside it.
    Returns (root, csv)."""
    from PIL import Image

    from tasks.tcga_ut import TCGA_PROJECTS

    rng = np.random.default_rng(seed)
    per_slide = int(min(20, max(2, n // 64)))
    root = Path(root)
    rows, k, i = [], 0, 0
    while k < n:
        project = ("TCGA-LUAD", "TCGA-LUSC")[i % 2]
        site = _SITES[project][(i // 2) % 4]
        slide = f"TCGA-{site}-{1000 + i:04d}-01Z-00-DX1"
        folder = root / TCGA_PROJECTS[project.removeprefix("TCGA-")] / slide
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(min(per_slide, n - k)):
            y, x = (int(v) for v in rng.integers(0, np.array(he.shape[:2]) - 256))
            tile = np.rot90(he[y : y + 256, x : x + 256], int(rng.integers(4)))
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            Image.fromarray(np.ascontiguousarray(tile)).save(folder / f"{slide[:12]}_{j}.jpg", quality=90)
            k += 1
        rows.append({"project_id": project, "case_submitter_id": slide[:12], "slide_submitter_id": slide,
                     "gender": "female" if i % 3 else "male", "race": _RACES[i % 4],
                     "ethnicity": "not hispanic or latino", "age_at_index": str(40 + i % 40), "vital_status": "Alive",
                     "tissue_source_site": site})
        i += 1
    import pandas as pd

    csv = root.parent / f"{root.name}.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return root, csv


# ---------------------------------------------------------------------------------------------------------------
# memory of a process tree


@dataclass
class Usage:
    """What one command cost: wall time, peak RSS (the largest process's high-water mark, VmHWM, which a process
    starts afresh at exec: the rusage figure of a child carries its parent's RSS at the fork), the process tree's
    largest total PSS with its anonymous and file-backed resident memory at that moment, and the largest sum of
    its processes' RSS (which counts a shared page once per process; PSS divides it among them), in MB. The peak
    of a training run swings by ~100-200 MB with a step's transient allocations, more than a few thousand patches
    cost; ``steady_pss_mb``, the median total PSS over the samples in which every rank of the run was alive (the
    processes running ``-m benchmark``: one, or each of a launch), is what the slopes against N are also taken of."""

    seconds: float
    peak_rss_mb: float
    peak_pss_mb: float
    anon_mb: float
    file_mb: float
    processes: int
    returncode: int
    stderr_tail: str = ""
    rss_sum_mb: float = 0.0
    steady_pss_mb: float = 0.0


def measure(cmd: Sequence[str], env: dict[str, str] | None = None, interval: float = 0.1,
            cwd: Path | None = None) -> Usage:
    """Run ``cmd`` and sample its process tree's memory every ``interval`` seconds until it exits."""
    import subprocess

    import psutil

    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        best = {"pss": 0.0, "anon": 0.0, "file": 0.0, "n": 0, "hwm": 0.0, "rss_sum": 0.0}
        by_ranks: list[tuple[int, float]] = []  # (ranks alive, total PSS) of every sample
        done = threading.Event()

        def sample() -> None:
            try:
                top = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not done.is_set():
                pss = anon = file = rss = 0.0
                ranks = 0
                try:
                    tree = [top, *top.children(recursive=True)]
                except psutil.Error:
                    break
                for p in tree:
                    try:
                        full = p.memory_full_info()
                        best["hwm"] = max(best["hwm"], _high_water(p.pid))
                        ranks += _is_rank(p.cmdline())
                    except psutil.Error:  # exited between listing and reading
                        continue
                    pss += full.pss
                    anon += full.rss - full.shared  # RssAnon (shared = RssFile + RssShmem)
                    file += full.shared
                    rss += full.rss
                best["rss_sum"] = max(best["rss_sum"], rss)
                by_ranks.append((ranks, pss))
                if pss > best["pss"]:
                    best.update(pss=pss, anon=anon, file=file)
                best["n"] = max(best["n"], len(tree))
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = "\n".join(err.read().decode(errors="replace").strip().splitlines()[-5:])
    mb = 1024.0 * 1024.0
    peak = best["hwm"] / mb if best["hwm"] else usage.ru_maxrss / 1024.0  # no /proc: the rusage figure
    most = max((r for r, _ in by_ranks), default=0)
    steady = float(np.median([v for r, v in by_ranks if r == most])) if by_ranks else 0.0
    return Usage(seconds, peak, best["pss"] / mb, best["anon"] / mb, best["file"] / mb, int(best["n"]),
                 proc.returncode, tail, best["rss_sum"] / mb, steady / mb)


def _is_rank(cmdline: Sequence[str]) -> bool:
    """A process that runs the benchmark itself (not the launcher, nor a decode worker or resource tracker)."""
    return "benchmark" in cmdline[1:4] and "-m" in cmdline[1:3]


def _high_water(pid: int) -> float:
    """A process's peak RSS in bytes (VmHWM of /proc/<pid>/status; 0 where there is no /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return 0.0


def slope(ns: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against ``ns`` (NaN with fewer than two distinct ns)."""
    x, y = np.asarray(ns, dtype=float), np.asarray(values, dtype=float)
    if len(np.unique(x)) < 2:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


# ---------------------------------------------------------------------------------------------------------------
# the stage


def run_command(method: str, root: Path, csv: Path, out: Path, preset: str, path: str, seed: int = 0,
                launch: bool = False) -> list[str]:
    """The ``python -m benchmark run`` command of one measurement (under ``accelerate launch`` with ``launch``)."""
    args = ["run", "--method", method, "--task", "nsclc", "--preset", preset, "--seed", str(seed), "--device", "cpu",
            "--no-progress", "--out", str(out), "--set", f"data.root={root}", "--set", f"data.metadata={csv}",
            "--set", f"data.in_memory={str(path == 'in_memory').lower()}"]
    for setting in RUN_SETTINGS + (MEDI_SETTINGS if method == "medi" else ()):
        args += ["--set", setting]
    head = [sys.executable, *LAUNCH, "-m", "benchmark", "-q"] if launch else [sys.executable, "-m", "benchmark", "-q"]
    return head + args


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    return env


def _record(out: Path, method: str) -> dict:
    found = sorted(Path(out).glob(f"runs/nsclc/{method}/*/record.json"))
    if not found:
        raise RuntimeError(f"scale: no record of {method} under {out}")
    return json.loads(found[-1].read_text())


def _checked(usage: Usage, cmd: Sequence[str]) -> Usage:
    if usage.returncode != 0:
        raise RuntimeError(f"scale: {' '.join(cmd[1:])} failed ({usage.returncode}): {usage.stderr_tail}")
    return usage


def embed_rates(cache: Path, preset: str, rounds: int = 3) -> tuple[float, float]:
    """Default-encoder embedding throughput (patches/s) over every row of the decoded cache file, read in batches
    from the mapped file (ArrayImages, as a split's are) against the same rows in memory; ``rounds`` passes over
    the mapped file alternate with ``rounds`` + 1 over the array in memory (timing.alternate)."""
    from benchmark.core.config import PRESETS
    from benchmark.core.data import ArrayImages
    from benchmark.evaluation.encoders import build_encoder

    encoder = build_encoder(PRESETS[preset].probe)
    batch = 32  # RUN_SETTINGS' probe.batch_size
    mapped = np.load(cache, mmap_mode="r")
    n = len(mapped)
    lazy = ArrayImages(mapped, token="scale")
    memory = np.asarray(lazy)

    def embed_all(images) -> None:
        for first in range(0, n, batch):
            encoder.embed(np.asarray(images[first : first + batch]), "cpu")

    embed_all(memory)  # warm-up
    return timing.alternate(lambda: timing.rate(lambda: embed_all(lazy), n, rounds=1, warmup=0),
                            lambda: timing.rate(lambda: embed_all(memory), n, rounds=1, warmup=0), rounds=rounds)


def collect(preset: str, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement of the stage: ``runs`` (one dict a command: n, path, method, processes, Usage fields, decode
    seconds, training throughput) and ``embed`` ((mapped, in-memory) patches/s at 16N)."""
    from benchmark.studies import he_image

    base = BASE_N[preset]
    he = he_image.load()
    env = _env()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="medibench-scale-") as tmp:
        tmp = Path(tmp)
        for factor in FACTORS:
            n = base * factor
            t0 = time.perf_counter()
            root, csv = make_folder(n, tmp / f"tcga{n}", he)
            echo(f"scale: {n} patches written ({time.perf_counter() - t0:.0f} s)")
            for path in PATHS:
                out = tmp / f"out{n}_{path}"
                for method in METHODS:  # the later ones reuse the decode cache none made
                    cmd = run_command(method, root, csv, out, preset, path)
                    usage = _checked(measure(cmd, env), cmd)
                    record = _record(out, method)
                    load = record["data"]["load_report"]
                    entry = dict(asdict(usage), n=n, path=path, method=method, processes_launched=1,
                                 decode_seconds=load.get("decode_seconds", math.nan),
                                 decode_from_cache=load.get("decode_from_cache"))
                    if method == "medi":
                        seconds = record.get("method_report", {}).get("train_seconds")
                        entry["train_images_per_s"] = TRAIN_STEPS * BATCH / seconds if seconds else math.nan
                    runs.append(entry)
                    echo(f"scale: {method} at {n} patches, {path}: peak RSS {usage.peak_rss_mb:,.0f} MB "
                         f"({usage.seconds:.0f} s)")
        top = base * FACTORS[-1]
        caches = sorted((tmp / f"out{top}_mapped" / "cache").rglob("tcga_ut_*.npy"))
        embed = embed_rates(caches[0], preset) if caches else (math.nan, math.nan)
        # medi under accelerate launch with two processes against one, at N and 16N, each from a fresh folder: the
        # total held, and its slope (the cohort's share, which the processes should not duplicate)
        for n in (base, top):
            for processes in (1, 2):
                out = tmp / f"accelerate{processes}_{n}"
                cmd = run_command("medi", tmp / f"tcga{n}", tmp / f"tcga{n}.csv", out, preset, "mapped",
                                  launch=processes == 2)
                usage = _checked(measure(cmd, env), cmd)
                echo(f"scale: medi at {n} patches, {processes} process(es) from a fresh folder: total PSS "
                     f"{usage.peak_pss_mb:,.0f} MB")
                runs.append(dict(asdict(usage), n=n, path="mapped", method="medi", processes_launched=processes,
                                 accelerate=True))
    return {"base_n": base, "factors": list(FACTORS), "image_size": IMAGE_SIZE, "runs": runs, "embed": list(embed)}


def figure_png(details: dict, title: str) -> bytes:
    """Peak RSS against the number of patches, both paths, one panel a method (``none``, ``stain_norm``, ``medi``)."""
    from benchmark.core.images import png_bytes, pyplot

    plt = pyplot()

    runs = [r for r in details["runs"] if not r.get("accelerate")]
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    # own y scales: medi trains, so it holds more
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.6), squeeze=False)
    axes = axes[0]
    for ax, method in zip(axes, methods, strict=True):
        for path, style in (("in_memory", dict(color="0.45", ls="--", marker="o", label="in memory (reference)")),
                            ("mapped", dict(color="C0", marker="s", label="mapped cache file"))):
            pts = sorted((r["n"], r["peak_rss_mb"]) for r in runs if r["method"] == method and r["path"] == path)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ms=4, **style)
        ax.set_title(f"run --method {method}" + (f" ({TRAIN_STEPS} training steps)" if method == "medi" else ""),
                     fontsize=9)
        ax.set_xlabel(f"patches in the cohort ({details['image_size']} px)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.05)  # after plotting: from zero to above the highest point
        ax.set_ylabel("peak RSS (MB)", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig, dpi=110, crop=False)
