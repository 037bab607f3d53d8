"""Plug-ins from installed packages: entry points join the registries like the built-ins, a broken one is a one-line
warning, loading happens once; the example package examples/hed_jitter end to end; HED jitter's known answers."""

from __future__ import annotations

import json
import logging
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import plugins
from benchmark.core.data import METADATA_COLUMNS, Split
from benchmark.core.registry import METHODS, Registry
from benchmark.plugins import load_plugins
from benchmark.protocols import Context
from tests.conftest import run_cli

FAKE_MODULES = ("fakeplug_good", "fakeplug_broken")
ENTRY_POINTS = """\
[medibench.methods]
goodjitter = fakeplug_good:GoodMethod
broken = fakeplug_broken:Thing

[medibench.tasks]
goodtask = fakeplug_good:GoodTask

[medibench.encoders]
goodenc = fakeplug_good:make_encoder
"""
GOOD_SOURCE = '''\
"""A plug-in module; it records each import in imports.log next to itself."""
from pathlib import Path

from benchmark.protocols import Method, Task

with open(Path(__file__).with_name("imports.log"), "a") as fh:
    fh.write("imported\\n")


class GoodMethod(Method):
    """Good jitter: a fake method for the tests.

    More text that is not part of the description.
    """

    name = "goodjitter"


class GoodTask(Task):
    """a fake task"""


def make_encoder(cfg):
    """a fake encoder factory"""


def helper():
    return 1
'''
BROKEN_SOURCE = "import nosuchdependency  # noqa: F401\n"


def make_distribution(root: Path, entry_points: str = ENTRY_POINTS, name: str = "fakeplug") -> Path:
    """An installed distribution as pip leaves it: ``<name>-0.1.dist-info`` with entry_points.txt, and its modules."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    (root / "fakeplug_good.py").write_text(GOOD_SOURCE)
    (root / "fakeplug_broken.py").write_text(BROKEN_SOURCE)
    return root


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """The fake distribution on sys.path (as if installed); its modules are forgotten afterwards."""
    root = make_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for module in FAKE_MODULES:
        sys.modules.pop(module, None)


@pytest.fixture
def fresh_plugins(monkeypatch):
    """benchmark.plugins as in a new process, on copies of the registries that hold the built-ins only."""
    load_plugins()
    groups = {}
    for group, real in plugins.GROUPS.items():
        copy = Registry(real.kind)
        for name in real.names():
            if (real.kind, name) not in plugins._plugin_origins:  # built-ins only
                copy.register(name, real.description(name))(real.get(name))
        groups[group] = copy
    monkeypatch.setattr(plugins, "GROUPS", groups)
    monkeypatch.setattr(plugins, "_state", "new")
    monkeypatch.setattr(plugins, "_plugin_origins", {})
    return groups


def plugin_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "benchmark.plugins" and r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------------------------------------------
# load_plugins with a fake installed distribution


def test_entry_points_register_with_their_docstring_and_a_broken_one_is_one_warning(fake_dist, fresh_plugins, caplog):
    caplog.set_level(logging.WARNING, logger="benchmark.plugins")
    methods, tasks, encoders = (fresh_plugins[f"medibench.{g}"] for g in ("methods", "tasks", "encoders"))
    builtins = methods.names()
    load_plugins()  # benchmark.core.registry's, as every command calls it
    # 1. the good entries, described by the first line of their docstrings
    import fakeplug_good

    assert methods.get("goodjitter") is fakeplug_good.GoodMethod
    assert methods.description("goodjitter") == "Good jitter: a fake method for the tests"
    assert tasks.get("goodtask") is fakeplug_good.GoodTask and tasks.description("goodtask") == "a fake task"
    assert encoders.get("goodenc") is fakeplug_good.make_encoder
    # 2. the broken one: left out, one warning line naming the distribution, the entry point and the error
    assert "broken" not in methods
    lines = plugin_warnings(caplog)
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\n" not in line and "Traceback" not in line
    assert "fakeplug 0.1" in line and "'broken'" in line and "fakeplug_broken:Thing" in line
    assert "ModuleNotFoundError: No module named 'nosuchdependency'" in line
    # 3. the built-ins are all still there
    assert set(builtins) <= set(methods.names()) and {"none", "stain_norm", "medi"} <= set(builtins)


def test_load_plugins_is_idempotent(fake_dist, fresh_plugins, caplog):
    caplog.set_level(logging.WARNING, logger="benchmark.plugins")
    for _ in range(3):
        load_plugins()
        plugins.load_plugins()
    assert (fake_dist / "imports.log").read_text() == "imported\n"  # the plug-in module imported once
    assert len(plugin_warnings(caplog)) == 1  # the broken plug-in reported once
    assert fresh_plugins["medibench.methods"].names().count("goodjitter") == 1


def test_wrong_kind_bad_name_and_clash_with_a_built_in_are_left_out(fake_dist, fresh_plugins):
    other = make_distribution(fake_dist / "other", name="otherplug", entry_points="""\
