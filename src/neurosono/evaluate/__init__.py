"""Evaluation of trained models on datasets: one classifier, both stages, the real-image models,
and the self-contained report of a run."""
