"""Presets and the run configuration: typed dataclasses, every field declared once with its default.

A run is ``RunConfig``: which method on which task, the preset it started from, the seed, and four sections
(``data``, ``split``, ``probe`` and the method's own ``method`` parameters). ``--set section.field=value`` overrides
any field; the value is parsed with the field's declared type, and an unknown key is an error naming the valid keys.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from benchmark.core.registry import TASKS, closest, did_you_mean


class ConfigError(ValueError):
    """A bad preset, override key or value; the message names it and the valid choices."""


# ---------------------------------------------------------------------------------------------------------------
# search ranges, declared with the field they belong to (used by `python -m benchmark tune`)


@dataclass(frozen=True)
class Search:
    """The range ``tune`` searches for one field: a float or int interval (optionally log-scaled) or choices.

    ``requires`` names a sibling field (the full ``--set`` key once :func:`search_space` has seen it): the field is
    searched only when that one is non-zero in the trial's config.
    """

    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    requires: str | None = None

    def suggest(self, trial: Any, key: str) -> Any:
        """A value for ``key`` from an optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(key, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            text = "{" + ", ".join(map(str, self.choices)) + "}"
        else:
            text = f"{self.kind} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")
        return text + (f" if {self.requires} > 0" if self.requires else "")


def tunable(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    log: bool = False,
    choices: tuple | list | None = None,
    requires: str | None = None,
) -> Any:
    """A dataclass field with its default and its search range: ``C: float = tunable(1.0, low=1e-3, high=1e2,
    log=True)``. An int default with int bounds is an int range; ``choices`` makes it categorical."""
    if choices is not None:
        choices = tuple(choices)
        if default not in choices:
            raise ValueError(f"tunable: default {default!r} is not one of the choices {choices}")
        search = Search("categorical", choices=choices, requires=requires)
    else:
        if low is None or high is None or not low < high:
            raise ValueError(f"tunable: expected low < high, got low={low!r}, high={high!r}")
        if log and low <= 0:
            raise ValueError(f"tunable: a log range needs low > 0, got {low!r}")
        is_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (default, low, high))
        search = Search("int" if is_int else "float", low, high, log, requires=requires)
    return field(default=default, metadata={"search": search})


@dataclass(frozen=True)
class DataConfig:
    """Where patches come from. Embedded generator by default; TCGA-UT when ``root`` and ``metadata`` are set; a
    cohort of your own when ``manifest`` is set."""

    root: str = ""  # TCGA-UT root folder (<root>/<CancerTypeName>/<slide>/*.jpg); empty = embedded generator
    metadata: str = ""  # GDC clinical CSV for TCGA-UT
    manifest: str = ""  # CSV of your own cohort: path, label, tissue_source_site[, patient_id, race, ...] per image
    image_size: int = 32  # patches are rendered / resized to image_size x image_size
    on_error: str = "fail"  # TCGA-UT / manifest corrupt files: "fail" or "skip" (skipped ones counted in the record)
    max_patches_per_slide: int = 0  # TCGA-UT / manifest: keep at most this many patches per slide (0 = all)
    # TCGA-UT / manifest: read the decoded cohort into this process's memory instead of mapping its cache file (each
    # process then holds its own copy and subsets are copies; the path before the mapped cache, kept as the scale
    # benchmark's reference and for a cache on a slow network disk)
    in_memory: bool = False
    # embedded generator (tasks/embedded.py)
    sites_per_class: int = 12  # a task with K classes gets K x sites_per_class sites
    patients_per_class: int = 160  # patients of each cancer type in the generated cohort
    patches_per_patient: int = 8  # patches rendered per patient
    shortcut_strength: float = 0.9  # 0: site independent of class; 1: single-type sites (except mixed ones)
    mixed_site_fraction: float = 0.2  # share of sites that send all cancer types, whatever the strength
    site_size_exponent: float = 1.1  # Zipf exponent of patients per site (0: equal sizes)
    ambiguous_fraction: float = 0.3  # patches without tumour morphology (their class shows only through the site)
    # the embedded generator's base world: replicate r draws its cohort (sites, their sizes and styles, patients,
    # patches) from world generator_seed + the cohort seed (``seeds.cohort``, which follows --seed)
    generator_seed: int = 0

    @property
    def source(self) -> str:
        if self.manifest:
            return "manifest"
        return "tcga-ut" if self.root else "embedded"


