"""The diffusion methods (medi, cls): conditioning, vocabularies, plans, training, resume, NaN guard, caching."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.core.config import ConfigError
from benchmark.core.data import UNKNOWN
from benchmark.protocols import Context
from benchmark.training.loop import Checkpoints, TrainingError
from methods.diffusion import (
    CLS,
    GUIDED,
    DiffusionModel,
    DiffusionParams,
    MeDi,
    MeDiCG,
    Vocabulary,
    concat_widths,
    guidance_mix,
    train_diffusion,
    validate,
)


@pytest.fixture(scope="module")
def smoke_splits(smoke_nsclc):
    return smoke_nsclc


def make_ctx(task, tmp_path: Path, seed: int = 0) -> Context:
    return Context(device="cpu", preset="smoke", seed=seed, task=task, run_dir=tmp_path, cache_dir=tmp_path / "cache",
                   progress=False)


def tiny_params(**kw) -> DiffusionParams:
    base = MeDi.default_params("smoke")
    return replace(base, **kw)


def test_concat_widths_follow_the_paper():
    assert concat_widths(128, 0) == [128]
    assert concat_widths(128, 2) == [44, 42, 42]  # class gets d_t/(1+k) plus the remainder
    assert concat_widths(512, 3) == [128, 128, 128, 128]
    assert sum(concat_widths(100, 6)) == 100


def test_vocabulary_adds_unknown_and_maps_unseen_values_to_it():
    vocab = Vocabulary.from_metadata(pd.DataFrame({"race": ["white", "asian", "white", UNKNOWN]}), ["race"])
    assert vocab.values["race"] == ["asian", "white", UNKNOWN]
    assert vocab.encode("race", pd.Series(["white", "martian", UNKNOWN])).tolist() == [1, 2, 2]
    assert vocab.dropped("race") == 3


def model_for(params: DiffusionParams, meta: pd.DataFrame, seed: int = 0) -> DiffusionModel:
    attrs = [a for a in params.attributes if a != "age_at_index"]
    return DiffusionModel(params, ["LUAD", "LUSC"], Vocabulary.from_metadata(meta, attrs), 32, seed)


def rows(**overrides) -> pd.DataFrame:
    base = {"cancer_type": "LUAD", "tissue_source_site": "05", "race": "white", "gender": "female",
            "age_at_index": 60.0}
    return pd.DataFrame([{**base, **overrides}])


TRAIN_META = pd.DataFrame({"tissue_source_site": ["05", "44", "NJ"], "race": ["white", "asian", "white"],
                           "gender": ["female", "male", "female"]})


def predict(model: DiffusionModel, meta: pd.DataFrame) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    labels, codes = model.codes(meta)
    with torch.no_grad():
        return model.predict(x, torch.tensor([500]), model.z_cond(labels, codes, "cpu"))


def test_changing_only_the_site_changes_the_prediction():
    model = model_for(tiny_params(), TRAIN_META)
    a, b = predict(model, rows()), predict(model, rows(tissue_source_site="44"))
    same = predict(model, rows())
    assert torch.equal(a, same)
    assert not torch.allclose(a, b)
    # and only the site's slice of z_cond differs (concat mode)
    za = model.z_cond(*model.codes(rows()), "cpu")
    zb = model.z_cond(*model.codes(rows(tissue_source_site="44")), "cpu")
    widths = concat_widths(model.d_t, 2)
    diff = (za != zb).squeeze(0)
    assert not diff[: widths[0]].any() and diff[widths[0] : widths[0] + widths[1]].all()
    assert not diff[widths[0] + widths[1] :].any()


def _site_effect(params: DiffusionParams) -> tuple[float, float]:
    """(largest change of the first resnet's output, mean change of the output's mean colour) when only the site
    changes, at a high noise level where the colour must come from the condition."""
    model = model_for(params, TRAIN_META)
    seen = []
    hook = model.unet.down_blocks[0].resnets[0].register_forward_hook(lambda m, i, o: seen.append(o))
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    outs = []
    with torch.no_grad():
        for site in ("05", "44"):
            torch.manual_seed(1)
            for emb in model.cond.attribute_embeddings.values():  # distinct, trained-looking site codes
                emb.weight.normal_()
            labels, codes = model.codes(pd.concat([rows(tissue_source_site=site)] * 4, ignore_index=True))
            outs.append(model.predict(x, torch.full((4,), 900), model.z_cond(labels, codes, "cpu")))
    hook.remove()
    first = float((seen[0] - seen[1]).abs().max())
    colour = float((outs[0].mean((2, 3)) - outs[1].mean((2, 3))).abs().mean())
    return first, colour


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu"])
def test_the_site_reaches_every_level_and_the_mean_colour(preset):
    """The UNet adds z_cond to the time embedding, which every resnet adds to its features before a GroupNorm.
    With one channel per group that norm erases it (and norm_out erases per-channel offsets): the site could not
    set the colour of an image. The presets keep >= 4 channels per group in the first level, like the paper's."""
    base = MeDi.default_params(preset)
    params = replace(base, block_out_channels=base.block_out_channels[:3], attention=False, layers_per_block=1)
    assert params.block_out_channels[0] // params.norm_num_groups >= 4
    first, colour = _site_effect(params)
    assert first > 0.05 and colour > 0.01
    # the failure this guards against: 32 channels in 32 groups
    first_bad, colour_bad = _site_effect(replace(params, block_out_channels=(32, 64, 64), norm_num_groups=32))
    assert first_bad < 1e-4 and colour_bad < colour / 10


