"""Shared foundations below every stage: atomic writes, the one image reader, model files,
provenance, progress and the classification metrics. Nothing here imports a stage."""

# The one default seed of every command and function that draws at random.
DEFAULT_SEED = 0