@dataclass(frozen=True)
class SplitConfig:
    """How patients are divided into train / val / test_seen / test_unseen (always by patient)."""

    heldout_fraction: float = 0.3  # share of unique keys per class held out as test_unseen
    heldout_keys: tuple[str, ...] = ("tissue_source_site", "race")  # add "gender" for the authors' full key
    guard: str = "key"  # "key": no key on both sides; "site": also no site on both sides (authors' code)
    val_fraction: float = 0.15  # share of the seen patients held out for validation
    test_seen_fraction: float = 0.2  # share of the seen patients held out as test_seen


SEED_SOURCES: tuple[str, ...] = ("cohort", "split", "model", "sampling", "probe")
FOLLOW = -1  # a seed source set to this follows the replicate seed


@dataclass(frozen=True)
class SeedConfig:
    """The sources of randomness of one replicate. Each follows the replicate seed (``--seed``, the sweep's seeds)
    unless pinned to a value >= 0: ``--set seeds.cohort=0 seeds.split=0 seeds.model=0`` is the paper's protocol
    (one cohort, one split, one trained model, replicates over sampling and the probe only); ``--set seeds.cohort=0``
    re-splits one generated cohort, as a fixed cohort (TCGA-UT, a manifest) always does."""

    # the population the replicate's patients come from: on the embedded generator each cohort seed is a fresh cohort
    # (its test patients never repeat across replicates); a fixed cohort (TCGA-UT, a manifest) has only one
    cohort: int = FOLLOW
    split: int = FOLLOW  # which patients and held-out combinations land in train / val / test_seen / test_unseen
    model: int = FOLLOW  # the generative model's training: initial weights, batches, noise
    sampling: int = FOLLOW  # the generation plan, the sampler's noise, the rows drawn for FID
    probe: int = FOLLOW  # the linear probe's solver


@dataclass(frozen=True)
class ProbeConfig:
    """The downstream evaluation, identical for every method: frozen encoder + linear probe."""

    encoder: str = "fbank"  # a name from `python -m benchmark list` (fbank, uni, timm:<model>)
    encoder_weights: str = ""  # local weights file for uni / timm encoders (or $MEDIBENCH_UNI_WEIGHTS for uni)
    batch_size: int = 256  # patches per encoder call when embedding
    C: float = tunable(1.0, low=1e-3, high=1e2, log=True)  # inverse L2 regularization of the logistic regression
    max_iter: int = 2000  # solver iterations of the logistic regression
    standardize: bool = True  # z-score embeddings (fitted on the training set) before the probe
    min_group_size: int = 10  # groups with fewer patches are reported and flagged, and left out of worst-group acc
    min_group_patients: int = 2  # groups with fewer patients likewise: one patient's patches are one observation
    min_shortcut_patients: int = 5  # the shortcut gap is undefined when its aligned or misaligned set has fewer
    bootstrap: int = 1000  # resamples of patients for each run's 95% intervals (0: none)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    data: DataConfig
    split: SplitConfig = SplitConfig()
    probe: ProbeConfig = ProbeConfig()


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "smoke",
            "seconds: tiny data and models; what CI and the ordinary tests run",
            DataConfig(image_size=32, sites_per_class=6, patients_per_class=36, patches_per_patient=4),
            probe=ProbeConfig(min_group_size=4),
        ),
        # 320 patients per class (not 160): with 160 the test_unseen groups held 2-5 patients and the worst-20%
        # groups accuracy was too noisy to detect the oracle (true patches of the missing combinations) at 5
        # replicates; with 320 its paired SD halved (unfrozen pilots; at 320 and 10 replicates:
        # results/2026-12-04_controls)
        Preset(
            "cpu",
            "default without a GPU: 32 px, ~1 M-parameter models; a diffusion model in ~5 min on 2 cores",
            DataConfig(image_size=32, patients_per_class=320),
        ),
        Preset(
            "gpu",
            "default with a GPU: 64 px, mid-size models, about an hour per generative model",
            DataConfig(image_size=64, sites_per_class=20, patients_per_class=300, patches_per_patient=16),
        ),
        Preset(
            "paper",
            "the authors' scale: 128 px, 6-level UNet, 800K steps; days on a GPU",
            DataConfig(image_size=128, sites_per_class=30, patients_per_class=600, patches_per_patient=32),
        ),
    )
}


