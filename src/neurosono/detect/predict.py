"""Detector inference on image files: boxes (pixels), region names and confidences."""

from __future__ import annotations

from pathlib import Path

from neurosono.data.check import _image_size
from neurosono.detect.evaluate import OPERATING_CONF, predict_paths
from neurosono.detect.model import Detector


class ImageInputError(ValueError):
    """An input image is missing or unreadable; the message names the file."""


def validate_images(paths: list[Path]) -> None:
    for path in paths:
        _, problem = _image_size(Path(path))
        if problem:
            raise ImageInputError(f"{path}: {problem}")


def detect_regions(detector: Detector, paths: list[str | Path], conf: float = OPERATING_CONF) -> list[dict]:
    """One record per image: its regions with box [x0, y0, x1, y1] in pixels and confidence."""
    files = [Path(p) for p in paths]
    validate_images(files)
    records = []
    for path, (classes, scores, boxes) in zip(files, predict_paths(detector, files, conf=conf), strict=True):
        detections = [
            {
                "region": detector.regions[int(c)],
                "class_id": int(c),
                "confidence": round(float(s), 4),
                "box": [round(float(v), 1) for v in b],
            }
            for c, s, b in zip(classes, scores, boxes, strict=True)
        ]
        records.append({"image": str(path), "detections": detections})
    return records
