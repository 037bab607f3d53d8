"""``python -m benchmark perf``: every stage's speed against a named reference, measured in the same run.

Each stage runs in its own spawned process (so its peak memory is its own, and thread settings do not leak) and
measures ours and the reference alternately (reference, ours, reference again; the reference figure is the mean
of its two rounds), so a machine that slows down during the run affects both sides. Output: a JSON record and a
markdown table (stage, ours, reference, ratio, peak memory). Ratios are what to compare across machines; the
absolute figures depend on the CPU (the record names it).

Stages: data generation (embedded renderer) and loading (TCGA-UT JPEG layout), diffusion training step, sampling
(DPM-Solver++ at 20 steps against DDIM-50 and, with a trained model, the FID each reaches), time to quality (the
preset's diffusion recipe against the reference recipe, trained one after the other on nsclc and measured as they
train; :mod:`studies.quality`), embedding with the default encoder, FID features, CycleGAN training, a sweep on
two workers against one, and the end-to-end ``run`` of every method.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.studies.timing import alternate, rate

STAGES = ("generate", "load", "embed", "fid_features", "diffusion_train", "sampling", "time_to_quality",
          "cyclegan_train", "workers", "e2e", "scale")
#: Units where less is better (the ratio is reference / ours); for the others (throughputs) it is ours / reference.
LOWER_IS_BETTER = ("s", "min", "MB", "KB/patch", "ms/patch")


@dataclass
class Row:
    stage: str
    unit: str
    ours: float
    reference: float
    ours_label: str
    reference_label: str
    peak_mb: float = math.nan
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """How many times better ours is (higher is better: throughput ours/ref; time, memory ref/ours)."""
        if not (self.ours > 0 and self.reference > 0):
            return math.nan
        return self.reference / self.ours if self.unit in LOWER_IS_BETTER else self.ours / self.reference


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------------------------
# stages (each runs in its own process; ``size`` comes from the preset)


def stage_generate(preset: str) -> Row:
    from benchmark.core.config import PRESETS
    from tasks import embedded as E

    size = PRESETS[preset].data.image_size
    n = 96 if preset == "smoke" else 384
    cohort = E.make_cohort(E.CohortSpec(cancer_types=tuple(E.CANCER_TYPES), n_sites=48, n_patients=480,
                                        patches_per_patient=1)).iloc[:n]
    ours = lambda: rate(lambda: E.render(cohort, size, 0), n, rounds=2)  # noqa: E731
    one_by_one = lambda: [E.render(cohort.iloc[i : i + 1], size, 0) for i in range(len(cohort))]  # noqa: E731
    ref = lambda: rate(one_by_one, n, rounds=1)  # noqa: E731
    o, r = alternate(ours, ref)
    return Row("generate", "patches/s", o, r, f"render, batch of {n} at {size} px", "render one patch per call")


def stage_load(preset: str) -> Row:
    from PIL import Image

    from benchmark.core.config import PRESETS
    from tasks import embedded as E
    from tasks.tcga_ut import PathImages, decode_all

    size = PRESETS[preset].data.image_size
    n = 96 if preset == "smoke" else 240
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "Lung_adenocarcinoma" / "TCGA-05-4244-01Z-00-DX1"
        folder.mkdir(parents=True)
        cohort = E.make_cohort(E.CohortSpec(cancer_types=("LUAD", "LUSC"), n_sites=8, n_patients=40,
                                            patches_per_patient=4)).iloc[:n]
        tiles = E.render(cohort, 256, 0)  # TCGA-UT patches are 256 x 256 JPEGs
        paths = []
        for i, tile in enumerate(tiles):
            path = folder / f"{i:04d}.jpg"
            Image.fromarray(tile).save(path, quality=90)
            paths.append(str(path))
        images = PathImages(paths, size)

        def ours() -> float:
            return rate(lambda: decode_all(images, None, workers=2, progress=False), n, rounds=2)

        def plain() -> None:
            for p in paths:
                with Image.open(p) as im:
                    np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))

        o, r = alternate(ours, lambda: rate(plain, n, rounds=2))
    return Row("load", "patches/s", o, r, f"decode_all, 2 workers, 256->{size} px",
               "PIL open/convert/resize loop")


def _patches(n: int, size: int) -> np.ndarray:
    from tasks import embedded as E

    cohort = E.make_cohort(E.CohortSpec(cancer_types=("LUAD", "LUSC"), n_sites=8, n_patients=64,
                                        patches_per_patient=8)).iloc[:n]
    return E.render(cohort, size, 0)


def stage_embed(preset: str) -> Row:
    import torch

    from benchmark.core._compat import ensure_torchvision
    from benchmark.core.config import PRESETS
    from benchmark.evaluation.encoders import FilterBankEncoder

    size = PRESETS[preset].data.image_size
    n = 256 if preset == "smoke" else 1024
    x = _patches(n, size)
    enc = FilterBankEncoder()
    ensure_torchvision()
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)

    def ref_once() -> None:
        with torch.inference_mode():
            model(t)

    o, r = alternate(lambda: rate(lambda: enc.embed(x), n, rounds=2), lambda: rate(ref_once, n, rounds=2))
    return Row("embed", "patches/s", o, r, f"fbank encoder at {size} px", "timm resnet18 (random weights)")


def stage_fid_features(preset: str) -> Row:
    import torch
    import torch.nn.functional as F

    from benchmark.core._compat import ensure_torchvision
    from benchmark.core.config import PRESETS
    from benchmark.evaluation import fid
    from benchmark.evaluation.encoders import FilterBankEncoder

    size = PRESETS[preset].data.image_size
    n = 64 if preset == "smoke" else 256
    x = torch.from_numpy(_patches(n, size)).permute(0, 3, 1, 2).contiguous()
    ours_module = fid.encoder_features(FilterBankEncoder())
    ensure_torchvision()
    import timm

    inception = timm.create_model("inception_v3", pretrained=False, num_classes=0).eval()

    def ours_once() -> None:
        with torch.inference_mode():
            ours_module(x)

    def ref_once() -> None:  # what FID's standard space costs: resize to 299 px, Inception-v3 pool features
        with torch.inference_mode():
            inception(F.interpolate(x.float() / 255, size=(299, 299), mode="bilinear", align_corners=False))

    o, r = alternate(lambda: rate(ours_once, n, rounds=2), lambda: rate(ref_once, n, rounds=1))
    return Row("fid_features", "images/s", o, r, "fbank feature space (domain FID)",
               "Inception-v3 pool features at 299 px (random weights)")


def _unet(params, size: int):
    from benchmark.core._compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import UNet2DModel

    n = len(params.block_out_channels)
    return UNet2DModel(
        sample_size=size, block_out_channels=params.block_out_channels, layers_per_block=params.layers_per_block,
        down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n, add_attention=params.attention,
        norm_num_groups=params.norm_num_groups, class_embed_type="identity",
    )


def stage_diffusion_train(preset: str) -> Row:
    """Our training step (as methods/diffusion.train_diffusion: accelerate, resolved precision, fused AdamW,
    clipping, EMA) against the plain fp32 loop of the diffusers examples on the same UNet and batch."""
    import torch

    from benchmark.core._compat import ensure_torchvision
    from benchmark.core.config import PRESETS
    from methods.diffusion import MeDi, make_accelerator, resolve_mixed_precision

    ensure_torchvision()  # before any diffusers import
    from diffusers.training_utils import EMAModel

    size = PRESETS[preset].data.image_size
    p = MeDi.default_params(preset)
    b, d_t = p.batch_size, p.block_out_channels[0] * 4
    x, noise = torch.randn(b, 3, size, size), torch.randn(b, 3, size, size)
    t, z = torch.randint(0, 1000, (b,)), torch.randn(b, d_t)
    torch.manual_seed(0)
    ref = _unet(p, size)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=p.lr)

    def ref_step() -> None:
        loss = torch.nn.functional.mse_loss(ref(x, t, class_labels=z).sample, noise)
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()

    precision = resolve_mixed_precision(p.mixed_precision, "cpu")
    acc = make_accelerator(precision, "cpu")
    ours = _unet(p, size)
    opt = torch.optim.AdamW(ours.parameters(), lr=p.lr, fused=True)
    ours, opt = acc.prepare(ours, opt)
    ema = EMAModel(list(ours.parameters()), decay=p.ema_decay, foreach=True)

    def our_step() -> None:
        with acc.autocast():
            pred = ours(x, t, class_labels=z).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        acc.backward(loss)
        acc.clip_grad_norm_(ours.parameters(), p.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(ours.parameters())

    steps = 4 if preset == "smoke" else 10
    o, r = alternate(lambda: rate(our_step, b, rounds=steps), lambda: rate(ref_step, b, rounds=steps))
    n_params = sum(q.numel() for q in ref.parameters())
    return Row("diffusion_train", "images/s", o, r,
               f"our step ({'fp32' if precision == 'no' else precision}, fused AdamW, clip, EMA), batch {b}",
               "plain fp32 diffusers loop, AdamW", note=f"UNet {n_params / 1e6:.2f} M parameters at {size} px",
               extra={"precision": precision, "batch": b, "unet_parameters": n_params})


def _trained_medi(preset: str, results: Path):
    """(method, ctx, train split) with the task's trained medi model from ``results``' cache, or None."""
    from benchmark.core.registry import TASKS
    from benchmark.orchestration.runner import build_config
    from benchmark.plugins import load_plugins
    from benchmark.protocols import Context
    from methods.diffusion import MeDi

    load_plugins()
    cfg = build_config("medi", "nsclc", preset, 0, "cpu", [])
    cache = results / "cache"
    task = TASKS.get("nsclc")(cfg.task_data(), cfg.split, cache, False)
    train = task.splits(cfg.seed_for("split"))["train"]
    method = MeDi(cfg.method_params)
    ctx = Context(device="cpu", preset=preset, seed=0, task=task, run_dir=results, cache_dir=cache, progress=False)
    return (method, ctx, train) if method.load(train, ctx) else None


def stage_sampling(preset: str, results: Path) -> Row:
    """Images/s of DPM-Solver++ at 20 steps against DDIM-50 on the preset's UNet; with a trained nsclc medi model
    in ``results``, also each sampler's FID (default encoder space) against real training patches of the same
    class and site, and the fewest DPM-Solver++ / DDIM steps that reach DDIM-50's FID."""
    from benchmark.evaluation.encoders import FilterBankEncoder
    from benchmark.evaluation.fid import frechet_distance

    found = _trained_medi(preset, results)
    extra: dict[str, Any] = {}
    note = ""
    if found is None:
        note = (f"no trained cpu-preset nsclc medi model in {results}/cache: speed only (random weights); run "
                f"`python -m benchmark run --method medi --task nsclc --preset {preset}` for the FID comparison")
        return _sampling_speed_only(preset, note)
    method, ctx, train = found
    real = train.metadata[~train.metadata["is_synthetic"].astype(bool)]
    rows = real.sample(n=min(256 if preset != "smoke" else 64, len(real)), random_state=0)
    enc = FilterBankEncoder()
    real_feats = enc.embed(np.asarray(train.images)[rows.index.to_numpy()])
    results_by: dict[str, tuple[float, float]] = {}
    for sampler, steps in (("ddim", 50), ("dpmpp", 10), ("dpmpp", 15), ("dpmpp", 20), ("ddim", 20)):
        method.model.params = replace(method.model.params, sampler=sampler, sampling_steps=steps)
        start = time.perf_counter()
        images = method.model.sample(rows, "cpu", 0, progress=False)
        rate = len(rows) / (time.perf_counter() - start)
        results_by[f"{sampler}-{steps}"] = (rate, frechet_distance(real_feats, enc.embed(images)))
    target = results_by["ddim-50"][1]
    reaching = [k for k, (_, f) in results_by.items() if k != "ddim-50" and f <= target]
    best = min(reaching, key=lambda k: int(k.split("-")[1])) if reaching else ""
    extra = {k: {"images_per_s": round(r, 1), "fid_fbank": round(f, 3)} for k, (r, f) in results_by.items()}
    extra["fewest_steps_reaching_ddim50_fid"] = best or None
    note = "FID(fbank) vs real training patches: " + ", ".join(f"{k} {f:.2f}" for k, (_, f) in results_by.items())
    note += f"; fewest steps reaching DDIM-50: {best or 'none of those tried'}"
    return Row("sampling", "images/s", results_by["dpmpp-20"][0], results_by["ddim-50"][0], "DPM-Solver++ 20 steps",
               "DDIM 50 steps (the paper's)", note=note, extra=extra)


