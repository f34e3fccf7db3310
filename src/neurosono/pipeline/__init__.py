"""The whole pipeline on new cases (images or DICOM) and as the main job."""

from neurosono.pipeline.predict import Pipeline, Prediction, RegionResult

__all__ = ["Pipeline", "Prediction", "RegionResult"]
