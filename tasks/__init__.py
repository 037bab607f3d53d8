"""Data sources (embedded generator, TCGA-UT loader) and the task definitions; importing registers the tasks."""

from tasks import definitions  # noqa: F401  (registers nsclc, uterine, heldout)