def _sampling_speed_only(preset: str, note: str) -> Row:
    import pandas as pd

    from benchmark.core.config import PRESETS
    from methods.diffusion import DiffusionModel, MeDi, Vocabulary

    size = PRESETS[preset].data.image_size
    p = MeDi.default_params(preset)
    meta = pd.DataFrame({"cancer_type": ["LUAD", "LUSC"] * 32, "tissue_source_site": ["A", "B"] * 32,
                         "race": ["white"] * 64})
    vocab = Vocabulary.from_metadata(meta, ["tissue_source_site", "race"])
    rates = {}
    for sampler, steps in (("ddim", 50), ("dpmpp", 20)):
        model = DiffusionModel(replace(p, sampler=sampler, sampling_steps=steps), ["LUAD", "LUSC"], vocab, size)
        n = 16 if preset == "smoke" else 64
        start = time.perf_counter()
        model.sample(meta.iloc[:n], "cpu", 0, progress=False)
        rates[sampler] = n / (time.perf_counter() - start)
    return Row("sampling", "images/s", rates["dpmpp"], rates["ddim"], "DPM-Solver++ 20 steps",
               "DDIM 50 steps (the paper's)", note=note)


TTQ_KINDS = ("medi", "cls", "cyclegan")  # the generative methods the time_to_quality stage measures


