"""FID: known answers, feature spaces (fbank, inception from a local file), bootstrap intervals, the runner's step."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.core.config import ConfigError, ProbeConfig
from benchmark.core.data import METADATA_COLUMNS, Split
from benchmark.evaluation import fid
from benchmark.evaluation.encoders import FilterBankEncoder
from benchmark.protocols import Context, Method
from tests.real_he import load as load_he


class MeanColour(fid.FeatureModule):
    """Per-channel mean intensity in [0, 1]: a 3-d space where a brightness shift has a closed-form FID."""

    num_features = 3
    space = "meancolour"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3)) / 255.0


def he_crops(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    he = load_he()
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, he.shape[0] - size, n), rng.integers(0, he.shape[1] - size, n)
    return np.stack([he[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)]).astype(np.uint8)


@pytest.fixture(scope="module")
def fbank() -> fid.EncoderFeatures:
    return fid.encoder_features(FilterBankEncoder())


def test_identical_sets_give_zero_and_a_shift_gives_its_closed_form():
    rng = np.random.default_rng(0)
    real = rng.integers(40, 200, size=(40, 8, 8, 3), dtype=np.uint8)
    value, fr, ff = fid.torchmetrics_fid(MeanColour(), real, real.copy())
    assert abs(value) < 1e-6
    assert fr.shape == ff.shape == (40, 3)
    # every pixel +30: the features move by 30/255 per channel, covariances do not change -> FID = 3 (30/255)^2
    shifted = (real.astype(int) + 30).astype(np.uint8)
    value, _, _ = fid.torchmetrics_fid(MeanColour(), real, shifted)
    assert value == pytest.approx(3 * (30 / 255) ** 2, rel=1e-4)


def test_fbank_space_orders_same_distribution_below_a_stain_shift(fbank):
    a, b = he_crops(48, seed=1), he_crops(48, seed=2)
    shifted = b.astype(np.float32) * np.array([0.8, 0.65, 1.0], np.float32)  # a bluer, paler stain
    shifted = shifted.clip(0, 255).astype(np.uint8)
    same, fa, _ = fid.torchmetrics_fid(fbank, a, a.copy())
    other, fa2, fb = fid.torchmetrics_fid(fbank, a, b)
    stain, _, _ = fid.torchmetrics_fid(fbank, a, shifted)
    assert abs(same) < 1e-4 * other
    assert other < stain / 3
    assert fbank.space == "fbank" and fbank.num_features == fa.shape[1] == 222
    # the bootstrap's exact formula agrees with torchmetrics on the same features
    assert fid.frechet_distance(fa2, fb) == pytest.approx(other, rel=1e-3)


@pytest.mark.parametrize("n,d", [(30, 50), (80, 6)])
def test_frechet_distance_matches_the_sqrtm_definition(n, d):
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n + 5, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.5
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert fid.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        fid.frechet_distance(a[:1], b)


def test_per_class_metrics_counts_interval_and_seed(fbank):
    real = np.concatenate([he_crops(24, seed=3), he_crops(20, seed=4)])
    fake = np.concatenate([he_crops(24, seed=5), (he_crops(24, seed=6) * 0.5).astype(np.uint8)])
    real = np.concatenate([real, he_crops(4, seed=10)])
    labels = ["LUAD"] * 24 + ["LUSC"] * 24
    cfg = fid.FidConfig(bootstrap=60)
    with pytest.warns(fid.SmallSampleWarning, match="222 feature dimensions"):
        res = fid.fid_per_class(fbank, real, fake, labels, cfg=cfg, seed=3)
    m = res.metrics()
    assert set(m) == {
        *(f"fid/fbank/{ct}{s}" for ct in ("LUAD", "LUSC") for s in ("", "/ci_low", "/ci_high", "/n_real",
                                                                    "/n_synthetic")),
        "fid/fbank/mean", "fid/fbank/mean/ci_low", "fid/fbank/mean/ci_high", "fid/fbank/n_real",
        "fid/fbank/n_synthetic", "fid/fbank/dim", "fid/fbank/small_n",
    }
    assert m["fid/fbank/LUAD/n_real"] == 24 and m["fid/fbank/LUSC/n_synthetic"] == 24 and m["fid/fbank/n_real"] == 48
    assert m["fid/fbank/small_n"] == 2 and m["fid/fbank/dim"] == 222
    assert m["fid/fbank/LUSC"] > 2 * m["fid/fbank/LUAD"]  # the darkened class is further from its real images
    assert m["fid/fbank/mean"] == pytest.approx((m["fid/fbank/LUAD"] + m["fid/fbank/LUSC"]) / 2)
    for key in ("fid/fbank/LUAD", "fid/fbank/LUSC", "fid/fbank/mean"):
        assert 0 <= m[f"{key}/ci_low"] <= m[key] <= m[f"{key}/ci_high"], key


@pytest.mark.parametrize("d", [3, 300])
def test_a_bootstrap_replicate_is_the_distance_of_the_resampled_rows(d):
    rng = np.random.default_rng(d)
    fr, ff = rng.normal(size=(40, d)), rng.normal(size=(30, d)) * 1.2 + 0.1
    draw = np.random.default_rng(7)
    i1, i2 = draw.integers(0, 40, 40), draw.integers(0, 30, 30)
    rep = fid.bootstrap_replicates([(fr, ff)], 1, seed=7)[0, 0]
    assert rep == pytest.approx(fid.frechet_distance(fr[i1], ff[i2]), rel=1e-8)


def test_bootstrap_is_seeded_and_spreads_with_fewer_samples():
    rng = np.random.default_rng(0)
    big = [(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 0.3)]
    small = [(big[0][0][:20], big[0][1][:20])]
    a, b = fid.bootstrap_replicates(big, 40, seed=1), fid.bootstrap_replicates(big, 40, seed=1)
    assert a.shape == (40, 1) and np.array_equal(a, b)
    assert not np.array_equal(a, fid.bootstrap_replicates(big, 40, seed=2))
    assert fid.bootstrap_replicates(small, 40, seed=1).std() > 2 * a.std()


def test_a_class_without_enough_images_is_left_out_with_a_warning():
    rng = np.random.default_rng(1)
    real = rng.integers(0, 255, size=(12, 8, 8, 3), dtype=np.uint8)
    labels = ["A"] * 11 + ["B"]
    with pytest.warns(fid.SmallSampleWarning, match="B: left out, 1 real"):
        res = fid.fid_per_class(MeanColour(), real, real, labels, cfg=fid.FidConfig(bootstrap=5))
    assert list(res.per_class) == ["A"]
    with pytest.raises(ValueError, match="collide"):
        fid.fid_per_class(MeanColour(), real, real, ["mean"] * 12)


# ---------------------------------------------------------------------------------------------------------------
# inception: a local file only


@pytest.fixture
def no_inception(monkeypatch, tmp_path):
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints" / fid.INCEPTION_FILE


def test_missing_inception_weights_name_the_expected_file(no_inception, monkeypatch):
    with pytest.raises(fid.InceptionWeightsMissing) as err:
        fid.inception_features()
    assert fid.INCEPTION_FILE in str(err.value) and str(no_inception) in str(err.value)
    assert fid.INCEPTION_ENV in str(err.value)
    monkeypatch.setenv(fid.INCEPTION_ENV, "/nowhere/inception.pth")
    with pytest.raises(fid.InceptionWeightsMissing, match="/nowhere/inception.pth.*" + fid.INCEPTION_FILE):
        fid.find_inception_weights()
    assert isinstance(err.value, ConfigError)  # the CLI reports it as a usage error, without a traceback


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory) -> Path:
    """A state dict with torch-fidelity's InceptionV3 layout and random weights (the real file is not here)."""
    from benchmark.core._compat import ensure_torchvision

    ensure_torchvision()
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe.torch, "load", return_value={}), mock.patch.object(
        fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None
    ):
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path="unused")
    folder = tmp_path_factory.mktemp("hub") / "checkpoints"
    folder.mkdir()
    path = folder / fid.INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


