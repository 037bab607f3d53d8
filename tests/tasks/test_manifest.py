"""A cohort of your own: a CSV manifest of real H&E JPEGs and a TOML task, loaded by the one loader under TCGA-UT too.

Unit tests of the manifest loader and the task file (each bad input: one message naming the file, key, line or
value), then the command line end to end: ``run --task <tmp>/task.toml --preset smoke``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.core.config import PRESETS, ConfigError
from benchmark.core.data import METADATA_COLUMNS, UNKNOWN
from benchmark.core.registry import TASKS
from benchmark.plugins import load_plugins
from tasks import manifest, task_file
from tasks.manifest import DataError, build_index, load_index, read_manifest
from tasks.task_file import read_task_file, resolve_task_file
from tests.conftest import run_cli
from tests.tasks.test_tcga_ut import build as build_tcga_ut
from tests.tasks.test_tcga_ut import crops  # noqa: F401  (a fixture)

CLASSES = ("normal", "tumor")
TASK = {
    "name": "cohort",
    "description": "normal vs tumour, five hospitals",
    "manifest": "cohort.csv",
    "classes": list(CLASSES),
    "heldout_keys": ["tissue_source_site"],
    "group_columns": ["tissue_source_site", "scanner"],
    "heldout_fraction": 0.2,
}


def write_cohort(folder: Path, crops: list[np.ndarray], hospitals: int = 5, patients: int = 4,  # noqa: F811
                 images: int = 2, labels: tuple[str, ...] = CLASSES) -> tuple[Path, pd.DataFrame]:
    """JPEG tiles of the real H&E image under ``folder/images`` and ``folder/cohort.csv`` listing them (relative
    paths): every hospital sends every class; a scanner column (not in the schema) per hospital."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows, k = [], 0
    for h in range(hospitals):
        for label in labels:
            for p in range(patients):
                patient = f"h{h}-{label}-{p}"
                for j in range(images):
                    name = f"images/{patient}_{j}.jpg"
                    Image.fromarray(crops[k % len(crops)]).save(folder / name, quality=90)
                    k += 1
                    rows.append({"path": name, "label": label, "tissue_source_site": f"hospital_{h}",
                                 "patient_id": patient, "race": ["white", "asian", "not reported"][p % 3],
                                 "age_at_index": str(40 + p), "scanner": "scanA" if h < 3 else "scanB"})
    table = pd.DataFrame(rows)
    table.to_csv(folder / "cohort.csv", index=False)
    return folder / "cohort.csv", table


