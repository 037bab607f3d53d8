"""The page: a section's context for the template, the HTML (leaderboard.html.j2, its CSS in leaderboard.css), the
PDF, leaderboard.md, the power planner and write_report, the entry point of ``python -m benchmark report``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmark.evaluation import endpoints, stats
from benchmark.evaluation.endpoints import Endpoints
from benchmark.report.figures import Figure, forest_png, section_figures, task_group_columns
from benchmark.report.records import (
    CANONICAL_METHODS,
    TABLE_SPLITS,
    ReportError,
    Section,
    build_sections,
    load_records,
    machine_free,
    record_key,
    seed_of,
    validate_record,
)
from benchmark.report.verdicts import (
    COUNTERFACTUAL_CAPTION,
    counterfactual_table,
    fid_table,
    metric_title,
    oracle_fractions,
    page_comparisons,
    split_table,
    task_summary,
    verdict_sentences,
    verdict_table,
    worst_groups,
)

log = logging.getLogger(__name__)




#: the page's jinja2 template (autoescaped), beside this module
TEMPLATE_FILE = Path(__file__).with_name("leaderboard.html.j2")
CSS_FILE = Path(__file__).with_name("leaderboard.css")  # inlined into the page: one self-contained file


def _section_context(section: Section, test: str, comparisons: list[stats.Comparison]) -> dict:
    from benchmark.evaluation.fid import fid_config

    figures, fig_notes = section_figures(section)
    notices = []
    if section.missing:
        notices.append("No records for " + ", ".join(section.missing) + " on this task and setting: those methods "
                       "are not in the tables (run them, e.g. python -m benchmark run --method "
                       f"{section.missing[0]} --task {section.task} --preset {section.preset}).")
    if section.baseline() is None:
        notices.append("No run of the baseline none: no paired tests.")
    notices += fig_notes
    fid_notes: dict[str, list[str]] = {}  # a left-out feature space or cancer type -> the methods it concerns
    for row in section.rows:
        for rec in row.runs:
            for note in ((rec.get("method_report") or {}).get("fid") or {}).get("notes", []):
                if "left out" in str(note) and row.label not in fid_notes.setdefault(str(note), []):
                    fid_notes[str(note)].append(row.label)
    notices += [f"{note} (runs of {', '.join(labels)})" for note, labels in fid_notes.items()]
    setting = ", ".join(f"{k}={v}" for k, v in section.setting.items() if k != "preset")
    heading = f"Task {section.task} · preset {section.preset} · encoder {section.encoder}"
    if setting:
        heading += f" · {setting}"
    seeds = sorted({seed_of(r) for r in section.records})
    varied = section.varied()
    description = (f"{len(section.rows)} method variant(s), {len(section.records)} run(s), replicate seeds "
                   f"{', '.join(map(str, seeds))}, each varying {', '.join(varied) or 'nothing'}; classes "
                   f"{', '.join(section.classes) or 'n/a'}; data {section.data_source}.")
    if section.preset == "smoke":
        notices.insert(0, "Smoke preset: tiny data and models that only check the code runs end to end. These "
                       "numbers are not results.")
    for row in section.rows:  # each method's code is part of its identity: its replicates must share one version
        codes = sorted({str(r.get("code_version")) for r in row.runs if r.get("code_version")})
        if len(codes) > 1:
            notices.append(f"The replicates of {row.label} come from {len(codes)} code versions ({', '.join(codes)}):"
                           " their numbers may not be comparable; re-run them with one version of the code.")
    forest = None
    if any(math.isfinite(c.delta) for c in comparisons):
        inference = comparisons[0].inference
        forest = Figure(f"{section.anchor}-verdict", "Paired differences on test_unseen",
                        f"Mean paired difference over replicates with its 95% interval ({inference}), one panel per "
                        f"metric; filled: a declared endpoint that is significant (Holm over its family across "
                        f"tasks, alpha {comparisons[0].alpha:g}); open: not significant, or exploratory (not "
                        f"tested); grey cross: not testable with this many replicates. Green: better than the "
                        f"reference, red: worse.",
                        forest_png(comparisons, f"{section.task}: method − reference"))
        figures.insert(0, forest)
    fractions = oracle_fractions(section, comparisons)
    tables = []
    for split in TABLE_SPLITS:
        t = split_table(section, split)
        t["caption"] = (f"{split}: held-out site x demographic combinations (never seen in training)"
                        if split == "test_unseen" else f"{split}: patients from training combinations")
        if any(c["key"] == "train/robustness_index" for c in t["columns"]):
            t["caption"] += ("; robustness index (train): PathoROB's index of the training set the method gives the "
                             "probe, in the encoder's space (1: neighbours share the class across sites, 0: they "
                             "share the site across classes; random neighbours give (S-1)/S for S sites)")
        tables.append(t)
    cfg_preset = fid_config(section.preset)
    return {
        "anchor": section.anchor, "task": section.task, "heading": heading, "description": description,
        "notices": list(dict.fromkeys(machine_free(n) for n in notices)), "tables": tables,
        "fid": fid_table(section), "fid_ci": cfg_preset.ci,
        "counterfactual": counterfactual_table(section),
        "worst": worst_groups(section), "group_columns": task_group_columns(section.task, section.records),
        "figures": [f for f in figures if f is not forest], "forest": forest,
        "verdict": verdict_sentences(section, comparisons, test),
        "comparisons": verdict_table(comparisons, fractions), "summary": task_summary(section, comparisons),
    }


def family_statement(protocol: Endpoints, comparisons: Sequence[Sequence[stats.Comparison]], where: str) -> list[str]:
    """What the page tests and how, in words: the declared families and their sizes, and where they come from."""
    flat = [c for comps in comparisons for c in comps]
    lines = []
    for role, what in (("primary", "Primary family"), ("control", "Positive controls"),
                       ("negative", "Negative controls")):
        mine = protocol.of_role(role)
        if not mine:
            continue
        tested = [c for c in flat if c.role == role and c.n > 0]
        pairs = dict.fromkeys(f"{e.a} − {e.b} on {metric_title(e.metric)}" for e in mine)
        how = "each alone at alpha (the stricter test for 'must not differ')" if role == "negative" else \
            "Holm across tasks"
        lines.append(f"{what} ({len(tested)} comparison(s) with paired runs, {how}, alpha {protocol.alpha:g}): "
                     f"{'; '.join(pairs)}.")
    lines.append(f"Protocol: {where} (SHA-256 {protocol.sha256[:12]}). Every other comparison is exploratory: "
                 "shown with its 95% interval and its minimum detectable effect (MDE: the smallest true difference "
                 "the design detects with 80% power), never starred.")
    return lines


@dataclass
class Report:
    """A rendered leaderboard: the HTML page and its figures."""

    html: str
    figures: list[Figure]
    sections: list[Section]
    skipped: list[dict]


def render(
    records: Sequence[dict],
    source: str = "results",
    expected_methods: Sequence[str] = CANONICAL_METHODS,
    test: str = "t",
    title: str = "MeDiBench leaderboard",
    now: datetime | None = None,
    protocol: Endpoints | None = None,
    protocol_note: str = "the shipped default endpoints",
) -> Report:
    """The leaderboard page of ``records`` (invalid ones are listed on the page, not used)."""
    from jinja2 import Environment, StrictUndefined
    from markupsafe import Markup

    from benchmark import __version__

    valid, skipped = [], []
    for rec in records:
        reason = validate_record(rec)
        if reason:
            name = rec.get("name") or rec.get("run_id") if isinstance(rec, dict) else None
            skipped.append({"name": str(name or "?"), "reason": reason})
            log.warning("record %s left out of the report: %s", name, reason)
        else:
            valid.append(rec)
    protocol = protocol or endpoints.load()
    sections = sorted(build_sections(valid, expected_methods), key=lambda s: protocol.task_order(s.task))
    if test not in stats.TESTS:
        raise ReportError(f"unknown test {test!r}; choose from: {', '.join(stats.TESTS)}")
    comparisons = page_comparisons(sections, test, protocol)
    contexts = [_section_context(s, test, c) for s, c in zip(sections, comparisons, strict=True)]
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=False, lstrip_blocks=False)
    html = env.from_string(TEMPLATE_FILE.read_text(encoding="utf-8")).render(
        title=title, css=Markup(CSS_FILE.read_text(encoding="utf-8")), version=__version__, source=source,
        n_records=len(valid), skipped=skipped,
        generated=(now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        test_name="paired t-test" if test == "t" else "exact sign-flip permutation test",
        commits=sorted({str(r.get("git_commit")) for r in valid if r.get("git_commit")}), sections=contexts,
        family=family_statement(protocol, comparisons, protocol_note), counterfactual_caption=COUNTERFACTUAL_CAPTION,
    )
    figures = [f for c in contexts for f in ([c["forest"]] if c["forest"] else []) + c["figures"]]
    return Report(html, figures, sections, skipped)


def write_pdf(html: str, path: Path) -> Path:
    """The page printed to PDF with weasyprint (print styles: A4, one task per page, page numbers)."""
    for name in ("weasyprint", "fontTools"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from weasyprint import HTML

    from benchmark.core.cache import atomic_path

    with atomic_path(path) as tmp:
        HTML(string=html).write_pdf(tmp)
    return path


def mixed_code(records: Sequence[dict]) -> list[str]:
    """One line per method and task whose records come from more than one version of the code that decides their
    numbers (the ``code_version`` in the run hash): their replicates may not be comparable."""
    versions: dict[tuple[str, str, str], set[str]] = {}
    for rec in records:
        if isinstance(rec, dict) and rec.get("code_version"):
            key = (str(rec.get("task")), str(rec.get("preset")), str(rec.get("method")))
            versions.setdefault(key, set()).add(str(rec["code_version"]))
    return [f"{method} on {task} ({preset}): {len(codes)} code versions ({', '.join(sorted(codes))})"
            for (task, preset, method), codes in sorted(versions.items()) if len(codes) > 1]


def markdown(sections: Sequence[Section], source: str, test: str = "t", protocol: Endpoints | None = None,
             protocol_note: str = "the shipped default endpoints") -> str:
    """The leaderboard's verdict and test_unseen table per task as Markdown (``leaderboard.md``): what a README or a
    paper quotes, with the same numbers as the page."""
    protocol = protocol or endpoints.load()
    all_comparisons = page_comparisons(sections, test, protocol)
    lines = ["# MeDiBench leaderboard: the verdicts", "", f"Run records: {source}.", "", "## Verdict across tasks", ""]
    lines += [f"- {task_summary(s, c)}" for s, c in zip(sections, all_comparisons, strict=True)] + [""]
    lines += family_statement(protocol, all_comparisons, protocol_note) + [""]
    for section, comparisons in zip(sections, all_comparisons, strict=True):
        setting = ", ".join(f"{k}={v}" for k, v in sorted(section.setting.items()))
        lines += [f"## {section.task}, preset {section.preset}" + (f" ({setting})" if setting else ""), ""]
        sentences = verdict_sentences(section, comparisons, test)
        lines += [sentences[0], ""] + [f"- {s}" for s in sentences[1:]] + [""]
        if comparisons:
            table = verdict_table(comparisons, oracle_fractions(section, comparisons))
            lines += ["| difference (n) | " + " | ".join(table["columns"]) + " |",
                      "|---|" + "---|" * len(table["columns"])]
            for row in table["rows"]:
                cells = ["; ".join([" ".join(filter(None, [c["text"], c["interval"]])), *c["notes"][:1]])
                         + "".join(f", {n}" for n in c["notes"][1:]) for c in row["cells"]]
                lines.append(f"| {row['label']} ({row['n']}) | " + " | ".join(cells) + " |")
            lines.append("")
        table = split_table(section, "test_unseen")
        lines += ["test_unseen, mean [95% t interval] over replicates:", "",
                  "| method (n) | " + " | ".join(c["title"] for c in table["columns"]) + " |",
                  "|---|" + "---|" * len(table["columns"])]
        for row in table["rows"]:
            cells = [" ".join(filter(None, [c.text, c.interval])) for c in row["cells"]]
            lines.append(f"| {row['label']} ({row['n']}) | " + " | ".join(cells) + " |")
        lines.append("")
        cf = counterfactual_table(section)
        if cf:
            lines += [COUNTERFACTUAL_CAPTION, "",
                      "| method (n) | " + " | ".join(c["title"] for c in cf["columns"]) + " |",
                      "|---|" + "---|" * len(cf["columns"])]
            lines += [f"| {r['label']} ({r['n']}) | " + " | ".join(r["cells"]) + " |" for r in cf["rows"]]
            lines.append("")
    return "\n".join(lines)


def read_folders(folders: Sequence[Path]) -> list[dict]:
    """The run records of every folder, one per run id; a missing or empty folder is a ReportError naming it."""
    records: list[dict] = []
    seen: set[str] = set()
    for folder in folders:
        if not folder.exists():
            raise ReportError(f"--results {folder}: no such folder")
        if not folder.is_dir():
            raise ReportError(f"--results {folder} is not a folder")
        found = load_records(folder)
        if not found:
            raise ReportError(f"--results {folder}: no run records there (results.jsonl or "
                              "runs/<task>/<method>/<run>/record.json); nothing written")
        for rec in found:
            if record_key(rec) not in seen:
                seen.add(record_key(rec))
                records.append(rec)
    return records


def power_plan(results_dir: Path | str | Sequence[Path | str], effect: float, test: str = "t",
               endpoints_file: Path | str | None = None, power: float = 0.8) -> list[str]:
    """How many replicates each declared endpoint needs to detect a true difference of ``effect`` with ``power``,
    from the SD of its paired differences in the records (a pilot) and its family's first Holm level."""
    folders = [Path(results_dir)] if isinstance(results_dir, (str, Path)) else [Path(d) for d in results_dir]
    if not (math.isfinite(effect) and effect > 0):
        raise ReportError(f"--power {effect}: expected a difference > 0 (e.g. 0.05 for five accuracy points)")
    records = [r for r in read_folders(folders) if validate_record(r) is None]
    try:
        protocol, note = endpoints.for_results(folders, endpoints_file)
    except endpoints.EndpointsError as exc:
        raise ReportError(str(exc)) from None
    sections = sorted(build_sections(records), key=lambda s: protocol.task_order(s.task))
    out = [f"replicates needed for a true difference of {effect:g} at {100 * power:.0f}% power ({note}):"]
    for section, comparisons in zip(sections, page_comparisons(sections, test, protocol), strict=True):
        for c in comparisons:
            if c.role not in endpoints.DECLARED:
                continue
            alpha = c.alpha / max(1, c.family_size)
            if c.n < 2 or not (math.isfinite(c.sd) and c.sd > 0):
                out.append(f"  {section.task}: {c.a} − {c.b}, {metric_title(c.metric)}: no variance estimate "
                           f"({c.n} paired replicate(s))")
                continue
            need = stats.replicates_needed(effect, c.sd, alpha, power, c.resplit_ratio)
            mde = c.mde(power)
            verdict = (f"{need} replicates" if need is not None else
                       "no replicate count suffices (re-splits of one cohort: the corrected variance does not "
                       "shrink below (n_test/n_train) s^2)")
            out.append(f"  {section.task}: {c.a} − {c.b}, {metric_title(c.metric)} (SD of differences {c.sd:.3f} "
                       f"over {c.n}, alpha {alpha:.4f}): {verdict}; MDE now {mde:.3f}")
    return out