def stage_time_to_quality(preset: str, results: Path, methods: list[str] | None = None) -> list[Row]:
    """MeDi, CLS and the CycleGAN on nsclc (split and model seed 0; ``methods`` picks some of them): the reference
    recipe (``reference_recipe`` of each method's module) trained to its end, then the preset's recipe, both
    measured as they train (:mod:`studies.quality`). ``ours`` is the time the preset's recipe needs to reach the
    reference's final quality (FID for the diffusion models, the colour distance to the target site for the
    CycleGAN), ``reference`` the reference's whole training time; ratio = reference / ours (NaN when never
    reached). The curves go into ``extra``, and :func:`write_outputs` draws them."""
    from benchmark.core.registry import TASKS
    from benchmark.orchestration.runner import build_config
    from benchmark.plugins import load_plugins
    from benchmark.studies.quality import SampleQuality, cyclegan_curve, quality_curve, time_to
    from methods import cyclegan, diffusion

    load_plugins()
    rows = []
    quality = None
    for kind in [k for k in TTQ_KINDS if methods is None or k in methods]:
        cfg = build_config(kind, "nsclc", preset, 0, "cpu", [])
        if quality is None:
            task = TASKS.get("nsclc")(cfg.task_data(), cfg.split, results / "cache", False)
            train = task.splits(cfg.seed_for("split"))["train"].load()
            quality = SampleQuality(train, list(task.classes), n_fid=64 if preset == "smoke" else 192,
                                    per_cell=4 if preset == "smoke" else 12)
        ours_params = cfg.method_params
        module, curve_of, measure = ((cyclegan, cyclegan_curve, "delta_e") if kind == "cyclegan"
                                     else (diffusion, quality_curve, "fid"))
        ref_params = replace(ours_params, **module.reference_recipe(preset))
        ref_curve = curve_of(ref_params, train, task, quality, points=10)
        curve = curve_of(ours_params, train, task, quality, points=8)
        target = ref_curve[-1][measure]
        reached = time_to(curve, target, measure)
        final, ref_final = curve[-1], ref_curve[-1]
        name = "FID" if measure == "fid" else "colour distance to the target site (delta-E)"
        note = (f"reaches the reference's final {name} {target:.3f} after {reached:.0f} s" if math.isfinite(reached)
                else f"never reaches the reference's final {name} {target:.3f} (its own: {final[measure]:.3f})")
        shown = (("fid", "FID"), ("delta_e", "delta-E"), ("site_fidelity", "site fidelity"),
                 ("class_fidelity_counterfactual", "counterfactual class fidelity"))
        note += "; at the end, ours vs reference: " + ", ".join(
            f"{label} {final[m]:.2f} vs {ref_final[m]:.2f}" for m, label in shown if math.isfinite(final[m]))
        ours_fields, ref_fields = asdict(ours_params), asdict(ref_params)
        differs = [k for k, v in ours_fields.items() if ref_fields[k] != v]
        rows.append(Row(
            f"time_to_quality:{kind}", "s", reached, ref_final["seconds"],
            f"{kind}, this preset's recipe ({_recipe_label(ours_fields, differs)})",
            f"{kind}, reference recipe ({_recipe_label(ref_fields, differs)}), to its final {name}",
            note=note,
            extra={"measure": measure, "target": target, "curves": {"ours": curve, "reference": ref_curve},
                   "recipe": {k: [ref_fields[k], ours_fields[k]] for k in differs},
                   "train_seconds": {"ours": final["seconds"], "reference": ref_final["seconds"]}},
        ))
    return rows


