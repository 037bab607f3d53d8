"""The Figure-4 comparison (``samples``): colour match known answers, the missing-model error, the real command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.studies.compare import colour_match, pick_sites
from methods.stain_norm import mean_lab
from tests.conftest import run_cli


def _solid(rgb, n=4, size=8):
    return np.tile(np.asarray(rgb, np.uint8), (n, size, size, 1))


def test_colour_match_known_answers():
    site_a, site_b = _solid((200, 120, 180)), _solid((150, 160, 220))
    centres = pd.DataFrame(np.stack([mean_lab(site_a).mean(0), mean_lab(site_b).mean(0)]), index=["A", "B"])
    # generated patches with exactly site A's colour: distance 0, nearest centre A
    delta, match = colour_match(site_a, np.array(["A"] * 4), centres)
    assert np.allclose(delta, 0, atol=1e-6) and match.all()
    # site B's colour asked to look like A: the distance is the A-B distance, and B is nearer
    delta, match = colour_match(site_b, np.array(["A"] * 4), centres)
    expected = np.linalg.norm(centres.loc["A"] - centres.loc["B"])
    assert np.allclose(delta, expected, rtol=1e-5) and not match.any()


def test_pick_sites_gives_every_class_its_largest_sites():
    meta = pd.DataFrame({
        "cancer_type": ["X"] * 6 + ["Y"] * 5,
        "tissue_source_site": ["a", "a", "a", "b", "b", "c", "d", "d", "d", "e", "a"],
    })
    # X: b and c have only X (b larger); Y: d and e only Y; a (mixed, largest) comes after single-type sites
    assert pick_sites(meta, ["X", "Y"], 2) == ["b", "c", "d", "e"]
    assert pick_sites(meta, ["X", "Y"], 3) == ["b", "c", "a", "d", "e"]


@pytest.mark.slow
def test_samples_command_needs_trained_models_then_draws_and_attaches(tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "results"
    common = ["--task", "nsclc", "--preset", "smoke", "--no-progress"]
    missing = run_cli("samples", *common, "--results", str(out), "--out", str(tmp_path / "reports"), cwd=tmp_path)
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "no trained cls model" in lines[0]
    assert "python -m benchmark run --method cls --task nsclc --preset smoke" in lines[0]
    for method in ("cls", "medi"):
        proc = run_cli("run", "--method", method, *common, "--out", str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    proc = run_cli("samples", *common, "--n", "8", "--results", str(out), "--out", str(tmp_path / "reports"),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "reports" / "figures" / "samples_nsclc.png"
    table = pd.read_csv(tmp_path / "reports" / "figures" / "samples_nsclc.csv")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(table["cancer_type"]) == {"LUAD", "LUSC"}
    assert {"seen", "counterfactual"} <= set(table["cell"])  # both kinds of cell are drawn and measured
    assert np.isfinite(table[["cls_delta_e", "medi_delta_e"]].to_numpy()).all()
    assert "mean delta-E to the site's colour" in proc.stdout and "class fidelity" in proc.stdout
    for col in ("medi_class_fidelity", "cls_class_fidelity", "medi_site_fidelity"):
        assert table[col].between(0, 1).all()
    # attached to the medi run in MLflow
    run_id = proc.stdout.split("attached to MLflow run ")[1].split()[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    names = [a.path for a in client.list_artifacts(run_id, "figures")]
    assert "figures/samples_nsclc.png" in names
