"""A prediction drawn on its image: the chosen region boxes with confidence and attribution,
the head ellipses and callipers and the structure boxes where biometry was measured, and a
banner with the decision and the model's notice (OpenCV's built-in vector font)."""

from __future__ import annotations

import cv2
import numpy as np

from neurosono.measure.ellipse import Ellipse
from neurosono.measure.head import HeadMeasurement
from neurosono.measure.overlay import CALLIPER, INNER, OUTER, STRUCTURE
from neurosono.measure.structures import STRUCTURE_LABELS
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
        _draw_biometry(image, result.biometry, plane, thick, scale)
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


def _draw_biometry(image: np.ndarray, biometry: dict, plane: str, thick: int, scale: float) -> None:
    values = biometry["values"]
    for name, found in biometry.get("structure_boxes", {}).items():
        if found["plane"] != plane or name not in values:
            continue
        x0, y0, x1, y1 = (round(v) for v in found["box"])
        cv2.rectangle(image, (x0, y0), (x1, y1), STRUCTURE, thick, cv2.LINE_AA)
        label = f"{STRUCTURE_LABELS.get(name, name)} {values[name]:.1f} mm"
        cv2.putText(
            image, label, (x0, y1 + round(16 * scale * 2)), cv2.FONT_HERSHEY_SIMPLEX, scale, STRUCTURE, 1
        )
    head = biometry.get("head") or {}
    if plane != "tv" or not head.get("head_ellipse"):
        return
    outer = Ellipse.from_dict(head["head_ellipse"])
    inner = Ellipse.from_dict(head["brain_ellipse"]) if head.get("brain_ellipse") else None
    for ellipse, colour in ((outer, OUTER), (inner, INNER)):
        if ellipse is not None:
            box = ((ellipse.cx, ellipse.cy), (ellipse.d1, ellipse.d2), ellipse.angle_deg)
            cv2.ellipse(image, box, colour, thick, cv2.LINE_AA)
    for (x0, y0), (x1, y1) in HeadMeasurement(outer, inner, None).callipers().values():
        cv2.line(image, (round(x0), round(y0)), (round(x1), round(y1)), CALLIPER, thick, cv2.LINE_AA)
        for x, y in ((x0, y0), (x1, y1)):
            cv2.drawMarker(image, (round(x), round(y)), CALLIPER, cv2.MARKER_CROSS, 6 * thick + 4, thick)
    lines = [
        f"{n.removesuffix('_mm').upper()} {values[n]:.1f} mm"
        for n in ("hc_mm", "bpd_mm", "ofd_mm")
        if n in values
    ]
    for i, text in enumerate(lines):
        y = round((i + 1) * 22 * scale * 1.6)
        cv2.putText(image, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, CALLIPER, 1, cv2.LINE_AA)


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