[medibench.methods]
none = fakeplug_good:GoodMethod
notamethod = fakeplug_good:helper
taskasmethod = fakeplug_good:GoodTask
BadName = fakeplug_good:GoodMethod
goodjitter = fakeplug_good:GoodMethod

[medibench.encoders]
notcallable = fakeplug_good:__doc__
""")
    found = metadata.Distribution.at(other / "otherplug-0.1.dist-info").entry_points  # not on sys.path
    builtin_none = fresh_plugins["medibench.methods"].get("none")
    first = plugins.load_entry_points(fresh_plugins, metadata.distribution("fakeplug").entry_points)
    lines = plugins.load_entry_points(fresh_plugins, found)
    assert len(first) == 1 and "'broken'" in first[0]
    by_name = {line.split("'")[1]: line for line in lines}
    assert sorted(by_name) == ["BadName", "goodjitter", "none", "notamethod", "notcallable", "taskasmethod"]
    assert "taken by the built-in method" in by_name["none"]
    assert "taken by the method of distribution fakeplug 0.1" in by_name["goodjitter"]
    assert "expected a subclass of benchmark.protocols.Method" in by_name["notamethod"]
    assert "got class fakeplug_good.GoodTask" in by_name["taskasmethod"]
    assert "lowercase word" in by_name["BadName"]
    assert "expected an encoder factory" in by_name["notcallable"]
    assert all("distribution otherplug 0.1" in line and "\n" not in line for line in lines)
    assert fresh_plugins["medibench.methods"].get("none") is builtin_none


def test_list_with_a_broken_plug_in_warns_in_one_line_and_lists_the_built_ins(tmp_path):
    root = make_distribution(tmp_path / "site")
    proc = run_cli("list", env={"PYTHONPATH": str(root)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "broken" in line]
    assert len(warning) == 1 and "Traceback" not in proc.stderr
    assert warning[0].startswith("WARNING benchmark.plugins: plug-in method 'broken' (distribution fakeplug 0.1")
    for name in ("none", "stain_norm", "medi", "goodjitter", "nsclc", "goodtask", "fbank", "goodenc"):
        assert f"  {name} " in proc.stdout
    assert "Good jitter: a fake method for the tests" in proc.stdout


# ---------------------------------------------------------------------------------------------------------------
# the example package examples/hed_jitter, installed by scripts/setup.sh --test


@pytest.fixture(scope="module")
def hed():
    """The example plug-in's module (installed in editable mode by scripts/setup.sh --test)."""
    try:
        metadata.distribution("medibench-hed-jitter")
        import medibench_hed_jitter.method as module
    except (metadata.PackageNotFoundError, ImportError) as exc:
        pytest.fail(f"the example plug-in is not installed ({exc}): run scripts/setup.sh --test "
                    "(or .venv/bin/python -m pip install --no-deps --no-build-isolation -e examples/hed_jitter)")
    return module


def test_example_plug_in_is_registered_from_its_entry_point(hed):
    load_plugins()
    assert METHODS.get("hed_jitter") is hed.HEDJitter
    assert METHODS.description("hed_jitter").startswith("HED colour augmentation (Tellez et al. 2019)")
    (ep,) = [e for e in metadata.entry_points(group="medibench.methods") if e.name == "hed_jitter"]
    assert ep.dist.name == "medibench-hed-jitter" and ep.value == "medibench_hed_jitter.method:HEDJitter"


