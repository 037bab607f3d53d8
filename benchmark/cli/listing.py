"""``python -m benchmark list``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse


def key_lines(preset_name: str) -> list[str]:
    """Every ``--set`` key with its type, its value in preset ``preset_name`` and its description, by section; the
    method keys once per parameter class, with each method's value where the methods sharing the class differ."""
    from benchmark.core.config import FOLLOW, PRESETS, SeedConfig, describe_fields
    from benchmark.core.registry import METHODS

    preset = PRESETS[preset_name]
    # 1. the sections: (title, field docs, {key: [(method, value)]} for the method sections)
    sections: list[tuple[str, list, dict]] = [
        (f"{prefix}: {_first_sentence(type(obj).__doc__)}{note}", describe_fields(obj, prefix), {})
        for prefix, obj, note in (("data", preset.data, ""), ("split", preset.split, ""), ("probe", preset.probe, ""),
                                  ("seeds", SeedConfig(), f" ({FOLLOW}: follow the replicate seed)"))
    ]
    by_class: dict[type, list] = {}
    no_params = []
    for name in METHODS.names():
        params = METHODS.get(name).default_params(preset_name)
        if params is None:
            no_params.append(name)
        else:
            by_class.setdefault(type(params), []).append((name, params))
    for cls, members in by_class.items():
        per_method: dict[str, list] = {}
        for name, params in members:
            for doc in describe_fields(params, "method"):
                per_method.setdefault(doc.key, []).append((name, doc.value))
        names = ", ".join(name for name, _ in members)
        sections.append((f"method ({names}): {_first_sentence(cls.__doc__)}", describe_fields(members[0][1], "method"),
                         per_method))
    # 2. one line per key
    width = max(len(d.key) for _, docs, _ in sections for d in docs)
    others = "|".join(p for p in PRESETS if p != preset_name)
    lines = [f"--set keys: type, value in preset {preset_name} (`list --keys --preset {others}` for another), "
             "description",
             f"  {'seed':<{width}}  {'int':<16} {'0':<14} the replicate seed (`run --seed`): the seeds.* that are "
             f"{FOLLOW} follow it"]
    for title, docs, per_method in sections:
        lines.append(title)
        heading = ""
        for doc in docs:
            if doc.heading and doc.heading != heading:
                lines.append(f"  # {doc.heading}")
                heading = doc.heading
            method_values = per_method.get(doc.key, [])
            if len({repr(v) for _, v in method_values}) > 1:
                value = "; ".join(f"{m}: {v!r}" for m, v in method_values)
            else:
                value = repr(doc.value)
            text = doc.help + (f" [tune: {doc.search}]" if doc.search else "")
            lines.append(f"  {doc.key:<{width}}  {doc.type:<16} {value:<14} {text}".rstrip())
    if no_params:
        lines.append(f"method ({', '.join(no_params)}): no parameters")
    return lines


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").replace("``", "").split())
    return text.split(". ", 1)[0].rstrip(".")


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``list`` subcommand's arguments."""
    lst = sub.add_parser(
        "list",
        help="list methods, tasks, encoders and presets",
        description="List every registered method, task, encoder and preset with a one-line description.",
    )
    lst.add_argument("--keys", action="store_true",
                     help="also list every --set key with its type, its value in --preset and what it means")
    lst.add_argument("--preset", default="cpu", help="the preset whose values --keys shows (default cpu)")
    return lst


def command(args: argparse.Namespace) -> int:
    from benchmark.core.config import PRESETS, ConfigError
    from benchmark.core.registry import ENCODERS, METHODS, TASKS, did_you_mean
    from benchmark.plugins import load_plugins

    load_plugins()
    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}{did_you_mean(args.preset, PRESETS)}; choose from: "
                          f"{', '.join(PRESETS)}")
    for title, reg in (("methods", METHODS), ("tasks", TASKS), ("encoders", ENCODERS)):
        print(f"{title}:")
        for name in reg.names():
            print(f"  {name:<12} {reg.description(name)}")
        if reg is TASKS:
            print(f"  {'FILE.toml':<12} a task of your own cohort, from a TOML file and a CSV manifest (`run --help`; "
                  "docs/tasks.md: Your own cohort)")
    print("presets:")
    for name, preset in PRESETS.items():
        print(f"  {name:<12} {preset.description}")
    if args.keys:
        print()
        print("\n".join(key_lines(args.preset)))
    return 0