def default_preset(device: str) -> str:
    """``cpu`` without a GPU, ``gpu`` with one."""
    return "cpu" if device == "cpu" else "gpu"


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results (the run directory is a hash of it and the code version)."""

    method: str
    task: str
    preset: str
    seed: int = 0
    device: str = "cpu"  # resolved device (never "auto" here)
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    probe: ProbeConfig = ProbeConfig()
    method_params: Any = None  # the method's own Params dataclass, resolved for the preset
    seeds: SeedConfig = SeedConfig()
    # a task defined by a file (``--task path/to/task.toml``): its path and the SHA-256 of its content, so that two
    # files with the same task name never share a run (both are part of the run hash); empty for registered tasks
    task_file: str = ""
    task_sha256: str = ""
    # a cohort from a manifest: the SHA-256 of the CSV, so an edited manifest (labels, sites, patients) never reuses
    # the runs of its earlier content; the image files it lists are not hashed
    manifest_sha256: str = ""

    @property
    def name(self) -> str:
        return f"{self.method}-{self.task}-s{self.seed}"

    def seed_for(self, source: str) -> int:
        """The seed of one source of randomness (``cohort``, ``split``, ``model``, ``sampling``, ``probe``): pinned,
        or the replicate seed."""
        pinned = getattr(self.seeds, source)
        return self.seed if pinned == FOLLOW else pinned

    def independent_cohorts(self) -> bool:
        """Whether replicates draw their own cohort (embedded generator, cohort seed following ``seed``); otherwise
        every replicate re-splits one population and its test sets overlap."""
        return self.data.source == "embedded" and self.seeds.cohort == FOLLOW

    def task_data(self) -> DataConfig:
        """The data config the task draws its patches with: on the embedded generator, the world of this replicate's
        cohort (``data.generator_seed`` + the cohort seed); a fixed cohort's config as it is."""
        if self.data.source != "embedded":
            return self.data
        return replace(self.data, generator_seed=self.data.generator_seed + self.seed_for("cohort"))

    def replicate(self) -> dict[str, Any]:
        """What this run's replicate seed varies: every source's seed, which of them follow ``seed``, and the
        population the replicate speaks for."""
        varied = [s for s in SEED_SOURCES if getattr(self.seeds, s) == FOLLOW]
        if self.data.source != "embedded":
            varied = [s for s in varied if s != "cohort"]  # a fixed cohort has one population, whatever the seed
        return {
            "seed": self.seed,
            "seeds": {s: self.seed_for(s) for s in SEED_SOURCES},
            "varied": varied,
            "population": ("independent cohorts" if self.independent_cohorts() else "one cohort, re-split"),
            "cohort_world": self.task_data().generator_seed if self.data.source == "embedded" else None,
        }

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method_params"}
        d = {k: (dataclasses.asdict(v) if is_dataclass(v) else v) for k, v in d.items()}
        d["method_params"] = dataclasses.asdict(self.method_params) if self.method_params is not None else {}
        return json.loads(json.dumps(d, default=list))

    def flat(self) -> dict[str, Any]:
        """``{"data.image_size": 32, "method.lr": 1e-4, ...}``: the resolved config as MLflow params."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            section = "method" if key == "method_params" else key
            if isinstance(value, dict):
                out.update({f"{section}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def digest(self, code_version: str) -> str:
        """Content address of the run: hash of the resolved config and the code version."""
        payload = json.dumps({"config": self.to_dict(), "code": code_version}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
# --set key=value


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_value(text: str, annotation: Any, key: str) -> Any:
    """Parse ``text`` as the declared type of field ``key``."""
    if isinstance(annotation, str):  # from __future__ annotations: resolve the simple names used here
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        low = text.strip().lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
        spellings = ", ".join(f"{t}/{f}" for t, f in zip(TRUE_WORDS, FALSE_WORDS, strict=True))
        raise ConfigError(f"--set {key}={text}: expected a bool, one of {spellings}")
    try:
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
        if annotation is str:
            return text
        if origin is tuple or (isinstance(annotation, str) and annotation.startswith("tuple")):
            items = [t.strip() for t in text.split(",") if t.strip()]
            inner = typing.get_args(annotation)
            if inner and inner[0] in (int, float):
                return tuple(inner[0](t) for t in items)
            return tuple(items)
    except ValueError:
        raise ConfigError(f"--set {key}={text}: expected {getattr(annotation, '__name__', annotation)}") from None
    raise ConfigError(f"--set {key}: fields of type {annotation} cannot be set from the command line")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["data.image_size=64", "seed=1"]`` -> dict; a malformed item is a ConfigError naming it."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. data.image_size=64")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(obj: Any, overrides: dict[str, str], prefix: str) -> Any:
    """A copy of dataclass ``obj`` with ``prefix.field=value`` overrides applied (typed)."""
    types = _field_types(type(obj))
    changes = {}
    for key, text in overrides.items():
        name = key[len(prefix) + 1 :]
        if name not in types:
            close = closest(name, types)  # the field name alone: every key shares the prefix
            hint = f" (did you mean '{prefix}.{close}'?)" if close else ""
            raise ConfigError(f"unknown --set key {key!r}{hint}; valid keys in {prefix}: "
                              f"{', '.join(f'{prefix}.{n}' for n in types)}")
        changes[name] = parse_value(text, types[name], key)
    return replace(obj, **changes) if changes else obj


SECTIONS = ("data", "split", "probe", "seeds", "method")
TOP_LEVEL = ("seed",)


def split_overrides(overrides: dict[str, str]) -> dict[str, dict[str, str]]:
    """Group overrides by section; an unknown section is a ConfigError listing the valid ones."""
    grouped: dict[str, dict[str, str]] = {s: {} for s in (*SECTIONS, "")}
    for key, value in overrides.items():
        section = key.split(".", 1)[0] if "." in key else ""
        if section not in grouped or (section == "" and key not in TOP_LEVEL):
            valid = ", ".join([*TOP_LEVEL, *(f"{s}.<field>" for s in SECTIONS)])
            if section:  # a mistyped section: suggest the same field in the closest one
                close = closest(section, SECTIONS)
                hint = f" (did you mean '{close}.{key.split('.', 1)[1]}'?)" if close else ""
            else:
                hint = did_you_mean(key, TOP_LEVEL)
            raise ConfigError(f"unknown --set key {key!r}{hint}; valid keys: {valid} (see `python -m benchmark list "
                              f"--keys`)")
        grouped[section][key] = value
    return grouped


def resolve(
    method: str,
    task: str,
    preset: str,
    seed: int,
    device: str,
    overrides: dict[str, str] | None = None,
    method_params: Any = None,
) -> RunConfig:
    """Preset + task defaults + overrides -> a complete RunConfig. ``method_params`` is the method's Params for the
    preset. ``task`` may be a task file's path (then the config names the task by its name, and records the file and
    its content hash); a task file's settings (``Task.config_defaults``: split fractions, manifest) come before the
    overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}{did_you_mean(preset, PRESETS)}; choose from: "
                          f"{', '.join(PRESETS)}")
    p = PRESETS[preset]
    task = TASKS.canonical(task)  # a task file is read (and registered) here
    task_cls = TASKS.get(task) if task in TASKS else None
    defaults = dict(getattr(task_cls, "config_defaults", None) or {})
    grouped = split_overrides(overrides or {})
    if "seed" in grouped[""]:
        seed = parse_value(grouped[""]["seed"], int, "seed")
    data = apply_overrides(_with_defaults(p.data, defaults, "data"), grouped["data"], "data")
    split = apply_overrides(_with_defaults(p.split, defaults, "split"), grouped["split"], "split")
    probe = apply_overrides(p.probe, grouped["probe"], "probe")
    seeds = apply_overrides(SeedConfig(), grouped["seeds"], "seeds")
    if grouped["method"]:
        if method_params is None:
            raise ConfigError(f"method {method!r} has no parameters; got {sorted(grouped['method'])}")
        method_params = apply_overrides(method_params, grouped["method"], "method")
    _validate(data, split, probe, seeds)
    if seed < 0:
        raise ConfigError(f"seed={seed} is invalid: expected >= 0")
    return RunConfig(method, task, preset, seed, device, data, split, probe, method_params, seeds,
                     getattr(task_cls, "source_file", ""), getattr(task_cls, "source_sha256", ""),
                     file_sha256(data.manifest))