@pytest.mark.slow
def test_example_plug_in_lists_runs_and_reports_end_to_end(hed, tmp_path):
    listed = run_cli("list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "  hed_jitter   HED colour augmentation" in listed.stdout and "WARNING" not in listed.stderr
    out = tmp_path / "results"
    proc = run_cli("run", "--method", "hed_jitter", "--task", "nsclc", "--preset", "smoke", "--out", str(out),
                   "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["method"] == "hed_jitter" and record["preset"] == "smoke"
    n_real, n_synthetic = record["metrics"]["train/n_real"], record["metrics"]["train/n_synthetic"]
    assert n_real > 0 and n_synthetic == n_real  # one jittered copy of each real patch
    assert f"train: {int(n_real)} real + {int(n_synthetic)} synthetic patches" in proc.stdout
    assert 0.0 <= record["metrics"]["test_unseen/balanced_accuracy"] <= 1.0
    report = run_cli("report", "--results", str(out), "--out", str(tmp_path / "reports"), "--no-pdf", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "nsclc (smoke): hed_jitter" in report.stdout and "1 run records" in report.stdout
    assert "hed_jitter" in (tmp_path / "reports" / "leaderboard.html").read_text()


# ---------------------------------------------------------------------------------------------------------------
# HED jitter: known answers


def tiny_split(images: np.ndarray) -> Split:
    n = len(images)
    meta = pd.DataFrame({c: ["Unknown"] * n for c in METADATA_COLUMNS})
    meta["label"] = np.arange(n) % 2
    meta["age_at_index"] = np.nan
    meta["is_synthetic"] = False
    meta["source"] = "embedded"
    meta["patient_id"] = [f"TCGA-05-{i:04d}" for i in range(n)]
    return Split(images, meta, "train")


def augment(hed, images: np.ndarray, seed: int, tmp_path: Path, **params) -> Split:
    ctx = Context(device="cpu", preset="smoke", seed=seed, task=None, run_dir=tmp_path, cache_dir=tmp_path)
    return hed.HEDJitter(hed.Params(**params)).augment(tiny_split(images), ctx)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    """Eight 32 px tiles of a real H&E image."""
    from tests.real_he import load

    he = load()
    rng = np.random.default_rng(0)
    return np.stack([he[y : y + 32, x : x + 32] for y, x in rng.integers(0, he.shape[0] - 32, size=(8, 2))])


def test_sigma_zero_is_the_identity(hed, tiles, tmp_path):
    levels = np.arange(0, 256, 4, dtype=np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(64, 64, 64, 3)
    assert np.array_equal(hed.hed_jitter(cube, np.ones((64, 3)), np.zeros((64, 3))), cube)
    out = augment(hed, tiles, 0, tmp_path, sigma=0.0, copies=2)
    assert np.array_equal(out.images, np.concatenate([tiles, tiles, tiles]))


def test_a_fixed_seed_gives_the_same_images_whatever_the_batch_size(hed, tiles, tmp_path):
    first = augment(hed, tiles, 7, tmp_path)
    again = augment(hed, tiles, 7, tmp_path, batch_size=3)
    other = augment(hed, tiles, 8, tmp_path)
    assert np.array_equal(first.images, again.images)
    assert not np.array_equal(first.images[len(tiles) :], other.images[len(tiles) :])


def test_jitter_changes_the_colour_and_keeps_the_metadata(hed, tiles, tmp_path):
    out = augment(hed, tiles, 0, tmp_path)
    n = len(tiles)
    assert out.images.shape == (2 * n, 32, 32, 3) and out.images.dtype == np.uint8
    assert np.array_equal(out.images[:n], tiles)  # the real patches first, untouched
    jittered = out.images[n:].astype(np.float64)
    change = np.abs(jittered.mean(axis=(1, 2)) - tiles.mean(axis=(1, 2))).max(axis=1)
    assert (change > 2.0).all(), change  # every copy's mean colour moved by more than 2 grey levels
    meta = out.metadata
    assert meta["is_synthetic"].tolist() == [False] * n + [True] * n
    assert meta["source"].iloc[n:].eq("hed_jitter").all()
    assert meta["patient_id"].iloc[n:].tolist() == meta["patient_id"].iloc[:n].tolist()


def test_known_answers_of_the_stain_model(hed):
    white = np.full((1, 1, 1, 3), 255, np.uint8)
    # scaling leaves white white: no stain to scale
    assert hed.hed_jitter(white, np.array([[1.05, 0.95, 1.0]]), np.zeros((1, 3))).tolist() == white.tolist()
    # adding haematoxylin (beta = 0.05, i.e. 0.05 * -ln(1e-6) optical density) to white: Beer-Lambert by hand
    od = 0.05 * -np.log(1e-6) * np.array([0.65, 0.70, 0.29])
    expected = np.rint(255 * np.exp(-od)).astype(np.uint8)
    assert expected.tolist() == [163, 157, 209]
    assert hed.hed_jitter(white, np.ones((1, 3)), np.array([[0.05, 0.0, 0.0]]))[0, 0, 0].tolist() == [163, 157, 209]
    # the DAB channel stays as it was unless asked for
    alpha, beta = hed.random_coefficients(100, 0.05, np.random.default_rng(0))
    assert (alpha[:, 2] == 1.0).all() and (beta[:, 2] == 0.0).all()
    assert (np.abs(alpha[:, :2] - 1) <= 0.05).all() and (np.abs(beta[:, :2]) <= 0.05).all()
    assert alpha[:, :2].std() > 0.01
    with pytest.raises(ValueError, match="method.sigma=1.5"):
        hed.Params(sigma=1.5)


def test_docstring_description_of_a_class_without_one_is_not_inherited():
    from benchmark.protocols import Method

    class Bare(Method):
        pass

    ep = metadata.EntryPoint(name="bare", value="somepackage.module:Bare", group="medibench.methods")
    assert plugins.describe(Bare, ep) == "(no docstring; from package somepackage)"
