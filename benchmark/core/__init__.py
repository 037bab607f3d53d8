"""The core every other package stands on: typed configuration and presets (``config``), the registries
(``registry``), the data container (``data``), atomic files and caches (``cache``), provenance, interrupts, thread
budgets, the generation plan, the record store (``tracking``: results.jsonl and MLflow) and the image helpers
(``images``: grids, sample files). It imports nothing above it (tests/test_layers.py)."""
