"""Leaderboards from run records: a self-contained HTML page, a PDF and leaderboard.md, plus the per-run figures.

A report is a pure function of the run records (``results.jsonl`` / ``record.json``; the verdict's paired tests work
on their per-replicate metrics) and of the ``samples.npz`` the runner leaves in each run directory (for sample
grids). Nothing is read from MLflow, so a report rebuilds offline. Every string that comes from data or metadata is
escaped by the template engine (jinja2 autoescape); figures are PNGs embedded as data URIs.

- ``records``: reading and validating records; sections (task x setting), rows (method x variant), runs;
- ``verdicts``: the metric tables, the paired comparisons and their families, MDEs, oracle fractions, sentences;
- ``figures``: heatmaps, FID, the forest plot, sample grids, the per-run figures;
- ``page``: the template's context, HTML (``leaderboard.html.j2`` + ``leaderboard.css``), PDF, markdown, the power
  planner and :func:`write_report`.
"""

from benchmark.report.figures import Figure, run_figures, section_figures
from benchmark.report.page import Report, markdown, power_plan, render, write_pdf, write_report
from benchmark.report.records import (
    CANONICAL_METHODS,
    CONTROL_METHODS,
    ReportError,
    Row,
    Section,
    build_sections,
    load_records,
    machine_free,
    validate_record,
)
from benchmark.report.verdicts import page_comparisons, resplit_ratio, section_comparisons, verdict_table

__all__ = [
    "CANONICAL_METHODS", "CONTROL_METHODS", "Figure", "Report", "ReportError", "Row", "Section", "build_sections",
    "load_records", "machine_free", "markdown", "page_comparisons", "power_plan", "render", "resplit_ratio",
    "run_figures", "section_comparisons", "section_figures", "validate_record", "verdict_table", "write_pdf",
    "write_report",
]