def test_cls_is_the_same_model_with_k_zero():
    params = CLS.default_params("smoke")
    assert params.attributes == ()
    model = model_for(params, TRAIN_META)
    assert len(model.cond.attribute_embeddings) == 0
    z = model.z_cond(*model.codes(rows()), "cpu")
    assert z.shape == (1, model.d_t)
    assert torch.equal(z, model.cond.class_embedding(torch.tensor([0])))
    # metadata cannot change a cls prediction
    assert torch.equal(predict(model, rows()), predict(model, rows(tissue_source_site="44", race="asian")))


@pytest.mark.parametrize("mode", ["concat", "additive", "linear"])
def test_condition_modes_and_numeric_age(mode):
    params = tiny_params(cond_mode=mode, attributes=("tissue_source_site", "race", "age_at_index"))
    model = model_for(params, TRAIN_META)
    z1 = model.z_cond(*model.codes(rows(age_at_index=40.0)), "cpu")
    z2 = model.z_cond(*model.codes(rows(age_at_index=80.0)), "cpu")
    zn = model.z_cond(*model.codes(rows(age_at_index=float("nan"))), "cpu")
    assert z1.shape == (1, model.d_t)
    assert not torch.allclose(z1, z2) and torch.isfinite(zn).all()


def test_bad_params_are_named():
    with pytest.raises(ConfigError, match="method.cond_mode='sum'"):
        validate(tiny_params(cond_mode="sum"))
    validate(tiny_params(attributes=("hospital",)))  # any column name; whether the task has it is checked at fit
    for bad in (("patient_id",), ("race", "race"), ("",)):
        with pytest.raises(ConfigError, match="method.attributes"):
            validate(tiny_params(attributes=bad))
    with pytest.raises(ConfigError, match="method.guidance_scale"):
        validate(tiny_params(guidance_scale=3.0))
    with pytest.raises(ConfigError, match="method.guidance_scale"):  # no unconditional model without meta dropout
        validate(tiny_params(guidance_scale=3.0, class_dropout=0.2))
    validate(tiny_params(guidance_scale=3.0, class_dropout=0.2, meta_dropout=0.2))
    with pytest.raises(ConfigError, match="method.guidance='composed'"):
        validate(tiny_params(guidance="composed", class_dropout=0.2))
    with pytest.raises(ConfigError, match="method.guidance='composed'"):  # cls has no metadata direction
        validate(replace(CLS.default_params("smoke"), guidance="composed", class_dropout=0.2, meta_dropout=0.2))
    with pytest.raises(ConfigError, match="method.guidance='both'"):
        validate(tiny_params(guidance="both"))
    with pytest.raises(ConfigError, match="method.meta_dropout"):
        validate(tiny_params(meta_dropout=1.0))
    with pytest.raises(ConfigError, match="norm_num_groups"):
        validate(tiny_params(block_out_channels=(10, 20)))


