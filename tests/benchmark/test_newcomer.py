"""What a new user meets: `list --keys` shows a preset's real values and what every key means, a mistyped name
suggests the right one, and Ctrl-C / SIGTERM during training keeps the steps done and says where to resume."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass

import pytest

from benchmark.cli import interrupted_message
from benchmark.cli.listing import command as cmd_list
from benchmark.cli.listing import key_lines
from benchmark.core import interrupts
from benchmark.core.config import (
    PRESETS,
    ConfigError,
    SeedConfig,
    describe_fields,
    field_comments,
    parse_value,
    resolve,
)
from benchmark.core.registry import METHODS, Registry, RegistryError
from benchmark.plugins import load_plugins
from tests.conftest import ctrl_c_when, run_cli

# ---------------------------------------------------------------------------------------------------------------
# list --keys


def _key_line(lines: list[str], key: str, after: str | None = None) -> str:
    """The line of ``key`` (in the section whose title starts with ``after``, when given)."""
    start = next(i for i, line in enumerate(lines) if line.startswith(after)) if after else 0
    return next(line for line in lines[start:] if line.strip().startswith(key + " "))


def test_list_keys_shows_each_methods_real_value_not_the_dataclass_default():
    load_plugins()
    lines = key_lines("cpu")
    # cls and medi share DiffusionParams; the dataclass default of attributes is medi's, cls's real value is ()
    line = _key_line(lines, "method.attributes", after="method (cls, medi")
    assert "cls: ()" in line and "medi: ('tissue_source_site', 'race')" in line
    assert METHODS.get("cls").default_params("cpu").attributes == ()
    # a field the two share shows one value
    assert re.search(r"method\.cond_mode\s+str\s+'concat'\s", _key_line(lines, "method.cond_mode"))


def test_list_keys_follows_the_chosen_preset(capsys):
    load_plugins()
    smoke = PRESETS["smoke"]
    cmd_list(argparse.Namespace(keys=True, preset="smoke"))
    lines = capsys.readouterr().out.splitlines()
    assert any("value in preset smoke" in line for line in lines)
    assert re.search(rf"data\.sites_per_class\s+int\s+{smoke.data.sites_per_class}\s", _key_line(lines,
                                                                                                 "data.sites_per_class"))
    assert re.search(r"probe\.min_group_size\s+int\s+4\s", _key_line(lines, "probe.min_group_size"))
    steps = METHODS.get("medi").default_params("smoke").steps
    assert steps != METHODS.get("medi").default_params("cpu").steps
    assert re.search(rf"method\.steps\s+int\s+{steps}\s", _key_line(lines, "method.steps", "method (cls, medi"))
    with pytest.raises(ConfigError, match=r"unknown preset 'smok' \(did you mean 'smoke'\?\); choose from: smoke"):
        cmd_list(argparse.Namespace(keys=True, preset="smok"))


def test_every_core_key_and_the_seeds_section_have_a_description():
    load_plugins()
    lines = key_lines("cpu")
    assert any(line.startswith("seeds: ") and "-1: follow the replicate seed" in line for line in lines)
    preset = PRESETS["cpu"]
    for prefix, obj in (("data", preset.data), ("split", preset.split), ("probe", preset.probe),
                        ("seeds", SeedConfig())):
        for doc in describe_fields(obj, prefix):
            assert doc.help, f"{doc.key} has no description"
            line = _key_line(lines, doc.key)
            assert line.endswith(doc.help + (f" [tune: {doc.search}]" if doc.search else "")), line
            assert f" {doc.value!r} " in line, line
    assert _key_line(lines, "seed").split()[1:3] == ["int", "0"]
    probe_c = _key_line(lines, "probe.C")
    assert "inverse L2 regularization" in probe_c and "[tune: float [0.001, 100] log]" in probe_c


@dataclass(frozen=True)
class _Documented:
    """A config class whose comments say what its fields are."""

    # architecture (reference: 64 filters,
    # 9 blocks)
    width: int = 16  # channels of the first layer
    depth: int = 2
    # training
    lr: float = 1e-3
    # epsilon: the paper's objective. A longer explanation follows
    # over two lines
    objective: str = "eps#not-a-comment"
    ratio: tuple[int, ...] = (
        1,
        2,
    )  # the comment after a field spread over lines


def test_descriptions_come_from_the_class_source_comments():
    docs = field_comments(_Documented)
    assert docs["width"] == ("channels of the first layer", "architecture")
    assert docs["depth"] == ("", "architecture")
    assert docs["lr"] == ("", "training")  # a one-line block is a heading, not the field's description
    assert docs["objective"] == ("epsilon: the paper's objective", "training")  # first sentence of a block above
    assert docs["ratio"] == ("the comment after a field spread over lines", "training")


# ---------------------------------------------------------------------------------------------------------------
# did you mean


def test_a_mistyped_name_suggests_the_closest_one():
    reg: Registry = Registry("method")
    for name in ("medi", "cls", "none"):
        reg.register(name, "")(object)
    with pytest.raises(RegistryError, match=r"^unknown method 'medy' \(did you mean 'medi'\?\); choose from: cls, "):
        reg.get("medy")
    with pytest.raises(RegistryError, match=r"^unknown method 'zzz'; choose from: "):  # nothing close: no guess
        reg.get("zzz")
    with pytest.raises(ConfigError, match=r"unknown --set key 'data.imagesize' \(did you mean 'data.image_size'\?\)"):
        resolve("none", "nsclc", "smoke", 0, "cpu", {"data.imagesize": "64"})
    with pytest.raises(ConfigError, match=r"unknown --set key 'dta.image_size' \(did you mean 'data.image_size'\?\)"):
        resolve("none", "nsclc", "smoke", 0, "cpu", {"dta.image_size": "64"})
    with pytest.raises(ConfigError, match=r"unknown --set key 'sed' \(did you mean 'seed'\?\)"):
        resolve("none", "nsclc", "smoke", 0, "cpu", {"sed": "1"})
    with pytest.raises(ConfigError, match=r"unknown preset 'gpus' \(did you mean 'gpu'\?\)"):
        resolve("none", "nsclc", "gpus", 0, "cpu", {})


def test_a_bool_that_does_not_parse_says_which_spellings_work():
    assert parse_value("Yes", bool, "probe.standardize") is True and parse_value("off", bool, "x") is False
    with pytest.raises(ConfigError) as err:
        parse_value("ture", bool, "probe.standardize")
    assert str(err.value) == "--set probe.standardize=ture: expected a bool, one of 1/0, true/false, yes/no, on/off"


# ---------------------------------------------------------------------------------------------------------------
# an interrupted training keeps its steps


def test_the_interrupt_message_says_what_was_kept():
    kept = [interrupts.Kept("nsclc: training medi (fp32)", 17, 300, "/r/ckpt-00000017.pt", 0.0)]
    assert interrupted_message("run", kept) == (
        "interrupted: the generative model's training was checkpointed at step 17 of 300 (/r/ckpt-00000017.pt); "
        "run the same command again to resume from there; this run has no record yet")
    assert interrupted_message("run", []).startswith("interrupted: this run has no record yet; run the same command")
    sweep = interrupted_message("sweep", kept)
    assert sweep.startswith("interrupted: finished runs are kept; unfinished ones have no record and are redone")
    assert "step 17 of 300" in sweep
    assert interrupted_message("report", []) == "interrupted"


def test_ctrl_c_during_training_then_the_same_command_resumes(tmp_path):
    """A user's Ctrl-C (SIGINT to the process group) during a real smoke training, then the same command again."""
    out = tmp_path / "results"
    args = ["run", "--method", "cls", "--task", "nsclc", "--preset", "smoke", "--set", "method.steps=80",
            "method.checkpoint_every=5", "--no-progress", "--out", str(out)]
    proc, _, err = ctrl_c_when(args, lambda: list(out.glob("cache/models/diffusion/*/ckpt-*.pt")), tmp_path,
                               timeout=300, env={"OMP_NUM_THREADS": "1"}, poll=0.05)
    assert proc.returncode == 130, err
    found = re.search(r"^interrupted: the generative model's training was checkpointed at step (\d+) of 80 \((.+)\); "
                      r"run the same command again to resume from there; this run has no record yet$", err, re.M)
    assert found, err
    step, path = int(found.group(1)), found.group(2)
    assert 5 <= step < 80 and path.endswith(f"ckpt-{step:08d}.pt") and os.path.isfile(path)
    assert "Traceback" not in err and not (out / "results.jsonl").exists()

    again = run_cli(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"resuming from ckpt-{step:08d}.pt (step {step} of 80)" in again.stderr
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    assert not list(out.glob("cache/models/diffusion/*/ckpt-*.pt"))  # the final weights replaced the checkpoints

