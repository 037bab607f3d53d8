"""Replicates vary every source of randomness together (unless pinned), records say which, and a run's identity
covers the code that decides its numbers."""

from __future__ import annotations

import sys
import textwrap

import pandas as pd
import pytest

from benchmark.core import provenance
from benchmark.core.config import ConfigError
from benchmark.orchestration.runner import build_config, run_dir_for, run_one


def test_a_replicate_varies_every_source_unless_one_is_pinned():
    cfg = build_config("medi", "nsclc", "smoke", seed=3, device="cpu")
    assert cfg.replicate() == {"seed": 3, "seeds": {"cohort": 3, "split": 3, "model": 3, "sampling": 3, "probe": 3},
                               "varied": ["cohort", "split", "model", "sampling", "probe"],
                               "population": "independent cohorts", "cohort_world": 3}
    paper = build_config("medi", "nsclc", "smoke", seed=3, device="cpu",
                         overrides=["seeds.cohort=0", "seeds.split=0", "seeds.model=0"])
    assert paper.replicate()["seeds"] == {"cohort": 0, "split": 0, "model": 0, "sampling": 3, "probe": 3}
    assert paper.replicate()["varied"] == ["sampling", "probe"]
    assert paper.replicate()["population"] == "one cohort, re-split"
    with pytest.raises(ConfigError, match="seeds.split=-2 is invalid"):
        build_config("none", "nsclc", "smoke", device="cpu", overrides=["seeds.split=-2"])


def _test_patients(record: dict) -> set[str]:
    frame = pd.read_csv(f"{record['run_dir']}/predictions.csv.gz", dtype={"patient_id": str})
    return set(frame.loc[frame["split"] == "test_unseen", "patient_id"])


def test_replicates_draw_their_own_split_and_a_pinned_split_is_shared(tmp_path):
    runs = {}
    for seed in (0, 1):
        for pinned in (False, True):
            cfg = build_config("none", "nsclc", "smoke", seed=seed, device="cpu",
                               overrides=["seeds.cohort=0", "seeds.split=0"] if pinned else [])
            runs[(seed, pinned)] = run_one(cfg, tmp_path, progress=False)
    assert _test_patients(runs[(0, False)]) != _test_patients(runs[(1, False)])  # a new split per replicate
    assert _test_patients(runs[(0, True)]) == _test_patients(runs[(1, True)])  # the paper's protocol: one split
    assert runs[(1, True)]["replicate"]["varied"] == ["model", "sampling", "probe"]
    rec = runs[(1, False)]
    assert rec["replicate"]["seeds"]["split"] == 1 and rec["schema"] == 3
    # a fresh cohort per replicate: no test patient of replicate 0 is a patient of replicate 1 (patients are
    # (world, id): the generated identifiers may coincide by chance, the people do not)
    assert rec["data"]["cohort_world"] == 1 and runs[(0, False)]["data"]["cohort_world"] == 0
    # each run carries 95% intervals from a bootstrap over patients, around its own value
    metrics = rec["metrics"]
    low, high = metrics["test_unseen/balanced_accuracy/ci_low"], metrics["test_unseen/balanced_accuracy/ci_high"]
    assert low <= rec["metrics"]["test_unseen/balanced_accuracy"] <= high and low < high
    assert rec["code_version"].startswith("0.1.0+") and len(rec["code_version"]) == len("0.1.0+") + 16


def test_the_code_hash_follows_imports_and_changes_with_the_code(tmp_path, monkeypatch):
    pkg = tmp_path / "myplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "method.py").write_text("from myplugin import helper\nfrom . import numbers\nX = helper.Y\n")
    (pkg / "helper.py").write_text("Y = 1\n")
    (pkg / "numbers.py").write_text("Z = 2\n")
    (pkg / "unused.py").write_text("W = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    closure = provenance.source_closure(("myplugin.method",))
    assert {"myplugin.method", "myplugin.helper", "myplugin.numbers", "myplugin"} == set(closure)
    before = provenance.code_hash(["myplugin.method"])
    (pkg / "unused.py").write_text("W = 4\n")
    assert provenance.code_hash(["myplugin.method"]) == before  # not imported: not part of the identity
    (pkg / "helper.py").write_text("Y = 2\n")
    assert provenance.code_hash(["myplugin.method"]) != before
    sys.modules.pop("myplugin", None)


def test_a_runs_identity_covers_evaluation_method_and_task_code_but_not_the_report():
    closure = provenance.source_closure(("benchmark.orchestration.runner", "methods.diffusion", "tasks.definitions"))
    for module in ("benchmark.orchestration.runner", "benchmark.evaluation.metrics", "benchmark.evaluation.stats",
                   "benchmark.evaluation.encoders", "benchmark.training.loop", "methods.diffusion",
                   "tasks.definitions", "tasks.splits"):
        assert module in closure, module
    for module in ("benchmark.report", "benchmark.__main__", "benchmark.orchestration.sweep", "methods.cyclegan"):
        assert module not in closure, module
    a = build_config("medi", "nsclc", "smoke", device="cpu")
    b = build_config("cyclegan", "nsclc", "smoke", device="cpu")
    assert run_dir_for(a, provenance.Path("r")).name.startswith("medi-nsclc-s0-")
    assert textwrap.dedent(run_dir_for(a, provenance.Path("r")).name) != run_dir_for(b, provenance.Path("r")).name
