"""Time to quality (``benchmark.studies.quality``, the ``time_to_quality`` perf stage) and the faster recipe's pieces.

Known answers for reading a curve and for the Min-SNR weights; the cosine schedule reaching the samplers; a smoke-
preset curve that measures what it says; the perf stage end to end on the smoke preset (JSON row + figure).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from benchmark.studies.quality import MEASURES, SampleQuality, quality_curve, time_to
from methods.diffusion import DiffusionModel, DiffusionParams, Vocabulary, loss_weights
from tests.conftest import run_cli


def _curve(values, measure="fid"):
    return [{"step": 10 * (i + 1), "seconds": 60.0 * (i + 1), measure: v} for i, v in enumerate(values)]


def test_time_to_interpolates_between_the_points_around_the_crossing():
    curve = _curve([10.0, 6.0, 2.0, 1.0])
    assert time_to(curve, 4.0) == pytest.approx(150.0)  # between 120 s (6.0) and 180 s (2.0), halfway
    assert time_to(curve, 6.0) == pytest.approx(120.0)  # reached exactly at a point
    assert time_to(curve, 12.0) == pytest.approx(60.0)  # already at the first point
    assert math.isnan(time_to(curve, 0.5))  # never reached


def test_time_to_reads_fidelities_as_higher_is_better():
    curve = _curve([0.2, 0.5, 0.9], "site_fidelity")
    assert time_to(curve, 0.7, "site_fidelity") == pytest.approx(150.0)
    assert math.isnan(time_to(curve, 0.95, "site_fidelity"))


def test_time_to_counts_the_first_crossing_not_a_later_one():
    curve = _curve([5.0, 3.0, 6.0, 2.0])
    assert time_to(curve, 4.0) == pytest.approx(90.0)


@pytest.mark.parametrize(("alpha_bar", "prediction", "expected"), [
    (0.5, "v_prediction", 0.5),  # SNR 1: min(1, 5) / (1 + 1)
    (0.9, "v_prediction", 0.5),  # SNR 9: min(9, 5) / (9 + 1)
    (0.9, "epsilon", 5 / 9),  # min(9, 5) / 9
    (0.2, "epsilon", 1.0),  # SNR 0.25 < gamma: epsilon keeps weight 1
])
def test_min_snr_weights_known_answers(alpha_bar, prediction, expected):
    p = DiffusionParams(loss_weighting="min_snr", snr_gamma=5.0, prediction_type=prediction)
    assert float(loss_weights(torch.tensor([alpha_bar]), p)[0]) == pytest.approx(expected, rel=1e-5)
    plain = replace(p, loss_weighting="none")
    assert float(loss_weights(torch.tensor([alpha_bar]), plain)[0]) == 1.0


def test_min_snr_is_min_snr_gamma_on_the_x0_loss_for_both_objectives():
    """||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2 and ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 (per unit
    of alpha_bar), so both weighted losses are min(SNR, gamma) times the x0 loss."""
    a = torch.linspace(0.01, 0.99, 50)
    snr = a / (1 - a)
    for prediction, factor in (("v_prediction", snr + 1), ("epsilon", snr)):
        p = DiffusionParams(loss_weighting="min_snr", snr_gamma=3.0, prediction_type=prediction)
        assert torch.allclose(loss_weights(a, p) * factor, torch.clamp(snr, max=3.0), rtol=1e-5)


def test_the_noise_schedule_reaches_training_and_every_sampler():
    import pandas as pd

    meta = pd.DataFrame({"cancer_type": ["A"], "tissue_source_site": ["s"], "race": ["r"]})
    vocab = Vocabulary.from_metadata(meta, ["tissue_source_site", "race"])
    small = dict(block_out_channels=(8, 16), norm_num_groups=4)
    for schedule, name in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        model = DiffusionModel(DiffusionParams(noise_schedule=schedule, **small), ["A"], vocab, 16)
        assert model.noise_scheduler().config.beta_schedule == name
        for sampler in ("ddim", "dpmpp"):
            assert model.scheduler(sampler).config.beta_schedule == name
    cos = DiffusionModel(DiffusionParams(noise_schedule="cosine", **small), ["A"], vocab, 16).noise_scheduler()
    lin = DiffusionModel(DiffusionParams(**small), ["A"], vocab, 16).noise_scheduler()
    # the cosine schedule keeps more signal in the middle of the chain
    assert float(cos.alphas_cumprod[500]) > float(lin.alphas_cumprod[500]) + 0.2


def test_bad_recipe_values_are_named():
    from benchmark.core.config import ConfigError
    from methods.diffusion import validate

    for field, value in (("noise_schedule", "sigmoid"), ("loss_weighting", "p2"), ("snr_gamma", 0.0)):
        with pytest.raises(ConfigError, match=f"method.{field}"):
            validate(replace(DiffusionParams(), **{field: value}))


@pytest.mark.slow
def test_a_smoke_curve_measures_every_point(smoke_nsclc):
    from methods.diffusion import MeDi

    task, splits = smoke_nsclc
    train = splits["train"].load()
    quality = SampleQuality(train, list(task.classes), n_fid=32, per_cell=2)
    assert quality.counterfactual.any() and not quality.counterfactual.all()
    params = replace(MeDi.default_params("smoke"), steps=6)
    curve = quality_curve(params, train, task, quality, points=3)
    assert [p["step"] for p in curve] == [2, 4, 6]
    assert all(b["seconds"] > a["seconds"] > 0 for a, b in zip(curve, curve[1:], strict=False))
    for point in curve:
        assert set(MEASURES) <= set(point)
        assert point["fid"] > 0 and point["delta_e"] > 0
        assert all(0 <= point[m] <= 1 for m in MEASURES if "fidelity" in m)
    again = quality_curve(params, train, task, quality, points=3)
    assert [p["fid"] for p in again] == [p["fid"] for p in curve]  # a fixed seed gives the same curve


def test_a_smoke_cyclegan_curve_measures_its_translations(smoke_nsclc):
    from benchmark.studies.quality import cyclegan_curve
    from methods.cyclegan import CycleGAN

    task, splits = smoke_nsclc
    train = splits["train"].load()
    quality = SampleQuality(train, list(task.classes), n_fid=32, per_cell=2)
    curve = cyclegan_curve(replace(CycleGAN.default_params("smoke"), steps=4, decay_steps=2), train, task, quality,
                           points=2)
    assert [p["step"] for p in curve] == [2, 4]
    for point in curve:
        assert point["delta_e"] > 0 and point["fid"] > 0 and 0 <= point["class_fidelity"] <= 1


@pytest.mark.slow
def test_perf_time_to_quality_stage_writes_its_row_and_figure(tmp_path):
    out = tmp_path / "perf.json"
    proc = run_cli("perf", "--preset", "smoke", "--stages", "time_to_quality", "--methods", "medi,cyclegan",
                   "--threads", "1", "--results", str(tmp_path / "results"), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    rows = {s["stage"]: s for s in record["stages"]}
    assert set(rows) == {"time_to_quality:medi", "time_to_quality:cyclegan"} and not record["errors"]  # --methods
    for row in rows.values():
        curves = row["extra"]["curves"]
        assert len(curves["reference"]) >= 2 and len(curves["ours"]) >= 2
        assert row["reference"] == curves["reference"][-1]["seconds"]
        assert row["extra"]["target"] == curves["reference"][-1][row["extra"]["measure"]]
        if math.isfinite(row["ours"]):
            assert row["ratio"] == pytest.approx(row["reference"] / row["ours"])  # time: reference / ours
    png = tmp_path / "perf_time_to_quality.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
