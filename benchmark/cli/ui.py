"""``python -m benchmark ui``: its arguments (:func:`add_parser`) and what it does (:func:`command`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``ui`` subcommand's arguments."""
    ui = sub.add_parser(
        "ui",
        help="start the MLflow UI on the project's store and print its URL",
        description="Start the MLflow UI on 127.0.0.1 for the local store (<results>/mlflow.db, artifacts in "
        "<results>/mlartifacts) or for $MLFLOW_TRACKING_URI, and print the URL. One experiment per task "
        "(medibench-<task>); tick runs and press Compare to see methods side by side on the same metrics. "
        "Stops with Ctrl-C.",
    )
    ui.add_argument("--results", type=Path, default=Path("results"), help="results folder (default ./results)")
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    return ui


def command(args: argparse.Namespace) -> int:
    from benchmark.orchestration.ui import serve_ui

    return serve_ui(args.results, args.port)
