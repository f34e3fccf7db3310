"""The head ellipses and callipers drawn on the image (OpenCV's built-in vector font)."""

from __future__ import annotations

import cv2
import numpy as np

from neurosono.measure.biometry import Biometry

OUTER, INNER, CALLIPER = (0, 200, 255), (80, 220, 80), (255, 255, 0)  # BGR


def draw_biometry(grey: np.ndarray, biometry: Biometry) -> np.ndarray:
    """A BGR copy of ``grey`` with the fitted skull borders, the BPD and OFD callipers and values."""
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    head = biometry.head
    if head is None or head.outer is None:
        return image
    thick = max(1, round(max(image.shape) / 400))
    for ellipse, colour in ((head.outer, OUTER), (head.inner, INNER)):
        if ellipse is not None:
            box = ((ellipse.cx, ellipse.cy), (ellipse.d1, ellipse.d2), ellipse.angle_deg)
            cv2.ellipse(image, box, colour, thick, cv2.LINE_AA)
    for (x0, y0), (x1, y1) in head.callipers().values():
        cv2.line(image, (round(x0), round(y0)), (round(x1), round(y1)), CALLIPER, thick, cv2.LINE_AA)
        for x, y in ((x0, y0), (x1, y1)):
            cv2.drawMarker(image, (round(x), round(y)), CALLIPER, cv2.MARKER_CROSS, 6 * thick + 4, thick)
    lines = [
        f"{k.removesuffix('_mm').upper()} {v:.1f} mm" for k, v in biometry.values.items() if k.endswith("_mm")
    ]
    if "cephalic_index" in biometry.values:
        lines.append(f"CI {biometry.values['cephalic_index']:.2f}")
    scale = max(0.4, image.shape[0] / 900)
    for i, text in enumerate(lines):
        y = round((i + 1) * 22 * scale * 1.6)
        cv2.putText(
            image, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, CALLIPER, max(1, thick), cv2.LINE_AA
        )
    return image