def file_sha256(path: str) -> str:
    """SHA-256 of a file's content; "" for no path or a path that is not a readable file (its loader says why)."""
    if not path:
        return ""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _with_defaults(obj: Any, defaults: dict[str, Any], prefix: str) -> Any:
    """``obj`` with a task's typed defaults for its section (``{"split.heldout_fraction": 0.4, ...}``) applied."""
    changes = {key.split(".", 1)[1]: value for key, value in defaults.items() if key.split(".", 1)[0] == prefix}
    unknown = [name for name in changes if name not in {f.name for f in fields(obj)}]
    if unknown:
        raise ConfigError(f"task defaults name unknown {prefix} fields {unknown}")
    return replace(obj, **changes) if changes else obj


def split_checks(split: SplitConfig) -> list[tuple[bool, str, Any, str]]:
    """(ok, key, value, what is expected) for every constraint on a SplitConfig (also used by task files)."""
    return [
        (0.0 < split.heldout_fraction < 1.0, "split.heldout_fraction", split.heldout_fraction, "in (0, 1)"),
        (split.guard in ("key", "site"), "split.guard", split.guard, "'key' or 'site'"),
        (0.0 < split.val_fraction < 0.5, "split.val_fraction", split.val_fraction, "in (0, 0.5)"),
        (0.0 < split.test_seen_fraction < 0.5, "split.test_seen_fraction", split.test_seen_fraction, "in (0, 0.5)"),
        (len(split.heldout_keys) > 0, "split.heldout_keys", split.heldout_keys, "at least one metadata column"),
    ]


