"""Registry, presets and --set overrides."""

import pytest

from benchmark.core.config import PRESETS, ConfigError, DataConfig, parse_overrides, resolve
from benchmark.core.registry import METHODS, TASKS, Registry, RegistryError
from benchmark.plugins import load_plugins


def test_registry_rejects_duplicates_and_names_unknown_choices():
    reg = Registry("widget")
    reg.register("a", "first")(object)
    with pytest.raises(RegistryError, match="duplicate widget name 'a'"):
        reg.register("a", "again")(object)
    with pytest.raises(RegistryError, match="unknown widget 'b'; choose from: a"):
        reg.get("b")
    with pytest.raises(ValueError, match="lowercase"):
        reg.register("Bad", "x")


def test_plugins_register_the_suites_entries():
    load_plugins()
    assert "none" in METHODS
    assert {"nsclc", "uterine", "heldout"} <= set(TASKS.names())


def test_presets_are_complete_and_typed():
    assert list(PRESETS) == ["smoke", "cpu", "gpu", "paper"]
    for preset in PRESETS.values():
        assert isinstance(preset.data, DataConfig)
        assert preset.data.image_size in (32, 64, 128, 256)
    assert PRESETS["cpu"].data.image_size == 32


def test_overrides_are_typed():
    items = ["data.image_size=64", "probe.C=0.5", "probe.standardize=false", "seed=3",
             "split.heldout_keys=tissue_source_site,race,gender"]
    cfg = resolve("none", "nsclc", "smoke", 0, "cpu", parse_overrides(items))
    assert cfg.data.image_size == 64 and isinstance(cfg.data.image_size, int)
    assert cfg.probe.C == 0.5 and cfg.probe.standardize is False
    assert cfg.split.heldout_keys == ("tissue_source_site", "race", "gender")
    assert cfg.seed == 3


@pytest.mark.parametrize(
    "item, message",
    [
        ("data.bogus=1", "unknown --set key 'data.bogus'; valid keys in data: data.root"),
        ("nosuch.x=1", "unknown --set key 'nosuch.x'"),
        ("data.image_size=big", "--set data.image_size=big: expected int"),
        ("data.image_size=48", "data.image_size=48 is invalid: expected one of 32, 64, 128, 256"),
        ("probe.standardize=maybe", "expected a bool, one of 1/0, true/false, yes/no, on/off"),
        ("method.lr=1", "method 'none' has no parameters"),
        ("data.root=/x", "data.root is set but data.metadata is not: a TCGA-UT cohort needs both"),
        ("data.metadata=/x.csv", "data.metadata is set but data.root is not"),
    ],
)
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve("none", "nsclc", "smoke", 0, "cpu", parse_overrides([item]))


def test_malformed_set_item():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["data.image_size"])


def test_digest_depends_on_config_and_code_version():
    a = resolve("none", "nsclc", "smoke", 0, "cpu")
    b = resolve("none", "nsclc", "smoke", 1, "cpu")
    assert a.digest("1") == resolve("none", "nsclc", "smoke", 0, "cpu").digest("1")
    assert a.digest("1") != b.digest("1")
    assert a.digest("1") != a.digest("2")
    assert a.flat()["data.image_size"] == 32
