"""`guidance`: the counterfactual-guidance frontier end to end on the smoke preset, its resume, its grid and errors."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmark.studies import guidance
from tests.conftest import run_cli


def test_grid_adds_guided_points_only_where_the_model_has_an_unconditional_prediction():
    points = guidance.grid([(0.0, 0.0), (0.2, 0.0), (0.1, 0.3)], [1.0, 3.0], [0.5], [2.0])
    labels = [(p.class_dropout, p.meta_dropout, p.label) for p in points]
    assert labels == [(0.0, 0.0, "unguided"), (0.2, 0.0, "unguided"), (0.1, 0.3, "unguided"),
                      (0.1, 0.3, "joint 2"), (0.1, 0.3, "composed c1 m0.5"), (0.1, 0.3, "composed c3 m0.5")]


@pytest.mark.parametrize("text", ["0.1:x", "1.0:0.1", "0.1:0.2:0.3", ""])
def test_bad_dropouts_are_named(text):
    with pytest.raises(guidance.GuidanceError, match="--dropouts"):
        guidance.parse_dropouts(text)


def test_the_chosen_point_is_closest_to_the_truth_without_trading_class_for_site():
    table = pd.DataFrame({
        "class_dropout": [0.0, 0.1, 0.1, 0.1, 0.1], "meta_dropout": [0.0, 0.1, 0.1, 0.1, 0.1],
        "guidance": ["joint", "composed", "composed", "composed", "composed"],
        "label": ["unguided", "a", "b", "c", "d"],
        "class_fidelity": [0.60, 0.95, 0.85, 0.70, 0.55], "site_fidelity": [0.50, 0.30, 0.70, 0.60, 0.90],
        "fid/fbank/mean": [2.0, 0.5, 3.0, 1.5, 0.1],
    })
    best, rule = guidance.best_point(table)
    assert best["label"] == "c" and "both" in rule  # a loses the site, d the class, b is farther than c
    assert guidance.best_point(table.drop(index=[2, 3]))[0]["label"] == "unguided"  # nothing beats it: itself
    assert guidance.best_point(table.drop(index=0))[0] is None  # no baseline, no choice
    assert guidance.meets_target(table.iloc[2]) and not guidance.meets_target(table.iloc[1])


def test_frontier_command_trains_samples_judges_and_resumes(tmp_path):
    args = ["guidance", "--task", "nsclc", "--preset", "smoke", "--dropouts", "0:0,0.2:0.2", "--class-weights", "2",
            "--meta-weights", "1", "--joint-scales", "2", "--per-class", "12", "--results", str(tmp_path / "r"),
            "--out", str(tmp_path / "out"), "--no-progress"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    table = pd.read_csv(tmp_path / "out" / "frontier.csv")
    assert table["label"].tolist() == ["unguided", "unguided", "joint 2", "composed c2 m1"]
    for col in ("class_fidelity", "site_fidelity", "class_fidelity_true", "site_fidelity_true"):
        assert table[col].between(0, 1).all()
    assert (table["n"] == table["n"].iloc[0]).all() and table["n"].iloc[0] >= 2  # one judge for every point
    for figure in ("frontier.png", "samples.png"):  # samples: truth, today's medi, the chosen point
        assert (tmp_path / "out" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "| 0.2:0.2 | composed c2 m1 |" in (tmp_path / "out" / "frontier.md").read_text()
    # the same command again: every point is finished, none is sampled again (the figure reuses cached models)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "class fidelity 0." not in again.stderr and "reusing trained model" in again.stderr
    assert pd.read_csv(tmp_path / "out" / "frontier.csv").equals(table)


def test_bad_input_is_a_one_line_error(tmp_path):
    bad = run_cli("guidance", "--preset", "smoke", "--dropouts", "0.1:2", "--out", str(tmp_path))
    assert bad.returncode != 0 and "--dropouts item '0.1:2'" in bad.stderr and "Traceback" not in bad.stderr
    weights = run_cli("guidance", "--preset", "smoke", "--class-weights", "one", "--out", str(tmp_path))
    assert weights.returncode != 0 and "--class-weights='one'" in weights.stderr