def _recipe_label(values: dict[str, Any], fields: list[str]) -> str:
    return ", ".join(f"{k} {values[k]}" for k in fields) or "same"


def stage_cyclegan_train(preset: str) -> Row:
    """Our site-conditioned generator (one model for every target site) against the reference's design, one
    two-domain CycleGAN per site pair, at the same widths: images/s per training step, and the note gives how
    many pair models the reference would need to cover the task's sites."""
    import torch

    from methods.cyclegan import CycleGAN, Trainer

    p = CycleGAN.default_params(preset)
    n_sites = 21 if preset != "smoke" else 8
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(256, 32, 32, 3), dtype=np.uint8)
    ours = Trainer(p, images, rng.integers(0, n_sites, size=256), n_sites + 1, "cpu")
    pair = Trainer(p, images, rng.integers(0, 2, size=256), 2, "cpu")
    steps = 2 if preset == "smoke" else 5
    counter = iter(range(10**9))
    ours_rate = lambda: rate(lambda: ours.step(next(counter)), p.batch_size, rounds=steps)  # noqa: E731
    pair_rate = lambda: rate(lambda: pair.step(next(counter)), p.batch_size, rounds=steps)  # noqa: E731
    o, r = alternate(ours_rate, pair_rate)
    pairs = n_sites * (n_sites - 1) // 2
    del torch
    return Row("cyclegan_train", "images/s", o, r, f"one site-conditioned CycleGAN ({n_sites} sites)",
               "one two-domain CycleGAN (per site pair)",
               note=f"the pairwise design needs {pairs} models for {n_sites} sites; this design needs 1")