def _shown_path(folder: Path) -> str:
    """A results folder as the page names it: as given when relative; an absolute path by its last two parts, so a
    committed report carries no paths of the machine that made it."""
    return str(folder) if not folder.is_absolute() else "/".join(folder.parts[-2:])


def write_report(
    results_dir: Path | str | Sequence[Path | str],
    out_dir: Path | str,
    expected_methods: Sequence[str] = CANONICAL_METHODS,
    test: str = "t",
    pdf: bool = True,
    allow_mixed_code: bool = False,
    endpoints_file: Path | str | None = None,
) -> dict[str, Any]:
    """Write ``leaderboard.html``, ``leaderboard.pdf``, ``leaderboard.md`` (the verdicts and test_unseen tables, for
    a README) and ``figures/*.png`` under ``out_dir``; what was written.
    ``results_dir`` may be several folders (for example two frozen grids): their records are read together, one per
    run id. Records of one method made by different code are a ReportError unless ``allow_mixed_code`` (then the
    page says so beside that method)."""
    from benchmark.core.cache import atomic_write_bytes, atomic_write_text

    folders = [Path(results_dir)] if isinstance(results_dir, (str, Path)) else [Path(d) for d in results_dir]
    out_dir = Path(out_dir)
    records = read_folders(folders)
    source = ", ".join(_shown_path(f) for f in folders)
    try:
        protocol, protocol_note = endpoints.for_results(folders, endpoints_file)
    except endpoints.EndpointsError as exc:
        raise ReportError(f"{exc}; nothing written") from None
    mixed = mixed_code(records)
    if mixed and not allow_mixed_code:
        more = f" (and {len(mixed) - 1} more)" if len(mixed) > 1 else ""
        raise ReportError(f"--results {source}: the records of {mixed[0]}{more} may not be comparable; re-run "
                          "them with one version of the code, or pass --mixed-code to report them with a notice; "
                          "nothing written")
    report = render(records, source, expected_methods, test, protocol=protocol, protocol_note=protocol_note)
    html_path = out_dir / "leaderboard.html"
    atomic_write_text(html_path, report.html)
    atomic_write_text(out_dir / "leaderboard.md", markdown(report.sections, source, test, protocol, protocol_note))
    for fig in report.figures:
        atomic_write_bytes(out_dir / "figures" / f"{fig.name}.png", fig.png)
    pdf_path = write_pdf(report.html, out_dir / "leaderboard.pdf") if pdf else None
    return {
        "html": html_path, "pdf": pdf_path, "figures": len(report.figures), "records": sum(
            len(s.records) for s in report.sections), "skipped": report.skipped,
        "sections": [(s.task, s.preset, [r.label for r in s.rows], s.missing) for s in report.sections],
    }
