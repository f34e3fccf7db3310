"""Stage 1: the six-region YOLOv5 detector (train, evaluate, predict).

Import :mod:`neurosono.detect.env` (done by every entry point here) before ultralytics.
"""

from neurosono.detect.env import configure_ultralytics
from neurosono.detect.model import Detector, DetectorFileError, RegionMismatchError, load_detector

__all__ = ["Detector", "DetectorFileError", "RegionMismatchError", "configure_ultralytics", "load_detector"]
