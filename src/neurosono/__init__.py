"""neurosono: two-stage fetal neurosonography screening on TV/TC planes."""

__version__ = "0.19.0"


def __getattr__(name: str):
    # Lazy: importing neurosono must not pull in torch and ultralytics.
    if name in ("Pipeline", "Prediction"):
        from neurosono import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'neurosono' has no attribute {name!r}")
