"""A prediction drawn on its image: the chosen region boxes with confidence and attribution,
the head ellipses and callipers and the structure boxes where biometry was measured, and a
banner with the decision and the model's notice (OpenCV's built-in vector font)."""

from __future__ import annotations

import cv2
import numpy as np

from neurosono.measure.overlay import draw_biometry_record
from neurosono.pipeline.predict import Prediction

REGION_COLOURS = [
    (0, 214, 255),
    (255, 200, 0),
    (80, 80, 255),
    (120, 255, 120),
    (0, 140, 255),
    (255, 120, 210),
]


def draw_prediction(bgr: np.ndarray, result: Prediction, plane: str) -> np.ndarray:
    """A BGR copy of the ``plane`` image ``bgr`` with what ``result`` found on it."""
    image = np.ascontiguousarray(bgr).copy()
    thick = max(1, round(max(image.shape[:2]) / 400))
    scale = max(0.45, image.shape[0] / 1000)
    for index, region in enumerate(result.regions):
        if not region.found or region.plane != plane:
            continue
        x0, y0, x1, y1 = (round(v) for v in region.box)
        colour = REGION_COLOURS[index % len(REGION_COLOURS)]
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, thick)
        text = f"{region.region} {region.confidence:.2f} ({region.attribution:+.2f})"
        cv2.putText(
            image, text, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA
        )
    if result.biometry is not None:
        draw_biometry_record(image, result.biometry, plane, labels_below=True)
    banner = f"P(abnormal) {result.p_abnormal:.2f}: {result.decision.upper()} - {result.model['notice']}"
    cv2.putText(
        image,
        banner,
        (8, image.shape[0] - 10),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return image


def overlay_png(bgr: np.ndarray, result: Prediction, plane: str) -> bytes:
    """``draw_prediction`` encoded as PNG (lossless: for files)."""
    return _encode(".png", draw_prediction(bgr, result, plane), plane)


def overlay_jpeg(bgr: np.ndarray, result: Prediction, plane: str, quality: int = 90) -> bytes:
    """``draw_prediction`` encoded as JPEG (a fifth of the PNG's size: for pages)."""
    return _encode(".jpg", draw_prediction(bgr, result, plane), plane, [cv2.IMWRITE_JPEG_QUALITY, quality])


def _encode(suffix: str, image: np.ndarray, plane: str, params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(suffix, image, params or [])
    if not ok:
        raise OSError(f"could not encode the {plane.upper()} overlay")
    return data.tobytes()