def toml_text(values: dict) -> str:
    """A task file's text (strings, numbers and lists of strings are all it holds)."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def write_task(folder: Path, values: dict | None = None, name: str = "task.toml") -> Path:
    path = folder / name
    path.write_text(toml_text(TASK if values is None else values))
    return path


@pytest.fixture
def cohort(tmp_path: Path, crops: list[np.ndarray]) -> tuple[Path, pd.DataFrame]:  # noqa: F811
    return write_cohort(tmp_path, crops)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    """The task registry as the CLI has it; task files registered by a test are forgotten after it."""
    load_plugins()
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))
    monkeypatch.setattr(task_file, "_registered", {})
    return TASKS


def rewrite(csv: Path, table: pd.DataFrame) -> Path:
    table.to_csv(csv, index=False)
    return csv


# --- the manifest ---------------------------------------------------------------------------------------------------


def test_index_schema_defaults_and_other_columns(cohort: tuple[Path, pd.DataFrame]) -> None:
    csv, table = cohort
    table = table.drop(columns="race")
    table.loc[0, "age_at_index"] = "--"
    rewrite(csv, table)
    index, report = load_index(csv, ("tumor", "normal"))
    assert list(index.columns) == [*METADATA_COLUMNS, "path", "scanner"]
    assert len(index) == len(table) == report.n_images == 80
    assert dict(zip(index["cancer_type"], index["label"], strict=True)) == {"tumor": 0, "normal": 1}
    assert index["label"].dtype == np.int64 and index["age_at_index"].dtype == np.float64
    assert np.isnan(index["age_at_index"][0]) and index["age_at_index"][1] == 40.0
    assert set(index["race"]) == {UNKNOWN} and set(index["gender"]) == {UNKNOWN}  # optional columns left out
    assert (index["project_id"] == index["cancer_type"]).all() and (index["slide_id"] == index["patient_id"]).all()
    assert set(index["source"]) == {"manifest"} and not index["is_synthetic"].any()
    assert index["path"][0] == str(csv.parent / "images" / "h0-normal-0_0.jpg")  # relative to the manifest
    assert set(index["scanner"]) == {"scanA", "scanB"}
    assert (report.n_patients, report.n_sites, report.extra_columns) == (40, 5, ["scanner"])
    assert report.class_counts == {"tumor": 40, "normal": 40}
    json.dumps(report.to_dict())


def test_absolute_paths_and_tab_separated(cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    csv, table = cohort
    table["path"] = [str(csv.parent / p) for p in table["path"]]
    tsv = tmp_path / "elsewhere" / "cohort.tsv"
    tsv.parent.mkdir()
    table.to_csv(tsv, sep="\t", index=False)
    index, _ = load_index(tsv, CLASSES)
    assert index["path"].tolist() == table["path"].tolist()


def test_without_patient_id_every_image_is_a_patient(cohort: tuple[Path, pd.DataFrame],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    csv, table = cohort
    rewrite(csv, table.drop(columns="patient_id"))
    with caplog.at_level(logging.WARNING, logger="tasks.manifest"):
        index, report = load_index(csv, CLASSES)
    assert index["patient_id"].nunique() == len(index) == report.n_patients and report.patient_per_image
    assert "no patient_id column: every image is treated as its own patient" in caplog.text
    assert "count patches as independent" in caplog.text


def test_tcga_ut_and_a_manifest_of_the_same_images_give_the_same_index(tmp_path: Path,
                                                                       crops: list[np.ndarray]) -> None:  # noqa: F811
    """One loader underneath: the TCGA-UT layout is one way of writing a manifest."""
    from tasks import tcga_ut

    root, clinical = build_tcga_ut(tmp_path, crops)
    expected, _ = tcga_ut.load_index(root, clinical, ["LUSC", "LUAD"])
    table = expected.drop(columns=["label", "is_synthetic", "source"]).rename(columns={"cancer_type": "label"})
    csv = rewrite(tmp_path / "tcga.csv", table)
    index, _ = load_index(csv, ["LUSC", "LUAD"])
    pd.testing.assert_frame_equal(index.drop(columns="source"), expected.drop(columns="source"))


# each bad manifest: (change to the table or file, the message)
BAD_MANIFESTS = {
    "missing column": (lambda t, d: t.drop(columns="label"), r"lacks required column\(s\) \['label'\]; columns found"),
    "empty file": ("", r"cohort.csv' is empty: expected a header line with columns path, label"),
    "header only": ("path,label,tissue_source_site\n", r"has a header but no rows"),
    "column twice": ("path,label,tissue_source_site,label\na.jpg,normal,h,normal\n",
                     r"column 'label' appears more than once in the header"),
    "reserved column": (lambda t, d: t.assign(cancer_type="x"),
                        r"column 'cancer_type' is set by the loader \(the class name, taken from label\)"),
    "unknown label": (lambda t, d: t.assign(label=t["label"].where(t.index != 3, "tumour")),
                      r"cohort.csv' line 5: unknown label 'tumour': not one of the classes of the task, "
                      r"\['normal', 'tumor'\] \(labels outside them: \['tumour'\]\)"),
    "class without images": (lambda t, d: t[t["label"] == "normal"],
                             r"the task: class 'tumor' has no images in manifest .*cohort.csv' \(labels there: "),
    "missing image": (lambda t, d: t.assign(path=t["path"].where(t.index != 6, "images/nowhere.jpg")),
                      r"line 8: image file '.*images/nowhere.jpg' does not exist \(1 of 80 listed images are "
                      r"missing; data.on_error=skip runs without them\)"),
    "duplicate path": (lambda t, d: t.assign(path=t["path"].where(t.index != 2, t["path"][1])),
                       r"lines 3 and 4 name the same image '.*h0-normal-0_1.jpg'"),
    "empty path": (lambda t, d: t.assign(path=t["path"].where(t.index != 0, " ")), r"line 2: empty path"),
    "empty site": (lambda t, d: t.assign(tissue_source_site=t["tissue_source_site"].where(t.index != 9, "")),
                   r"line 11: empty tissue_source_site \(1 row\(s\) without one\)"),
    "bad age": (lambda t, d: t.assign(age_at_index=t["age_at_index"].where(t.index != 4, "old")),
                r"line 6: age_at_index 'old' is not a number of years"),
    "patient in two classes": (lambda t, d: t.assign(patient_id=t["patient_id"].where(t.index != 8, "h0-normal-0")),
                               r"line 10: patient 'h0-normal-0' has label 'tumor' here and 'normal' on manifest "
                               r".*line 2; a patient has one label"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_is_one_message_naming_it(cohort: tuple[Path, pd.DataFrame], case: str) -> None:
    csv, table = cohort
    change, message = BAD_MANIFESTS[case]
    if isinstance(change, str):
        csv.write_text(change)
    else:
        rewrite(csv, change(table, csv.parent))
    with pytest.raises(DataError, match=message) as err:
        load_index(csv, CLASSES)
    assert str(csv) in str(err.value)


def test_missing_manifest_and_missing_images_under_skip(cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    csv, table = cohort
    with pytest.raises(DataError, match=r"manifest '.*nowhere.csv' does not exist or is not a file"):
        read_manifest(tmp_path / "nowhere.csv")
    (csv.parent / table["path"][6]).unlink()
    _, report = read_manifest(csv, on_error="skip")  # left to the decoder, which skips and lists it
    assert report.missing_files == 1
    index, report = load_index(csv, CLASSES, on_error="skip")
    split = manifest.load_split(index, report, CLASSES, image_size=32, on_error="skip", max_patches_per_slide=0,
                                cache_dir=None, progress=False, source="manifest", where=str(csv))
    assert len(split) == 79 and split.info["n_skipped_files"] == 1
    assert "file not found" in split.info["load_report"]["skipped"][0][1]


def test_unreadable_image_names_the_file(cohort: tuple[Path, pd.DataFrame]) -> None:
    csv, table = cohort
    bad = csv.parent / table["path"][5]
    bad.write_bytes(bad.read_bytes()[:300])
    index, report = load_index(csv, CLASSES)
    with pytest.raises(DataError, match=rf"{bad}: corrupt or truncated image"):
        manifest.load_split(index, report, CLASSES, image_size=32, on_error="fail", max_patches_per_slide=0,
                            cache_dir=None, progress=False, source="manifest", where=str(csv))


def test_build_index_names_rows_by_path_without_lines() -> None:
    table = pd.DataFrame({"path": ["/a.jpg", "/b.jpg", "/c.jpg"], "label": ["x", "z", "y"],
                          "tissue_source_site": ["s", "s", "s"]})
    with pytest.raises(DataError, match=r"my cohort, image '/b.jpg': unknown label 'z'"):
        build_index(table, ["x", "y"], where="my cohort")


# --- the task file --------------------------------------------------------------------------------------------------


def test_task_file_is_read(cohort: tuple[Path, pd.DataFrame]) -> None:
    csv, _ = cohort
    spec = read_task_file(write_task(csv.parent))
    assert (spec.name, spec.classes, spec.heldout_keys) == ("cohort", CLASSES, ("tissue_source_site",))
    assert spec.group_columns == ("tissue_source_site", "scanner") and spec.manifest == str(csv)
    assert spec.config_defaults() == {"split.heldout_keys": ("tissue_source_site",), "split.heldout_fraction": 0.2,
                                      "data.manifest": str(csv)}
    assert len(spec.sha256) == 64
    assert task_file.is_task_file("task.toml") and task_file.is_task_file("cohorts/camelyon")
    assert not task_file.is_task_file("nsclc")


# each bad task file: (the file's values, or its text, and the message after "task file '<path>'")
BAD_TASKS = {
    "unknown key": ({**TASK, "clases": ["a", "b"]},
                    r": unknown key 'clases' \(did you mean 'classes'\?\); valid keys: name, classes, heldout_keys"),
    "missing key": ({k: v for k, v in TASK.items() if k != "heldout_keys"},
                    r": missing required key 'heldout_keys' \(manifest columns whose combinations are held out\)"),
    "wrong type": ({**TASK, "classes": "normal"}, r", key 'classes': expected a list of strings, got str 'normal'"),
    "wrong item type": ({**TASK, "group_columns": ["scanner", 3]},
                        r", key 'group_columns': expected a list of strings, got list \['scanner', 3\]"),
    "number as text": ({**TASK, "heldout_fraction": "0.3"}, r", key 'heldout_fraction': expected a number, got str"),
    "bad name": ({**TASK, "name": "My Cohort"}, r", key 'name': 'My Cohort' is not a lowercase word"),
    "one class": ({**TASK, "classes": ["tumor"]}, r", key 'classes': \['tumor'\] has fewer than two classes"),
    "class twice": ({**TASK, "classes": ["tumor", "normal", "tumor"]}, r", key 'classes': 'tumor' is listed more"),
    "label as group": ({**TASK, "group_columns": ["label"]},
                       r", key 'group_columns': 'label' cannot be listed \(the class is always part of a group"),
    "no heldout key": ({**TASK, "heldout_keys": []}, r", key 'heldout_keys': empty; name at least one"),
    "fraction out of range": ({**TASK, "heldout_fraction": 1.5},
                              r", key 'heldout_fraction': 1.5 is invalid: expected in \(0, 1\)"),
    "bad guard": ({**TASK, "guard": "hospital"}, r", key 'guard': 'hospital' is invalid: expected 'key' or 'site'"),
    "missing manifest": ({**TASK, "manifest": "other.csv"},
                         r", key 'manifest': 'other.csv' \(read as '.*other.csv', relative to the task file\) does "
                         r"not exist"),
    "not toml": ('name = "cohort"\nclasses = ["a" "b"]\n', r" is not valid TOML: .+ \(at line 2, column"),
}


@pytest.mark.parametrize("case", list(BAD_TASKS))
def test_bad_task_file_is_one_message_naming_file_and_key(cohort: tuple[Path, pd.DataFrame], case: str) -> None:
    csv, _ = cohort
    content, message = BAD_TASKS[case]
    path = csv.parent / "task.toml"
    path.write_text(content if isinstance(content, str) else toml_text(content))
    with pytest.raises(ConfigError, match=rf"^task file '{re.escape(str(path))}'{message}"):
        read_task_file(path)


def test_task_file_that_does_not_exist(tmp_path: Path, registry) -> None:
    with pytest.raises(ConfigError, match=r"task file '.*nowhere/task.toml' does not exist or is not a file"):
        registry.get(str(tmp_path / "nowhere" / "task.toml"))
    with pytest.raises(Exception, match=r"unknown task 'lungs'; choose from: .*nsclc.*, or a task file"):
        registry.get("lungs")


def test_task_names_clash(cohort: tuple[Path, pd.DataFrame], registry) -> None:
    csv, _ = cohort
    with pytest.raises(ConfigError, match=r"key 'name': 'nsclc' is taken by a registered task"):
        resolve_task_file(str(write_task(csv.parent, {**TASK, "name": "nsclc"})))
    first = write_task(csv.parent)
    assert resolve_task_file(str(first)) == "cohort" == resolve_task_file(str(first))  # the same file: the same task
    second = write_task(csv.parent, {**TASK, "heldout_fraction": 0.3}, name="other.toml")
    with pytest.raises(ConfigError, match=r"key 'name': 'cohort' is already the name of task file .*task.toml"):
        resolve_task_file(str(second))
    first.write_text(toml_text({**TASK, "heldout_fraction": 0.3}))
    with pytest.raises(ConfigError, match=r"task.toml' changed since this command read it"):
        resolve_task_file(str(first))


def test_task_file_content_is_part_of_the_run_hash(cohort: tuple[Path, pd.DataFrame], registry,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark.orchestration.runner import build_config, run_dir_for

    csv, _ = cohort
    a = build_config("none", str(write_task(csv.parent)), "smoke", 0, "cpu")
    assert (a.task, a.name, a.task_file) == ("cohort", "none-cohort-s0", str(csv.parent / "task.toml"))
    assert a.split.heldout_fraction == 0.2 and a.split.heldout_keys == ("tissue_source_site",)
    assert a.data.manifest == str(csv) and a.data.source == "manifest"
    assert a.to_dict()["task_sha256"] == a.task_sha256 != ""
    assert run_dir_for(a, Path("r")).parent == Path("r/runs/cohort/none")
    # --set beats the file
    b = build_config("none", str(csv.parent / "task.toml"), "smoke", 0, "cpu", ["split.heldout_fraction=0.3"])
    assert b.split.heldout_fraction == 0.3 and b.digest("code") != a.digest("code")
    # another file giving the same name and the same settings but other content (a group column): another run
    monkeypatch.setattr(TASKS, "_entries", {k: v for k, v in TASKS._entries.items() if k != "cohort"})
    monkeypatch.setattr(task_file, "_registered", {})
    other = write_task(csv.parent, {**TASK, "group_columns": ["tissue_source_site"]}, name="other.toml")
    c = build_config("none", str(other), "smoke", 0, "cpu")
    assert (c.task, c.split, c.data) == (a.task, a.split, a.data)
    assert c.task_sha256 != a.task_sha256 and c.digest("code") != a.digest("code")
    # a registered task's config is as before: no file
    assert build_config("none", "nsclc", "smoke", 0, "cpu").task_file == ""
    assert build_config("none", "nsclc", "smoke", 0, "cpu").manifest_sha256 == ""


def test_manifest_content_is_part_of_the_run_hash(cohort: tuple[Path, pd.DataFrame], registry) -> None:
    """A manifest edited in place (one label corrected) is another cohort: another run, never the old record."""
    import hashlib

    from benchmark.orchestration.runner import build_config

    csv, table = cohort
    task = str(write_task(csv.parent))
    a = build_config("none", task, "smoke", 0, "cpu")
    assert a.manifest_sha256 == hashlib.sha256(csv.read_bytes()).hexdigest()
    rewrite(csv, table.assign(label=table["label"].where(table.index != 3, "tumor")))
    b = build_config("none", task, "smoke", 0, "cpu")
    assert b.manifest_sha256 not in ("", a.manifest_sha256) and b.digest("code") != a.digest("code")
    assert (b.data, b.split) == (a.data, a.split)  # nothing else differs


def test_task_file_task_splits_by_its_columns(cohort: tuple[Path, pd.DataFrame], registry) -> None:
    csv, _ = cohort
    from benchmark.orchestration.runner import build_config

    cfg = build_config("none", str(write_task(csv.parent)), "smoke", 0, "cpu")
    task = registry.get(cfg.task)(cfg.data, cfg.split)
    assert task.classes == CLASSES and task.group_columns == ("cancer_type", "tissue_source_site", "scanner")
    splits = task.splits(0)
    assert sum(len(s) for s in splits.values()) == 80
    train = splits["train"].metadata
    assert "scanner" in train.columns and train["group"].str.count(r"\|").eq(2).all()
    unseen = set(splits["test_unseen"].metadata["tissue_source_site"])
    assert unseen and not unseen & set(train["tissue_source_site"])  # hospitals held out whole


@pytest.mark.parametrize("case", ["class", "group column", "heldout key", "no manifest"])
def test_task_file_against_its_manifest(cohort: tuple[Path, pd.DataFrame], registry, case: str) -> None:
    csv, _ = cohort
    from benchmark.orchestration.runner import build_config

    values, message = {
        "class": ({**TASK, "classes": ["normal", "tumour"]},
                  r"task file '.*task.toml' \(key 'classes'\): class 'tumour' has no images in manifest "
                  r"'.*cohort.csv' \(labels there: \['normal', 'tumor'\]\)"),
        "group column": ({**TASK, "group_columns": ["scanner_model"]},
                         r"task file '.*task.toml', key 'group_columns': column 'scanner_model' is not in manifest "
                         r"'.*cohort.csv' \(its columns: \['path', 'label', 'tissue_source_site', 'patient_id'"),
        "heldout key": ({**TASK, "heldout_keys": ["gender"]},
                        r"task file '.*task.toml', key 'heldout_keys': column 'gender' is not in manifest"),
        "no manifest": ({k: v for k, v in TASK.items() if k != "manifest"},
                        r"task file '.*task.toml' names no manifest: add manifest = \"cohort.csv\" .* or pass "
                        r"--set data.manifest=FILE"),
    }[case]
    cfg = build_config("none", str(write_task(csv.parent, values)), "smoke", 0, "cpu")
    with pytest.raises(DataError, match=message):
        registry.get(cfg.task)(cfg.data, cfg.split).splits(0)


def test_registered_task_on_a_manifest(tmp_path: Path, crops: list[np.ndarray], registry) -> None:  # noqa: F811
    csv, _ = write_cohort(tmp_path, crops, hospitals=4, patients=3, images=1, labels=("LUAD", "LUSC"))
    preset = PRESETS["smoke"]
    data = replace(preset.data, manifest=str(csv))
    splits = registry.get("nsclc")(data, preset.split).splits(0)
    assert sum(len(s) for s in splits.values()) == 24 and splits["train"].info["data_source"] == "manifest"
    pd.read_csv(csv).drop(columns="race").to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"split.heldout_keys: column 'race' is not in manifest"):
        registry.get("nsclc")(data, preset.split).splits(0)


def test_sweep_and_tune_take_a_task_file(cohort: tuple[Path, pd.DataFrame], registry, tmp_path: Path) -> None:
    from benchmark.cli.common import parse_tasks
    from benchmark.orchestration.tune import prepare

    csv, _ = cohort
    task = str(write_task(csv.parent))
    # --tasks: names and files, a file kept as given (a sweep's worker processes read it again), one entry per task
    assert parse_tasks(f"nsclc, {task},{task}") == ["nsclc", task]
    with pytest.raises(ConfigError, match=r"--tasks: unknown 'lungs'"):
        parse_tasks(f"{task},lungs")
    # tune: the study is named after the task and tied to the file's content; its commands repeat the path
    setup = prepare("none", task, preset="smoke", device="cpu", out=tmp_path)
    assert setup.study_name == "none-cohort-smoke" and setup.base.task == "cohort"
    assert setup.signature()["task"] == "cohort" and setup.signature()["task_sha256"] == setup.base.task_sha256
    assert f"--task {task}" in setup.command()


# --- the command line -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_task_file_runs_end_to_end_from_the_cli(cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    csv, _ = cohort
    task = write_task(csv.parent)
    out = tmp_path / "results"
    proc = run_cli("run", "--method", "none", "--task", str(task), "--preset", "smoke", "--out", str(out),
                   "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "none-cohort-s0  (preset smoke" in proc.stdout
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["task"] == "cohort" and record["classes"] == list(CLASSES)
    assert record["config"]["task_file"] == str(task) and len(record["config"]["task_sha256"]) == 64
    assert record["config"]["data"]["manifest"] == str(csv)
    assert record["config"]["split"]["heldout_fraction"] == 0.2
    assert record["data"]["data_source"] == "manifest" and record["data"]["load_report"]["n_images"] == 80
    assert Path(record["run_dir"]).parent == out / "runs" / "cohort" / "none"
    groups = [g["group"] for split in record["groups"].values() for g in split]
    assert groups and all(g.split("|")[0] in CLASSES and g.split("|")[2] in ("scanA", "scanB") for g in groups)
    assert record["metrics"]["test_unseen/n"] > 0


def test_medi_conditions_on_a_manifest_column(cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    """A column of the cohort's own (``scanner``) as a conditioning attribute: the model learns its values, the plan
    fills the class x hospital x scanner cells the training set lacks, and the synthetic patches carry the column. A
    column the cohort does not have is one line naming it and the columns there are."""
    csv, table = cohort
    # hospitals 0 and 1 scan normal tissue on scanA and tumour on scanB: (normal, h, scanB) and (tumor, h, scanA)
    # are missing, and only a scanner-aware plan asks for them (one hospital of five is held out, so one stays)
    scanner = np.where(table["tissue_source_site"].isin(["hospital_0", "hospital_1"]),
                       np.where(table["label"] == "normal", "scanA", "scanB"), table["scanner"])
    rewrite(csv, table.assign(scanner=scanner))
    task = write_task(csv.parent, {**TASK, "group_columns": ["tissue_source_site"]})
    out = tmp_path / "results"
    args = ["run", "--method", "medi", "--task", str(task), "--preset", "smoke", "--out", str(out), "--no-progress"]
    proc = run_cli(*args, "--set", "method.attributes=tissue_source_site,scaner", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert ("method.attributes names ['scaner'], which task 'cohort' does not have; its metadata columns: "
            in proc.stderr.strip().splitlines()[-1]) and "'scanner'" in proc.stderr
    proc = run_cli(*args, "--set", "method.attributes=tissue_source_site,scanner", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["config"]["method_params"]["attributes"] == ["tissue_source_site", "scanner"]
    plan = pd.DataFrame(record["method_report"]["plan"])
    assert set(plan.columns) == {"label", "cancer_type", "tissue_source_site", "scanner", "n"}
    cells = set(zip(plan["cancer_type"], plan["tissue_source_site"], plan["scanner"], strict=True))
    assert cells and cells <= {(c, h, s) for h in ("hospital_0", "hospital_1")
                               for c, s in (("normal", "scanB"), ("tumor", "scanA"))}
    assert record["metrics"]["train/n_synthetic"] == plan["n"].sum() > 0


@pytest.mark.slow
def test_bad_input_from_the_cli_is_one_line_and_an_exit_code(cohort: tuple[Path, pd.DataFrame],
                                                             tmp_path: Path) -> None:
    csv, table = cohort
    task = write_task(csv.parent, {**TASK, "clases": ["normal", "tumor"]})
    args = ["run", "--method", "none", "--task", str(task), "--preset", "smoke", "--out", str(tmp_path / "r")]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: task file '{task}': unknown key 'clases' (did you mean 'classes'?); valid keys: name, classes, "
        "heldout_keys, group_columns, description, manifest, heldout_fraction, val_fraction, test_seen_fraction, guard"
    )
    write_task(csv.parent)
    rewrite(csv, table.assign(label=table["label"].where(table.index != 3, "tumour")))
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: manifest '{csv}' line 5: unknown label 'tumour'" in proc.stderr


def test_a_worker_process_gets_a_task_file_task_from_the_config(cohort: tuple[Path, pd.DataFrame], registry,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher hands configs, not command lines, to its workers: ensure_task reads the file again there."""
    from benchmark.core.registry import RegistryError
    from benchmark.orchestration.runner import build_config
    from benchmark.plugins import ensure_task

    csv, _ = cohort
    cfg = build_config("none", str(write_task(csv.parent)), "smoke", 0, "cpu")
    ensure_task(cfg)  # known here: nothing to do
    monkeypatch.setattr(TASKS, "_entries", {k: v for k, v in TASKS._entries.items() if k != "cohort"})
    monkeypatch.setattr(task_file, "_registered", {})  # as in a fresh process
    ensure_task(cfg)
    assert TASKS.get("cohort").source_sha256 == cfg.task_sha256
    ensure_task(build_config("none", "nsclc", "smoke", 0, "cpu"))  # a registered task: nothing to do
    monkeypatch.setattr(TASKS, "_entries", {k: v for k, v in TASKS._entries.items() if k != "cohort"})
    monkeypatch.setattr(task_file, "_registered", {})
    write_task(csv.parent, {**TASK, "heldout_fraction": 0.3})
    with pytest.raises(RegistryError, match=r"task file '.*task.toml' changed since run none-cohort-s0 was planned"):
        ensure_task(cfg)