def test_inception_space_from_a_local_file(random_inception_file, monkeypatch):
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(random_inception_file.parent.parent))
    assert fid.find_inception_weights() == random_inception_file
    full = fid.inception_features()
    assert full.space == "inception" and full.num_features == 2048 and not full.training
    # the 64-d block of the same network keeps the test fast; same file, same loader
    monkeypatch.setenv(fid.INCEPTION_ENV, str(random_inception_file))
    small = fid.inception_features(feature="64")
    assert small.space == "inception64"
    a, b = he_crops(12, seed=7), he_crops(12, seed=8)
    same, _, _ = fid.torchmetrics_fid(small, a, a.copy(), batch_size=12)
    shifted, _, _ = fid.torchmetrics_fid(small, a, (b * 0.5).astype(np.uint8), batch_size=12)
    assert abs(same) < 1e-3 * shifted and shifted > 0


def test_a_file_that_is_not_inception_weights_is_named(tmp_path):
    bad = tmp_path / fid.INCEPTION_FILE
    torch.save({"layer.weight": torch.zeros(2)}, bad)
    with pytest.raises(ConfigError, match=f"{bad}.*{fid.INCEPTION_FILE}"):
        fid.inception_features(bad)


# ---------------------------------------------------------------------------------------------------------------
# the runner's step