def test_guidance_mix_is_a_weighted_sum_of_condition_variants():
    assert guidance_mix(tiny_params()) == [(True, True, 1.0)]  # unguided: one pass, the conditional model
    joint = guidance_mix(tiny_params(guidance_scale=2.5, class_dropout=0.1, meta_dropout=0.1))
    assert joint == [(True, True, 2.5), (False, False, -1.5)]  # eps(0) + 2.5 (eps(c, m) - eps(0))
    composed = guidance_mix(tiny_params(guidance="composed", class_guidance=3.0, meta_guidance=1.5))
    assert composed == [(False, False, -3.5), (True, False, 3.0), (False, True, 1.5)]
    for mix in (joint, composed):
        assert sum(w for *_, w in mix) == pytest.approx(1.0)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_composed_guidance_follows_each_direction_alone(sampler):
    """With the metadata weight at 0 only the class direction is followed: the site cannot change a sample; with
    the class weight at 0 the class cannot. An untrained model with random embeddings changes its prediction with
    every condition, so a wrong mask (a dropped token left in, a kept one dropped) shows."""
    params = tiny_params(class_dropout=0.2, meta_dropout=0.2, guidance="composed", sampler=sampler, sampling_steps=3)
    model = model_for(params, TRAIN_META)
    for emb in [model.cond.class_embedding, *model.cond.attribute_embeddings.values()]:
        torch.nn.init.normal_(emb.weight, std=3.0)

    def sample(class_guidance, meta_guidance, **cell):
        model.params = replace(params, class_guidance=class_guidance, meta_guidance=meta_guidance)
        return model.sample(pd.concat([rows(**cell)] * 2, ignore_index=True), "cpu", seed=3)

    other_site, other_class = dict(tissue_source_site="44"), dict(cancer_type="LUSC")
    assert np.array_equal(sample(1.0, 0.0), sample(1.0, 0.0, **other_site))
    assert not np.array_equal(sample(1.0, 0.0), sample(1.0, 0.0, **other_class))
    assert np.array_equal(sample(0.0, 1.0), sample(0.0, 1.0, **other_class))
    assert not np.array_equal(sample(0.0, 1.0), sample(0.0, 1.0, **other_site))
    both = sample(2.0, 1.0)
    assert not np.array_equal(both, sample(2.0, 1.0, **other_site))
    assert not np.array_equal(both, sample(2.0, 1.0, **other_class))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_sampling_is_the_plain_denoising_loop(sampler):
    """Known answer: unguided sample() is x_T ~ N(0, I) (the seeded generator), then for every timestep one UNet
    prediction and one scheduler step, then back to pixels: the loop written out here gives the same pixels."""
    params = tiny_params(sampler=sampler, sampling_steps=4)
    model = model_for(params, TRAIN_META)
    meta = pd.concat([rows(), rows(tissue_source_site="44")], ignore_index=True)
    got = model.sample(meta, "cpu", seed=5)
    with torch.no_grad():
        x = torch.randn((2, 3, 32, 32), generator=torch.Generator("cpu").manual_seed(5 * 7919))
        z = model.z_cond(*model.codes(meta), "cpu")
        sched = model.scheduler(sampler)
        sched.set_timesteps(4)
        for t in sched.timesteps:
            x = sched.step(model.predict(x, t, z), t, x).prev_sample
        want = ((model.to_pixel_space(x).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert np.abs(got.astype(int) - want.numpy().astype(int)).max() <= 1


def test_medi_and_cls_plan_the_same_totals_per_class(smoke_splits, tmp_path):
    task, splits = smoke_splits
    ctx = make_ctx(task, tmp_path)
    train = splits["train"]
    medi_plan = MeDi(MeDi.default_params("smoke")).plan(train, ctx)
    cls_plan = CLS(CLS.default_params("smoke")).plan(train, ctx)
    assert medi_plan["n"].sum() == round(0.5 * len(train))
    assert medi_plan.groupby("cancer_type")["n"].sum().to_dict() == cls_plan.set_index("cancer_type")["n"].to_dict()
    # fill: every planned (class, site, race) is missing from the real training data
    real = set(map(tuple, train.metadata[["cancer_type", "tissue_source_site", "race"]].to_numpy()))
    planned = set(map(tuple, medi_plan[["cancer_type", "tissue_source_site", "race"]].to_numpy()))
    assert planned and not (planned & real)


def test_smoke_training_samples_in_range_with_metadata_and_is_cached(smoke_splits, tmp_path):
    task, splits = smoke_splits
    ctx = make_ctx(task, tmp_path)
    logged = []
    ctx.log_artifact = logged.append
    method = MeDi(MeDi.default_params("smoke"))
    method.fit(splits["train"], ctx)
    assert ctx.report["model_reused"] is False
    # a sample grid every preview_every (6) of the 12 steps, logged as an artifact
    grids = sorted((tmp_path / "figures" / "training").glob("samples_step*.png"))
    assert [g.name for g in grids] == ["samples_step0000006.png", "samples_step0000012.png"]
    assert logged == grids and grids[0].read_bytes()[:4] == b"\x89PNG"
    out = method.augment(splits["train"], ctx)
    syn = out.metadata[out.metadata["is_synthetic"]]
    assert len(syn) == ctx.report["n_synthetic"] > 0
    images = out.images[out.metadata["is_synthetic"].to_numpy()]
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert images.std() > 1.0  # not a constant image
    assert (syn["source"] == "medi").all() and syn["tissue_source_site"].ne(UNKNOWN).all()
    assert len(out) == len(splits["train"]) + len(syn)
    # a second fit with the same data and training parameters reuses the model, even with other sampling settings
    ctx2 = make_ctx(task, tmp_path, seed=1)
    again = MeDi(replace(MeDi.default_params("smoke"), sampling_steps=2, sampler="dpmpp"))
    again.fit(splits["train"], ctx2)
    assert ctx2.report["model_reused"] is True
    a = method.synthesize(syn.iloc[:4], ctx)
    b = again.synthesize(syn.iloc[:4], ctx2)
    assert a.shape == b.shape == (4, 32, 32, 3)


def test_medi_cg_is_medi_trained_with_dropout_and_sampled_with_composed_guidance(smoke_splits, tmp_path):
    """The variant differs from medi in exactly the frontier's chosen fields; medi stays the paper's on every preset
    (no dropout, no guidance); a medi_cg model trains and augments with three predictions per step."""
    for preset in ("smoke", "cpu", "gpu", "paper"):
        medi, cg = MeDi.default_params(preset), MeDiCG.default_params(preset)
        assert (medi.class_dropout, medi.meta_dropout, medi.guidance, medi.guidance_scale) == (0.0, 0.0, "joint", 1.0)
        assert replace(medi, **GUIDED) == cg
        validate(cg)
    task, splits = smoke_splits
    ctx = make_ctx(task, tmp_path)
    method = MeDiCG(MeDiCG.default_params("smoke"))
    method.fit(splits["train"], ctx)
    calls = []
    predict = method.model.predict
    method.model.predict = lambda x, t, z: calls.append(len(x)) or predict(x, t, z)
    out = method.augment(splits["train"], ctx)
    syn = out.metadata[out.metadata["is_synthetic"]]
    assert len(syn) > 0 and (syn["source"] == "medi_cg").all()
    assert calls and all(n % 3 == 0 for n in calls)  # unconditional, class-only and metadata-only, stacked


def test_resume_after_interruption_matches_an_uninterrupted_run(smoke_splits, tmp_path):
    task, splits = smoke_splits
    train = splits["train"]
    params = tiny_params(steps=8, checkpoint_every=3, mixed_precision="no")
    attrs = list(params.attributes)

    def fresh():
        return DiffusionModel(params, list(task.classes), Vocabulary.from_metadata(train.metadata, attrs), 32)

    full = fresh()
    train_diffusion(full, train, Checkpoints(tmp_path / "full"), make_ctx(task, tmp_path))
    interrupted = fresh()
    ckpt = Checkpoints(tmp_path / "resumed")
    stats = train_diffusion(interrupted, train, ckpt, make_ctx(task, tmp_path), stop_after=4)
    assert stats == {"stopped_at": 4} and not ckpt.is_done() and ckpt.latest()[0] == 4
    resumed = fresh()
    train_diffusion(resumed, train, ckpt, make_ctx(task, tmp_path))
    assert ckpt.is_done()
    a, b = full.state_tensors(), resumed.state_tensors()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(smoke_splits, tmp_path, monkeypatch):
    task, splits = smoke_splits
    params = tiny_params(steps=10, checkpoint_every=3, mixed_precision="no")
    model = DiffusionModel(params, list(task.classes),
                           Vocabulary.from_metadata(splits["train"].metadata, list(params.attributes)), 32)
    import methods.diffusion as diffusion

    real_weights = diffusion.loss_weights
    calls = {"n": 0}

    def exploding(alpha_bar, p):  # the loss turns NaN from the fifth step on
        calls["n"] += 1
        return real_weights(alpha_bar, p) * (float("nan") if calls["n"] > 4 else 1.0)

    monkeypatch.setattr(diffusion, "loss_weights", exploding)
    ckpt = Checkpoints(tmp_path / "nan")
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at step 4.*ckpt-00000003\.pt"):
        train_diffusion(model, splits["train"], ckpt, make_ctx(task, tmp_path))
    assert ckpt.latest()[0] == 3 and not ckpt.is_done()
    state = ckpt.load(ckpt.latest()[1])
    assert all(torch.isfinite(v).all() for v in state["unet"].values())


def test_checkpoint_round_trip(tmp_path):
    params = tiny_params()
    model = model_for(params, TRAIN_META)
    ckpt = Checkpoints(tmp_path / "rt")
    ckpt.save_final(model.state_tensors(), {"steps": 0})
    assert torch.equal(predict(model, rows()), predict(model_for(params, TRAIN_META), rows()))  # seeded init
    other = model_for(params, TRAIN_META, seed=1)
    assert not torch.allclose(predict(model, rows()), predict(other, rows()))
    other.load_tensors(ckpt.load_final())
    torch.testing.assert_close(predict(model, rows()), predict(other, rows()))
    # a damaged checkpoint is an error naming the file, not a crash deep in torch
    bad = tmp_path / "rt" / "ckpt-00000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="ckpt-00000001.pt is unreadable"):
        ckpt.load(bad)


@pytest.mark.slow
def test_paper_preset_builds_and_takes_one_step_at_batch_1(smoke_splits, tmp_path):
    task, splits = smoke_splits
    params = replace(MeDi.default_params("paper"), steps=1, batch_size=1, mixed_precision="no", ema=False)
    assert params.block_out_channels == (128, 256, 512, 512, 1024, 1024)
    assert params.layers_per_block == 2 and params.attention is False
    train = splits["train"].subset(np.arange(8))
    big = np.repeat(np.repeat(train.images, 4, axis=1), 4, axis=2)  # 128 x 128, the paper's size
    train = train.with_images(big)
    model = DiffusionModel(params, list(task.classes),
                           Vocabulary.from_metadata(train.metadata, list(params.attributes)), 128)
    assert model.d_t == 512
    stats = train_diffusion(model, train, Checkpoints(tmp_path / "paper"), make_ctx(task, tmp_path))
    assert stats["train_steps"] == 1


def test_normalization_statistics_stream_in_bounded_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Per-channel mean and std over a mapped 128 px cohort, read in batches of a bounded pixel count, equal the
    statistics of the whole array in memory; at 32 px a batch is still the 4,096 patches it always was."""
    from benchmark.core.data import ArrayImages

    images = np.random.default_rng(0).integers(0, 256, (90, 128, 128, 3), dtype=np.uint8)
    images[:, :, :, 0] //= 2  # channels that differ
    np.save(tmp_path / "pixels.npy", images)
    lazy = ArrayImages(np.load(tmp_path / "pixels.npy", mmap_mode="r"), np.arange(3, 90))
    model = model_for(DiffusionParams(), rows())
    assert max(1, model.NORMALIZATION_PIXELS // (32 * 32)) == 4096
    monkeypatch.setattr(DiffusionModel, "NORMALIZATION_PIXELS", 10 * 128 * 128)  # batches of 10 patches
    reads = []
    real_getitem = ArrayImages.__getitem__
    monkeypatch.setattr(ArrayImages, "__getitem__", lambda self, i: reads.append(i) or real_getitem(self, i))
    model.set_normalization(lazy)
    assert len(reads) == 2 * 9 and all(isinstance(r, slice) and r.stop - r.start == 10 for r in reads)
    whole = images[3:].reshape(-1, 3).astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(model.pixel_mean.numpy(), whole.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(model.pixel_std.numpy(), whole.std(axis=0), rtol=1e-6)
