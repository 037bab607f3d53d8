"""Data sources (embedded generator; TCGA-UT and CSV manifests through one loader, tasks/manifest.py), the task
definitions, and tasks from TOML files; importing registers the tasks and lets ``--task`` name a task file."""

from benchmark.core.registry import TASKS
from tasks import definitions, task_file  # noqa: F401  (definitions registers nsclc, uterine, heldout)

TASKS.add_resolver(task_file.resolve_task_file)