class Echo(Method):
    """Synthesizes the real image of each requested row (looked up by slide id), darkened for class B."""

    name = "echo"

    def __init__(self, split: Split, darken_b: bool, cap: int | None = None):
        super().__init__(type("P", (), {"fid_max_per_class": cap})() if cap else None)
        self.split, self.darken_b, self.seen = split, darken_b, None

    @property
    def generative(self) -> bool:
        return True

    def synthesize(self, conditions: pd.DataFrame, ctx: Context) -> np.ndarray:
        self.seen = conditions
        index = {s: i for i, s in enumerate(self.split.metadata["slide_id"])}
        out = self.split.images[[index[s] for s in conditions["slide_id"]]].copy()
        if self.darken_b:
            out[conditions["cancer_type"].to_numpy() == "B"] //= 2
        return out


def heldout_split(n_a: int = 30, n_b: int = 12) -> Split:
    n = n_a + n_b
    meta = pd.DataFrame({
        "label": [0] * n_a + [1] * n_b, "cancer_type": ["A"] * n_a + ["B"] * n_b, "project_id": "TCGA-X",
        "tissue_source_site": [f"S{i % 3}" for i in range(n)], "race": "white", "gender": "female",
        "age_at_index": 60.0, "patient_id": [f"P{i}" for i in range(n)], "slide_id": [f"SL{i}" for i in range(n)],
        "is_synthetic": False, "source": "embedded",
    })[list(METADATA_COLUMNS)]
    return Split(he_crops(n, seed=9), meta, "test_unseen")


def test_evaluate_method_compares_synthetic_and_real_images_of_the_same_rows(no_inception, tmp_path):
    split = heldout_split()
    ctx = Context(device="cpu", preset="smoke", seed=4, task=None, run_dir=tmp_path, cache_dir=tmp_path)
    method = Echo(split, darken_b=True, cap=20)
    metrics = fid.evaluate_method(method, split, ProbeConfig(), ctx, cfg=fid.FidConfig(bootstrap=20))
    # at most 20 rows per class, all from the held-out split, drawn with the run seed
    assert method.seen["cancer_type"].value_counts().to_dict() == {"A": 20, "B": 12}
    assert set(method.seen["slide_id"]) <= set(split.metadata["slide_id"])
    assert metrics["fid/fbank/A/n_real"] == 20 and metrics["fid/fbank/B/n_synthetic"] == 12
    assert abs(metrics["fid/fbank/A"]) < 1e-6  # identical images for A
    assert metrics["fid/fbank/B"] > 0.01
    assert not any(k.startswith("fid/inception") for k in metrics)
    notes = ctx.report["fid"]["notes"]
    left_out = [n for n in notes if "inception space left out" in n]
    assert len(left_out) == 1 and fid.INCEPTION_FILE in left_out[0] and len(left_out[0]) < 120  # one short line
    assert any("B: 12 real / 12 synthetic images for 222 feature dimensions" in n for n in notes)
    again = Echo(split, darken_b=True, cap=20)
    fid.evaluate_method(again, split, ProbeConfig(), ctx, cfg=fid.FidConfig(bootstrap=2, inception="off"))
    assert again.seen["slide_id"].tolist() == method.seen["slide_id"].tolist()


def test_small_sample_notes_are_quiet_on_the_smoke_preset_and_warnings_elsewhere(no_inception, tmp_path, caplog):
    import logging

    split = heldout_split()
    levels = {}
    for preset in ("smoke", "cpu"):
        ctx = Context(device="cpu", preset=preset, seed=4, task=None, run_dir=tmp_path, cache_dir=tmp_path)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="benchmark.evaluation.fid"):
            fid.evaluate_method(Echo(split, darken_b=True, cap=20), split, ProbeConfig(), ctx,
                                cfg=fid.FidConfig(bootstrap=2, inception="off"))
        levels[preset] = {r.levelname for r in caplog.records if "feature dimensions" in r.getMessage()}
    assert levels == {"smoke": {"DEBUG"}, "cpu": {"WARNING"}}


def test_inception_on_without_weights_fails_loudly(no_inception, tmp_path):
    split = heldout_split(6, 6)
    ctx = Context(device="cpu", preset="smoke", seed=0, task=None, run_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(fid.InceptionWeightsMissing, match=fid.INCEPTION_FILE):
        fid.evaluate_method(Echo(split, False), split, ProbeConfig(), ctx, cfg=fid.FidConfig(inception="on"))


def test_a_method_returning_the_wrong_shape_is_named(tmp_path):
    split = heldout_split(4, 4)

    class Bad(Echo):
        name = "bad"

        def synthesize(self, conditions, ctx):
            return np.zeros((len(conditions) - 1, 8, 8, 3), np.uint8)

    ctx = Context(device="cpu", preset="smoke", seed=0, task=None, run_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="'bad'.synthesize returned uint8 \\(7, 8, 8, 3\\) for 8 rows"):
        fid.evaluate_method(Bad(split, False), split, ProbeConfig(), ctx, cfg=fid.FidConfig(inception="off"))