def _validate(data: DataConfig, split: SplitConfig, probe: ProbeConfig, seeds: SeedConfig) -> None:
    checks = [
        *((getattr(seeds, s) >= FOLLOW, f"seeds.{s}", getattr(seeds, s), f"a seed >= 0, or {FOLLOW} to follow --seed")
          for s in SEED_SOURCES),
        (data.image_size in (32, 64, 128, 256), "data.image_size", data.image_size, "one of 32, 64, 128, 256"),
        (data.on_error in ("fail", "skip"), "data.on_error", data.on_error, "'fail' or 'skip'"),
        (not (data.manifest and data.root), "data.manifest", data.manifest,
         "not set together with data.root (a cohort comes from a manifest or from a TCGA-UT folder)"),
        (0.0 <= data.shortcut_strength <= 1.0, "data.shortcut_strength", data.shortcut_strength, "in [0, 1]"),
        *split_checks(split),
        (probe.C > 0, "probe.C", probe.C, "> 0"),
        (probe.min_group_size >= 1, "probe.min_group_size", probe.min_group_size, ">= 1"),
        (probe.min_group_patients >= 1, "probe.min_group_patients", probe.min_group_patients, ">= 1"),
        (probe.min_shortcut_patients >= 1, "probe.min_shortcut_patients", probe.min_shortcut_patients, ">= 1"),
        (probe.bootstrap == 0 or probe.bootstrap >= 100, "probe.bootstrap", probe.bootstrap, "0 or >= 100"),
    ]
    if bool(data.root) != bool(data.metadata):  # the one pair: say which half is missing and what it is
        given, missing = ("data.root", "data.metadata") if data.root else ("data.metadata", "data.root")
        raise ConfigError(f"{given} is set but {missing} is not: a TCGA-UT cohort needs both, the patch folder "
                          "(data.root) and the GDC clinical CSV (data.metadata), e.g. --set data.root=/data/TCGA-UT "
                          "data.metadata=/data/clinical.csv")
    for ok, key, value, expected in checks:
        if not ok:
            raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


