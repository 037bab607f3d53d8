"""cyclegan: smoke training, outputs with the plan's target metadata, the model cache, exact resume, the NaN guard,
deterministic sources, and the site-conditioned design (it translates colour towards a named site and grows by a
few parameters per site)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.core.data import METADATA_COLUMNS, Split
from benchmark.core.generation import expand_plan, generation_plan
from benchmark.protocols import Context
from benchmark.training.loop import TrainingError
from methods import cyclegan as cg
from methods.cyclegan import CycleGAN, Params, build_networks
from methods.stain_norm import mean_lab

SMOKE = CycleGAN.default_params("smoke")


@pytest.fixture(scope="module")
def nsclc(smoke_nsclc):
    task, splits = smoke_nsclc
    return task, splits["train"]


def make_ctx(task, folder: Path, seed: int = 0) -> Context:
    return Context(device="cpu", preset="smoke", seed=seed, task=task, run_dir=folder, cache_dir=folder / "cache",
                   progress=False)


@pytest.fixture(scope="module")
def trained(nsclc, tmp_path_factory):
    """A smoke model trained once for the module, and its context."""
    task, train = nsclc
    folder = tmp_path_factory.mktemp("cyclegan")
    method = CycleGAN(SMOKE)
    ctx = make_ctx(task, folder)
    method.fit(train, ctx)
    return method, ctx


def test_smoke_training_outputs_keep_shape_range_and_carry_the_target_metadata(nsclc, trained):
    task, train = nsclc
    method, ctx = trained
    assert ctx.report["cyclegan"]["trained"] is True
    out = method.augment(train, ctx)
    real, syn = out.metadata[~out.metadata["is_synthetic"]], out.metadata[out.metadata["is_synthetic"]]
    assert len(real) == len(train) and len(syn) == round(SMOKE.ratio * len(train))
    assert out.images.dtype == np.uint8 and out.images.shape[1:] == train.images.shape[1:]
    np.testing.assert_array_equal(out.images[: len(train)], train.images)
    # the synthetic rows are exactly the fill plan's combinations and counts, with the method as their source
    plan = generation_plan(train.metadata, task.classes, SMOKE.attributes, "fill", SMOKE.ratio, ctx.seed)
    keys = ["cancer_type", "tissue_source_site", "race"]
    got = syn.groupby(keys).size().rename("n").reset_index()
    pd.testing.assert_frame_equal(
        got.sort_values(keys).reset_index(drop=True), plan[[*keys, "n"]].sort_values(keys).reset_index(drop=True)
    )
    assert (syn["source"] == "cyclegan").all() and set(METADATA_COLUMNS) <= set(out.metadata.columns)
    assert (syn["label"] == syn["cancer_type"].map({c: i for i, c in enumerate(task.classes)})).all()
    # synthesize() for arbitrary rows, including a site the model never saw (translated with the Unknown code)
    rows = syn.iloc[:5].copy()
    rows.loc[rows.index[0], "tissue_source_site"] = "ZZ"
    images = method.synthesize(rows, ctx)
    assert images.shape == (5, *train.images.shape[1:]) and images.dtype == np.uint8
    assert images.std() > 0
    assert ctx.report["cyclegan"]["synthesize"]["unknown_target_sites"] == 1
    assert Path(ctx.run_dir, "figures", "cyclegan_samples.png").read_bytes()[:4] == b"\x89PNG"
    shift = ctx.report["cyclegan"]["colour_shift"]
    assert shift["distance_to_target_before"] > 0 and 0 <= shift["share_moved_closer"] <= 1


def test_sources_have_the_class_come_from_other_sites_and_follow_the_seed(nsclc, trained):
    _, train = nsclc
    method, _ = trained
    conditions = expand_plan(
        generation_plan(train.metadata, ("LUAD", "LUSC"), ["tissue_source_site", "race"], "fill", 1.0, 0),
        train.metadata, "cyclegan", 0,
    )
    src, counts = method._sources(conditions, seed=0)
    meta = method.train_split.metadata
    assert (meta["cancer_type"].to_numpy()[src] == conditions["cancer_type"].to_numpy()).all()
    assert (meta["tissue_source_site"].to_numpy()[src] != conditions["tissue_source_site"].to_numpy()).all()
    assert counts["same_site_sources"] == 0
    assert np.array_equal(src, method._sources(conditions, seed=0)[0])
    assert not np.array_equal(src, method._sources(conditions, seed=1)[0])


def test_a_second_run_reuses_the_cached_model(nsclc, trained):
    task, train = nsclc
    method, ctx = trained
    again = CycleGAN(SMOKE)
    ctx2 = make_ctx(task, Path(ctx.run_dir), seed=1)
    again.fit(train, ctx2)
    assert ctx2.report["cyclegan"]["trained"] is False
    for (name, a), b in zip(method.generator.state_dict().items(), again.generator.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # a parameter that only changes what is synthesized keeps the model; one that changes training does not
    assert CycleGAN(replace(SMOKE, ratio=2.0)).model_dir(train, ctx) == method.model_dir(train, ctx)
    assert CycleGAN(replace(SMOKE, lr=1e-3)).model_dir(train, ctx) != method.model_dir(train, ctx)


def test_resume_after_an_interruption_matches_an_uninterrupted_run(nsclc, tmp_path):
    task, train = nsclc
    params = replace(SMOKE, steps=6, decay_steps=3, checkpoint_every=2)
    whole = CycleGAN(params)
    whole.fit(train, make_ctx(task, tmp_path / "a"))
    # interrupted after 3 steps, then a fresh process resumes from the checkpoint
    ctx = make_ctx(task, tmp_path / "b")
    assert CycleGAN(params).train(train, ctx, stop_after=3) is False
    folder = CycleGAN(params).model_dir(train, ctx)
    assert sorted(p.name for p in folder.glob("ckpt-*.pt"))[-1] == "ckpt-00000003.pt"
    resumed = CycleGAN(params)
    resumed.fit(train, ctx)
    assert ctx.report["cyclegan"]["trained"] is True
    a, b = whole.generator.state_dict(), resumed.generator.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(nsclc, tmp_path, monkeypatch):
    task, train = nsclc
    params = replace(SMOKE, steps=8, decay_steps=4, checkpoint_every=2)
    real_l1 = cg.l1_loss
    calls = {"n": 0}

    def poisoned(a, b):  # two L1 terms per step: the 5th step's cycle loss is NaN
        calls["n"] += 1
        return real_l1(a, b) * float("nan") if calls["n"] > 8 else real_l1(a, b)

    monkeypatch.setattr(cg, "l1_loss", poisoned)
    method = CycleGAN(params)
    ctx = make_ctx(task, tmp_path)
    with pytest.raises(TrainingError, match="non-finite loss .* at step 4.*ckpt-00000004.pt"):
        method.fit(train, ctx)
    folder = method.model_dir(train, ctx)
    assert (folder / "ckpt-00000004.pt").is_file() and not (folder / "final.safetensors").exists()
    state = torch.load(folder / "ckpt-00000004.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["G"].values())


def test_the_model_grows_by_a_few_parameters_per_site():
    params = CycleGAN.default_params("cpu")
    sizes = {}
    for n_sites in (20, 21, 400):
        g, d = build_networks(params, n_sites)
        sizes[n_sites] = (sum(t.numel() for t in g.parameters()), sum(t.numel() for t in d.parameters()))
    per_site_g = sizes[21][0] - sizes[20][0]
    per_site_d = sizes[21][1] - sizes[20][1]
    assert per_site_g < 0.01 * sizes[20][0] and per_site_d < 0.02 * sizes[20][1]
    assert sizes[400][0] - sizes[20][0] == 380 * per_site_g and sizes[400][1] - sizes[20][1] == 380 * per_site_d
    # 400 sites: one model of a few million parameters (pairwise CycleGANs: 79,800 generator pairs)
    assert sum(sizes[400]) < 4_000_000
    # the discriminator scores each image with its own site's head only: same scores as the full convolution
    g, d = build_networks(params, 7)
    x, sites = torch.randn(3, 3, 32, 32), torch.tensor([0, 6, 2])
    with torch.no_grad():
        full = d.heads(d.net(x))
        np.testing.assert_allclose(d(x, sites).numpy(), full[torch.arange(3), sites].numpy(), rtol=1e-4, atol=1e-5)
        assert g(x, sites).shape == x.shape


def test_translation_moves_colour_towards_the_named_site(tmp_path):
    """Toy data: four sites that differ only by a colour cast; a short training moves colour to the target."""
    rng = np.random.default_rng(0)
    tints = np.array([[1.0, 0.55, 0.85], [0.6, 0.5, 1.0], [1.0, 0.85, 0.55], [0.7, 0.95, 0.8]])
    n_per_site, size = 48, 16
    texture = rng.uniform(0.35, 1.0, size=(4 * n_per_site, size, size, 1))
    sites = np.repeat(np.arange(4), n_per_site)
    images = (255 * texture * tints[sites][:, None, None, :]).astype(np.uint8)
    codes = [f"S{i}" for i in range(4)]
    meta = pd.DataFrame({
        "label": sites % 2, "cancer_type": np.where(sites % 2, "LUSC", "LUAD"), "project_id": "TCGA-LUAD",
        "tissue_source_site": [codes[s] for s in sites], "race": "white", "gender": "female", "age_at_index": 60.0,
        "patient_id": [f"P{i}" for i in range(len(sites))], "slide_id": [f"P{i}" for i in range(len(sites))],
        "is_synthetic": False, "source": "toy",
    })
    params = replace(SMOKE, ngf=8, n_blocks=1, batch_size=16, steps=60, decay_steps=20, lr=2e-3, checkpoint_every=500,
                     log_every=50)
    method = CycleGAN(params)
    ctx = make_ctx(None, tmp_path)
    method.fit(Split(images, meta, "train"), ctx)
    src_idx = np.flatnonzero(sites == 0)[:24]
    centre = {s: mean_lab(images[sites == s]).mean(axis=0) for s in range(4)}
    moved = []
    for target in (1, 2, 3):
        out = method.translate(images[src_idx], [codes[target]] * len(src_idx), ctx)
        before = np.linalg.norm(mean_lab(images[src_idx]) - centre[target], axis=1).mean()
        after = np.linalg.norm(mean_lab(out) - centre[target], axis=1).mean()
        moved.append(after / before)
    assert max(moved) < 0.4, moved  # measured: 0.04 - 0.11


def test_presets_and_overrides():
    from benchmark.orchestration.runner import build_config

    for preset in ("smoke", "cpu", "gpu", "paper"):
        p = CycleGAN.default_params(preset)
        assert isinstance(p, Params) and p.lambda_cycle == 10.0 and p.lambda_identity == 0.5 and p.pool_size >= 1
    paper = CycleGAN.default_params("paper")
    assert (paper.ngf, paper.ndf, paper.n_layers_d, paper.batch_size, paper.lr, paper.beta1, paper.pool_size) == (
        64, 64, 3, 1, 2e-4, 0.5, 50)
    cfg = build_config("cyclegan", "nsclc", "cpu", 0, "cpu", ["method.lr=1e-3", "method.precision=bf16"])
    assert cfg.method_params.lr == 1e-3 and cfg.method_params.precision == "bf16"
    with pytest.raises(ValueError, match="precision='fp16'"):
        Params(precision="fp16")
    with pytest.raises(ValueError, match="decay_steps=9"):
        Params(steps=8, decay_steps=9)
