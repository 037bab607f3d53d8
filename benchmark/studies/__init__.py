"""Measurements beside the leaderboard: performance (``perf``), time to quality (``quality``), the samples
comparison (``compare``) and the counterfactual-guidance frontier (``guidance``)."""
