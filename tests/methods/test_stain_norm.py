"""stain_norm: pulls sites' colours together on embedded and real H&E pixels, keeps images valid, never fails on
patches without stain, chooses its reference deterministically, and matches torchstain image by image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.protocols import Context
from methods.stain_norm import (
    REASONS,
    Params,
    StainNormalization,
    choose_reference,
    fit_reference,
    normalize_batch,
    site_colour_distance,
)
from tests.real_he import load as load_he


@pytest.fixture(scope="module")
def nsclc(smoke_nsclc):
    return smoke_nsclc


def make_ctx(task, tmp_path: Path) -> Context:
    return Context(device="cpu", preset="smoke", seed=0, task=task, run_dir=tmp_path, cache_dir=tmp_path)


@pytest.fixture(scope="module")
def he_tiles() -> np.ndarray:
    he = load_he()
    rng = np.random.default_rng(0)
    return np.stack([he[y : y + 48, x : x + 48] for y, x in rng.integers(0, he.shape[0] - 48, size=(24, 2))])


def recolour(tiles: np.ndarray, od_scale: tuple[float, float, float]) -> np.ndarray:
    """A 'site': the same tissue with a different stain uptake per channel (Beer-Lambert in optical density)."""
    od = -np.log((tiles.astype(np.float64) + 1.0) / 256.0)
    return np.clip(256.0 * np.exp(-od * np.asarray(od_scale)) - 1.0, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("normalizer", ["macenko", "reinhard"])
def test_reduces_between_site_colour_distance_on_embedded_data(nsclc, tmp_path, normalizer):
    task, splits = nsclc
    method = StainNormalization(Params(normalizer=normalizer))
    ctx = make_ctx(task, tmp_path)
    method.fit(splits["train"], ctx)
    train = method.augment(splits["train"], ctx)
    sites = splits["train"].metadata["tissue_source_site"]
    before = site_colour_distance(splits["train"].images, sites)
    after = site_colour_distance(train.images, sites)
    assert after < 0.6 * before, (before, after)
    # the same on an evaluation split, normalized towards the training reference
    unseen = method.transform_eval(splits["test_unseen"], ctx)
    u_sites = splits["test_unseen"].metadata["tissue_source_site"]
    assert site_colour_distance(unseen.images, u_sites) < 0.6 * site_colour_distance(
        splits["test_unseen"].images, u_sites
    )
    report = ctx.report["stain_norm"]
    assert report["train_site_colour_distance"] == {"before": round(before, 3), "after": round(after, 3)}
    assert report["n"] == {"train": len(splits["train"]), "test_unseen": len(splits["test_unseen"])}
    assert (tmp_path / "stain_norm_samples.png").is_file()


def test_keeps_shape_dtype_range_and_metadata(nsclc, tmp_path):
    task, splits = nsclc
    method = StainNormalization()
    ctx = make_ctx(task, tmp_path)
    method.fit(splits["train"], ctx)
    for name in ("train", "val"):
        src = splits[name]
        out = method.augment(src, ctx) if name == "train" else method.transform_eval(src, ctx)
        pixels = np.asarray(out.images)
        assert pixels.shape == src.images.shape and pixels.dtype == np.uint8
        assert pixels.min() >= 0 and pixels.max() <= 255
        assert pixels.std() > 10  # still an image, not a flat colour
        assert not np.array_equal(pixels, src.images)  # and actually changed
        assert out.metadata.equals(src.metadata)
        assert not out.metadata["is_synthetic"].any()



def test_normalized_pixels_live_in_a_scratch_file_that_goes_with_them(nsclc, tmp_path):
    """The normalized copy of a split is written a batch at a time to a file and mapped, never held in memory; the
    file is deleted when the split is let go (a cohort at TCGA scale would otherwise be held twice)."""
    import gc

    task, splits = nsclc
    method = StainNormalization(Params(batch_size=7))  # several batches, the last one short
    ctx = make_ctx(task, tmp_path)
    method.fit(splits["train"], ctx)
    val = splits["val"]
    out = method.transform_eval(val, ctx)
    (scratch,) = (tmp_path / "stain_norm").iterdir()
    assert isinstance(out.images.base, np.memmap) and Path(out.images.base.filename) == scratch
    expected, _ = normalize_batch(np.asarray(val.images), method.reference, method.params)
    np.testing.assert_array_equal(np.asarray(out.images), expected)
    np.testing.assert_array_equal(out.subset(np.arange(3, 9)).images[:], expected[3:9])
    del out
    gc.collect()
    assert not scratch.exists()

@pytest.mark.parametrize("normalizer", ["macenko", "reinhard"])
def test_background_and_degenerate_patches_are_kept_and_counted(nsclc, tmp_path, normalizer, he_tiles):
    p = Params(normalizer=normalizer)
    ref = fit_reference(he_tiles[0], p)
    tissue = he_tiles[1, :32, :32]
    background = np.full((32, 32, 3), 247, dtype=np.uint8)  # glass only
    background[::7, ::5] = 238  # with a little noise
    flat = np.zeros((32, 32, 3), dtype=np.uint8)
    flat[:] = (150, 60, 160)  # one colour: no stain plane to estimate
    speck = background.copy()
    speck[:3, :3] = (90, 40, 120)  # 9 tissue pixels out of 1024
    batch = np.stack([tissue, background, flat, speck])
    out, reasons = normalize_batch(batch, ref, p)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    assert [REASONS[r] for r in reasons] == ["ok", "too_little_tissue", "degenerate_stains", "too_little_tissue"]
    np.testing.assert_array_equal(out[1:], batch[1:])  # kept unnormalized
    # through the method: counted per split in the run record, never NaN, never an exception
    task, splits = nsclc
    method = StainNormalization(p)
    ctx = make_ctx(task, tmp_path)
    method.fit(splits["train"], ctx)
    val = splits["val"]
    images = val.images.copy()
    images[:3] = batch[1:]
    result = method.transform_eval(val.with_images(images), ctx)
    np.testing.assert_array_equal(result.images[:3], batch[1:])
    failed = ctx.report["stain_norm"]["failed"]["val"]
    assert failed.get("too_little_tissue", 0) >= 2 and failed.get("degenerate_stains", 0) >= 1


def test_non_finite_or_out_of_range_output_is_detected_and_the_patch_kept(he_tiles, monkeypatch):
    import methods.stain_norm as sn

    p = Params()
    ref = fit_reference(he_tiles[0], p)
    broken = {"he": ref["he"], "max_c": torch.tensor([float("nan"), 1.0])}  # a reference that yields NaN pixels
    out, reasons = normalize_batch(he_tiles[:3], broken, p)
    assert [REASONS[r] for r in reasons] == ["non_finite"] * 3
    np.testing.assert_array_equal(out, he_tiles[:3])

    # a normalizer whose values leave [0, 255] on one patch (and overflow on another)
    def wild(x, ref, params):
        out = x.clone()
        out[0] = out[0] * 3.0 + 40.0
        out[1, 0, 0] = float("inf")
        return out, torch.zeros(len(x), dtype=torch.long)

    monkeypatch.setattr(sn, "_macenko", wild)
    out, reasons = normalize_batch(he_tiles[:3], ref, p)
    assert [REASONS[r] for r in reasons] == ["out_of_range", "non_finite", "ok"]
    np.testing.assert_array_equal(out, he_tiles[:3])


@pytest.mark.parametrize("normalizer", ["macenko", "reinhard"])
def test_batched_normalization_matches_torchstain_per_image_on_real_he(he_tiles, normalizer):
    from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

    p = Params(normalizer=normalizer)
    reference = he_tiles[0]
    out, reasons = normalize_batch(he_tiles[1:], fit_reference(reference, p), p)
    assert (reasons == 0).all()
    oracle = TorchMacenkoNormalizer() if normalizer == "macenko" else TorchReinhardNormalizer()
    oracle.fit(torch.from_numpy(reference.copy()).permute(2, 0, 1))
    for tile, mine in zip(he_tiles[1:], out, strict=True):
        chw = torch.from_numpy(tile.copy()).permute(2, 0, 1)
        theirs = oracle.normalize(chw, stains=False)[0] if normalizer == "macenko" else oracle.normalize(chw)
        # torchstain truncates to integers, we round: at most one grey level apart
        assert np.abs(theirs.numpy().astype(int) - mine.astype(int)).max() <= 1


@pytest.mark.parametrize("normalizer", ["macenko", "reinhard"])
def test_real_he_sites_are_pulled_together(he_tiles, normalizer):
    sites = {"A": (1.0, 1.0, 1.0), "B": (1.35, 0.8, 1.1), "C": (0.7, 1.2, 0.85)}
    images = np.concatenate([recolour(he_tiles, scale) for scale in sites.values()])
    labels = np.repeat(list(sites), len(he_tiles))
    p = Params(normalizer=normalizer)
    out, reasons = normalize_batch(images, fit_reference(he_tiles[0], p), p)
    assert (reasons == 0).mean() > 0.9
    before, after = site_colour_distance(images, labels), site_colour_distance(out, labels)
    assert before > 5 and after < 0.35 * before, (before, after)


def test_a_torch_call_holds_a_bounded_number_of_pixels_and_the_results_do_not_change(nsclc, tmp_path, monkeypatch):
    """At 128 px a batch of 512 patches held ~1.5 GB of float intermediates, and the reference search read all of
    the largest site's patches at once (memory that grew with the cohort): every torch call now takes at most
    BATCH_PIXELS pixels, and the results are those of one call over everything."""
    import methods.stain_norm as sn

    task, splits = nsclc
    train, val = splits["train"], splits["val"]
    reference, about = choose_reference(train, Params())
    whole_lab = sn.mean_lab(np.asarray(val.images))
    method = StainNormalization()
    method.fit(train, make_ctx(task, tmp_path))
    whole, _ = normalize_batch(np.asarray(val.images), method.reference, method.params)

    monkeypatch.setattr(sn, "BATCH_PIXELS", 3 * val.image_size**2)  # 3 patches a call
    sizes: list[int] = []
    real_tissue, real_normalize = sn.tissue_fraction, sn.normalize_batch
    monkeypatch.setattr(sn, "tissue_fraction", lambda x, *a: sizes.append(len(x)) or real_tissue(x, *a))
    monkeypatch.setattr(sn, "normalize_batch", lambda x, *a: sizes.append(len(x)) or real_normalize(x, *a))
    assert sn.rows_per_call(val.images, 512) == 3 and sn.rows_per_call(val.images, 2) == 2
    image, about2 = choose_reference(train, Params())
    assert about2 == about and np.array_equal(image, reference)
    np.testing.assert_allclose(sn.mean_lab(val.images), whole_lab, rtol=0, atol=1e-9)
    out = method.transform_eval(val, make_ctx(task, tmp_path))
    np.testing.assert_array_equal(np.asarray(out.images), whole)
    assert sizes and max(sizes) == 3


def test_reference_is_deterministic_and_configurable(nsclc, tmp_path, he_tiles):
    task, splits = nsclc
    train = splits["train"]
    image, about = choose_reference(train, Params())
    image2, about2 = choose_reference(train, Params())
    assert about == about2 and np.array_equal(image, image2)
    largest = train.metadata["tissue_source_site"].value_counts()
    assert about["site"] in largest[largest == largest.max()].index
    other = sorted(set(train.metadata["tissue_source_site"]) - {about["site"]})[0]
    assert choose_reference(train, Params(reference_site=other))[1]["site"] == other
    with pytest.raises(ValueError, match="reference_site='ZZ'"):
        choose_reference(train, Params(reference_site="ZZ"))
    # a reference image file
    from PIL import Image

    path = tmp_path / "reference.png"
    Image.fromarray(he_tiles[0]).save(path)
    ctx = make_ctx(task, tmp_path)
    method = StainNormalization(Params(reference_image=str(path)))
    method.fit(train, ctx)
    assert ctx.report["stain_norm"]["reference"]["image"] == str(path)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    for bad in (broken, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match=str(bad.name)):
            StainNormalization(Params(reference_image=str(bad))).fit(train, ctx)
    with pytest.raises(ValueError, match="normalizer='vahadane'"):
        Params(normalizer="vahadane")


def test_cli_keys_resolve():
    from benchmark.orchestration.runner import build_config

    cfg = build_config("stain_norm", "nsclc", "smoke", 0, "cpu", ["method.normalizer=reinhard", "method.io=250"])
    assert cfg.method_params == Params(normalizer="reinhard", io=250.0)
