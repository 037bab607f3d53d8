"""What a run is measured with: encoders (embeddings), metrics (per group), statistics over replicates (``stats``),
FID, the declared endpoints, the probes of generated patches (``fidelity``) and the counterfactual cells against
ground truth (``counterfactual``). Depends on ``benchmark.core`` and ``benchmark.protocols`` only."""
