"""Running the benchmark: one run (``runner``), sweeps (``sweep``) and their launchers (a local pool, SLURM through
submitit), tuning (``tune``), freezing results (``freeze``) and the MLflow UI (``ui``)."""