@dataclass(frozen=True)
class FieldDoc:
    """One ``--set`` key as `list --keys` shows it."""

    key: str  # "data.image_size"
    type: str  # "int", "tuple[str, ...]"
    value: Any  # the value in the object described (a preset's), or the declared default
    help: str  # one line: the field's trailing comment, or the comment block right above it; "" if none
    heading: str  # the comment heading of the group of fields it belongs to (e.g. "training"); "" if none
    search: str  # the range `tune` searches (tunable fields), e.g. "float [0.0001, 0.002] log"; "" if not tuned


def describe_fields(obj: Any, prefix: str) -> list[FieldDoc]:
    """Every field of a config dataclass (or of one of its instances, whose values are then shown), in declaration
    order, with its description read from the comments of the class's source (:func:`field_comments`)."""
    cls = obj if isinstance(obj, type) else type(obj)
    types = _field_types(cls)
    comments = field_comments(cls)
    out = []
    for f in fields(cls):
        if isinstance(obj, type):
            value = f.default if f.default is not dataclasses.MISSING else None
        else:
            value = getattr(obj, f.name)
        t = types[f.name]
        tname = str(t) if typing.get_origin(t) is not None else getattr(t, "__name__", str(t))
        help_text, heading = comments.get(f.name, ("", ""))
        search = f.metadata.get("search")
        searched = search.describe() if search else ""
        out.append(FieldDoc(f"{prefix}.{f.name}", tname, value, help_text, heading, searched))
    return out


@functools.cache
def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """``{field: (description, heading)}`` from the comments in the source of dataclass ``cls``.

    A field's description is its trailing comment (``lr: float = 1e-4  # the learning rate``); a field without one
    takes the comment block right above it when that block has two or more lines (its first sentence). A one-line
    comment block (``# training``), or one above a field that has its own trailing comment, heads the fields below it.
    Classes without source (built at run time) have no descriptions.
    """
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, alone on its line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            alone = not tok.line[: tok.start[1]].strip()
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), alone)
    body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
    out: dict[str, tuple[str, str]] = {}
    heading = ""
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        block, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            block.insert(0, comments[line][0])
            line -= 1
        lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        text = " ".join(comments[n][0] for n in lines if n in comments and not comments[n][1])
        if block:
            if not text and len(block) > 1:
                text = _first_sentence(" ".join(block))
            else:
                heading = _heading(block[0])
        out[node.target.id] = (text, heading)
    return out


def _first_sentence(text: str, limit: int = 110) -> str:
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".")
    return first if len(first) <= limit else first[: first.rfind(" ", 0, limit)] + " ..."


def _heading(line: str) -> str:
    """The first line of a heading comment, without a parenthesis it does not close."""
    depth, opened = 0, -1
    for i, ch in enumerate(line):
        if ch == "(":
            opened = i if depth == 0 else opened
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
    return (line[:opened] if depth > 0 else line).strip().rstrip(",;:")


def search_space(cfg: RunConfig) -> dict[str, Search]:
    """Every field of ``cfg`` declared with :func:`tunable`, keyed by its ``--set`` key (``probe.C``,
    ``method.lr``, ...), in declaration order. A field whose ``requires`` sibling is zero in ``cfg`` and not itself
    searched is left out (e.g. ``method.guidance_scale`` without ``method.class_dropout`` > 0)."""
    sections = (("data", cfg.data), ("split", cfg.split), ("probe", cfg.probe), ("seeds", cfg.seeds),
                ("method", cfg.method_params))
    space: dict[str, Search] = {}
    for prefix, obj in sections:
        if obj is None:
            continue
        for f in fields(obj):
            search = f.metadata.get("search")
            if search is None:
                continue
            if search.requires is not None:
                required = f"{prefix}.{search.requires}"
                if required not in space and not getattr(obj, search.requires):
                    continue
                search = replace(search, requires=required)
            space[f"{prefix}.{f.name}"] = search
    return space