def stage_workers(preset: str) -> Row:
    """Wall time of one small sweep (``none`` on nsclc, four replicates) on two workers, each with half the cores
    (:mod:`benchmark.core.threads`), against the same sweep on one worker with every core; fresh results folders."""
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            cmd = [sys.executable, "-m", "benchmark", "-q", "sweep", "--methods", "none", "--tasks", "nsclc",
                   "--seeds", "4", "--preset", preset, "--device", "cpu", "--workers", str(workers),
                   "--out", str(Path(tmp) / f"w{workers}"), "--no-progress"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds[workers] = time.perf_counter() - start
            if proc.returncode != 0:
                err = proc.stderr.strip().splitlines()
                raise RuntimeError(f"perf workers: {' '.join(cmd)} failed: {err[-1] if err else proc.returncode}")
    from benchmark.core import threads

    cores = threads.usable_cores()
    return Row("workers", "s", seconds[2], seconds[1],
               f"sweep of 4 runs, 2 workers x {threads.share(2)} thread(s)",
               f"the same sweep, 1 worker x {cores} thread(s)",
               note=f"none on nsclc, seeds 0-3, {cores} usable cores")


def stage_e2e(preset: str, results: Path | None, methods: list[str]) -> list[Row]:
    """Wall time and peak memory of ``python -m benchmark run`` for every method (a subprocess each, fresh results
    folder unless ``results`` is given); reference: the ``none`` run of the same task; for medi also a second seed
    that reuses the trained model."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(results) if results else Path(tmp)
        times: dict[str, tuple[float, float]] = {}
        runs = [(m, 0) for m in methods] + ([("medi", 1)] if "medi" in methods else [])
        for method, seed in runs:
            cmd = [sys.executable, "-m", "benchmark", "-q", "run", "--method", method, "--task", "nsclc", "--preset",
                   preset, "--seed", str(seed), "--out", str(out), "--no-progress", "--device", "cpu"]
            log_path = Path(tmp) / f"{method}-{seed}.log"
            start = time.perf_counter()
            with open(log_path, "w") as log_file:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file)
                _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - start
            if os.waitstatus_to_exitcode(status) != 0:
                err = log_path.read_text().strip().splitlines()
                raise RuntimeError(f"perf e2e: {' '.join(cmd)} failed: {err[-1] if err else status}")
            times[f"{method}-s{seed}"] = (seconds, usage.ru_maxrss / 1024.0)
        ref = times.get("none-s0", (math.nan, math.nan))[0]
        for key, (seconds, peak) in times.items():
            label = f"run {key.replace('-s', ' seed ')} ({preset})"
            note = "reuses the seed-0 model" if key == "medi-s1" else ""
            rows.append(Row(f"e2e:{key}", "s", seconds, ref, label, "run none seed 0", peak, note))
    return rows


def stage_scale(preset: str) -> list[Row]:
    """Memory and speed against cohort size, the mapped decode cache against the in-memory path
    (:mod:`studies.scale`); the per-command details ride on the first row's ``extra``."""
    from benchmark.studies import scale

    details = scale.collect(preset, echo=lambda line: print(line, flush=True))
    runs = [r for r in details["runs"] if not r.get("accelerate")]
    ns = [details["base_n"] * f for f in details["factors"]]
    top = ns[-1]
    rows = []
    for method in scale.METHODS:
        by = {(r["path"], r["n"]): r for r in runs if r["method"] == method}
        for n in ns:
            m, ref = by[("mapped", n)], by[("in_memory", n)]
            rows.append(Row(f"scale:{method}@{n}", "MB", m["peak_rss_mb"], ref["peak_rss_mb"],
                            f"peak RSS of run --method {method}, {n} patches, mapped cache",
                            "the same run with data.in_memory=true", peak_mb=m["peak_rss_mb"],
                            note=f"anon {m['anon_mb']:,.0f} / file {m['file_mb']:,.0f} MB at the PSS peak; in "
                                 f"memory {ref['anon_mb']:,.0f} / {ref['file_mb']:,.0f} MB"))
        per_patch = [scale.slope(ns, [by[(p, n)]["peak_rss_mb"] for n in ns]) * 1024 for p in scale.PATHS]
        rows.append(Row(f"scale:{method} marginal", "KB/patch", per_patch[0], per_patch[1],
                        f"peak RSS per added patch, run --method {method}, mapped (slope over {ns[0]}-{top})",
                        "the same, in memory"))
        if method == "medi":  # a training peak swings with its steps' allocations: the steady PSS's slope too
            steady = [scale.slope(ns, [by[(p, n)]["steady_pss_mb"] for n in ns]) * 1024
                      for p in scale.PATHS]
            rows.append(Row("scale:medi steady marginal", "KB/patch", steady[0], steady[1],
                            f"median PSS while running, per added patch, medi, mapped (slope over {ns[0]}-{top})",
                            "the same, in memory"))
    decode = {r["path"]: r for r in runs if r["method"] == "none" and r["n"] == top}
    rows.append(Row("scale:decode", "ms/patch", *(decode[p]["decode_seconds"] / top * 1000 for p in scale.PATHS),
                    f"decode of {top} JPEGs (256 -> {details['image_size']} px) into the cache file",
                    "the same decode, then read into memory"))
    rows.append(Row("scale:embed", "patches/s", *details["embed"],
                    f"default encoder, batches read from the mapped file ({top} patches)", "the same rows in memory"))
    train = {r["path"]: r["train_images_per_s"] for r in runs if r["method"] == "medi" and r["n"] == top}
    rows.append(Row("scale:train", "images/s", train["mapped"], train["in_memory"],
                    f"medi, {scale.TRAIN_STEPS} steps of {scale.BATCH}, batches read from the mapped file",
                    "the same, in memory"))
    launched = {(r["processes_launched"], r["n"]): r for r in details["runs"] if r.get("accelerate")}
    one, two = launched[(1, top)], launched[(2, top)]
    rows.append(Row("scale:accelerate", "MB", two["steady_pss_mb"], one["steady_pss_mb"],
                    f"medi, {top} patches, accelerate launch with 2 processes: total PSS while both ran (median)",
                    "one process: its PSS while it ran (median)", peak_mb=two["peak_pss_mb"],
                    note=f"2 processes hold {two['steady_pss_mb'] / one['steady_pss_mb']:.2f}x the memory of one "
                         f"(peaks: {two['peak_pss_mb']:,.0f} and {one['peak_pss_mb']:,.0f} MB, "
                         f"{two['peak_pss_mb'] / one['peak_pss_mb']:.2f}x)"))
    grow = {k: scale.slope([ns[0], top], [launched[(k, n)]["steady_pss_mb"] for n in (ns[0], top)]) * 1024
            for k in (1, 2)}
    peak_grow = {k: scale.slope([ns[0], top], [launched[(k, n)]["peak_pss_mb"] for n in (ns[0], top)]) * 1024
                 for k in (1, 2)}
    rows.append(Row("scale:accelerate marginal", "KB/patch", grow[2], grow[1],
                    f"total PSS per added patch, 2 processes (median while running; slope over {ns[0]}-{top})",
                    "one process", note=f"of the peaks: {peak_grow[2]:.1f} and {peak_grow[1]:.1f} KB/patch"))
    rows[0].extra = details
    return rows


# ---------------------------------------------------------------------------------------------------------------
# driver


def _stage_worker(name: str, preset: str, results: str, methods: list[str], threads: int, conn) -> None:
    from benchmark.core.threads import limit

    limit(threads)
    try:
        if name == "sampling":
            rows = [stage_sampling(preset, Path(results))]
        elif name == "time_to_quality":
            rows = stage_time_to_quality(preset, Path(results), methods)
        elif name == "e2e":
            rows = stage_e2e(preset, None, methods)
        elif name == "scale":
            rows = stage_scale(preset)
        else:
            rows = [globals()[f"stage_{name}"](preset)]
        peak = _peak_mb()
        for row in rows:
            if math.isnan(row.peak_mb):
                row.peak_mb = peak
        conn.send(("ok", [asdict(r) for r in rows]))
    except Exception as exc:  # reported in the table; the other stages go on
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_stage(name: str, preset: str, results: Path, methods: list[str], threads: int) -> tuple[list[Row], str]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_stage_worker, args=(name, preset, str(results), methods, threads, child))
    proc.start()
    child.close()
    try:
        status, payload = parent.recv()
    except EOFError:
        status, payload = "error", f"the stage process died (exit code {proc.exitcode})"
    proc.join()
    if status != "ok":
        return [], payload
    return [Row(**{k: v for k, v in r.items()}) for r in payload], ""


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from benchmark.core.threads import usable_cores

    return {"cpu": cpu, "cores": usable_cores(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


def markdown(rows: list[Row], errors: dict[str, str]) -> str:
    lines = ["| stage | ours | reference | ratio | peak memory |", "|---|---|---|---|---|"]
    for r in rows:
        def fmt(v: float, unit: str = r.unit) -> str:
            return f"{v:,.1f} {unit}"

        ratio = f"{r.ratio:.2f}x" if math.isfinite(r.ratio) else "n/a"
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.stage} | {fmt(r.ours)}: {r.ours_label}{note} | {fmt(r.reference)}: {r.reference_label} "
                     f"| {ratio} | {r.peak_mb:,.0f} MB |")
    for stage, err in errors.items():
        lines.append(f"| {stage} | failed: {err} | | | |")
    return "\n".join(lines)


def run_perf(preset: str, stages: list[str], results: Path, methods: list[str], threads: int,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    from benchmark.core.provenance import git_commit

    started = time.time()
    rows: list[Row] = []
    errors: dict[str, str] = {}
    for name in stages:
        t0 = time.perf_counter()
        got, err = run_stage(name, preset, results, methods, threads)
        if err:
            errors[name] = err
            echo(f"{name}: FAILED: {err}")
            continue
        rows.extend(got)
        for r in got:
            ratio = f"{r.ratio:.2f}x" if math.isfinite(r.ratio) else "n/a"
            echo(f"{r.stage}: ours {r.ours:,.1f} {r.unit}, reference {r.reference:,.1f} {r.unit}, ratio {ratio} "
                 f"({time.perf_counter() - t0:.0f} s)")
    return {
        "preset": preset,
        "threads": threads,
        "machine": machine(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "stages": [dict(asdict(r), ratio=r.ratio) for r in rows],
        "errors": errors,
        "markdown": markdown(rows, errors),
    }


def write_outputs(record: dict, out: Path) -> tuple[Path, Path]:
    from benchmark.core.cache import atomic_file

    out = Path(out)
    md = out.with_suffix(".md")
    with atomic_file(out) as fh:
        fh.write(json.dumps(record, indent=2, default=str).encode())
    header = (f"Measured {record['date']} on {record['machine']['cpu']} ({record['machine']['cores']} cores, "
              f"{record['threads']} threads), torch {record['machine']['torch']}, preset {record['preset']}, "
              f"commit {record['git_commit'] or 'n/a'}.\n\n")
    with atomic_file(md) as fh:
        fh.write((header + record["markdown"] + "\n").encode())
    curves = [r for r in record["stages"] if r["stage"].startswith("time_to_quality")]
    if curves:
        with atomic_file(out.with_name(out.stem + "_time_to_quality.png")) as fh:
            fh.write(time_to_quality_png(curves, record))
    scaled = [r for r in record["stages"] if r["stage"].startswith("scale:") and r["extra"].get("runs")]
    if scaled:
        from benchmark.studies.scale import figure_png

        title = (f"Resident memory against cohort size: {record['machine']['cpu']}, commit "
                 f"{record['git_commit'] or 'n/a'}")
        with atomic_file(out.with_name(out.stem + "_scale.png")) as fh:
            fh.write(figure_png(scaled[0]["extra"], title))
    return out, md


def time_to_quality_png(rows: list[dict], record: dict) -> bytes:
    """Quality against training wall time, the preset's recipe and the reference, one row per model: the measure
    the time is read from (the reference's final value dotted), the colour distance to the site, site fidelity and
    class fidelity in counterfactual cells."""
    from benchmark.core.images import png_bytes, pyplot

    plt = pyplot()

    titles = {"fid": "FID (default encoder, log scale), lower is better",
              "delta_e": "delta-E to the site's colour, lower is better", "site_fidelity": "site fidelity",
              "class_fidelity_counterfactual": "class fidelity, counterfactual cells"}
    panels = ("fid", "delta_e", "site_fidelity", "class_fidelity_counterfactual")
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(3.6 * len(panels), 2.9 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        kind = row["stage"].split(":", 1)[1]
        for j, measure in enumerate(panels):
            ax = axes[i][j]
            for who, style in (("reference", dict(color="0.45", ls="--", marker="o")),
                               ("ours", dict(color="C0", marker="s"))):
                pts = row["extra"]["curves"][who]
                label = "reference recipe" if who == "reference" else "this preset's recipe"
                ax.plot([p["seconds"] / 60 for p in pts], [p[measure] for p in pts], label=label, ms=4, **style)
            if measure == "fid":
                ax.set_yscale("log")  # the first points of a fresh model are an order of magnitude off
            if measure == row["extra"]["measure"]:
                ax.axhline(row["extra"]["target"], color="0.45", lw=0.8, ls=":")
                ax.legend(fontsize=7)
            ax.set_title(f"{kind}: {titles[measure]}", fontsize=8)
            ax.set_xlabel("training time (min)", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"Time to quality on nsclc, preset {record['preset']}: {record['machine']['cpu']}, "
                 f"{record['threads']} threads", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig, dpi=110, crop=False)
