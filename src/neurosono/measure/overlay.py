"""The head ellipses and callipers, and the boxes the structures were measured in, drawn on
the TV image (OpenCV's built-in vector font)."""

from __future__ import annotations

import cv2
import numpy as np

from neurosono.measure.biometry import Biometry
from neurosono.measure.structures import STRUCTURE_LABELS

OUTER, INNER, CALLIPER, STRUCTURE = (0, 200, 255), (80, 220, 80), (255, 255, 0), (255, 120, 255)  # BGR


def draw_biometry(grey: np.ndarray, biometry: Biometry, plane: str = "tv") -> np.ndarray:
    """A BGR copy of ``grey`` (the ``plane`` image) with the fitted skull borders, the BPD and
    OFD callipers, the boxes of the structures measured on this plane, and the values."""
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    thick = max(1, round(max(image.shape) / 400))
    scale = max(0.4, image.shape[0] / 900)
    if biometry.structures is not None:
        for name, found in biometry.structures.boxes.items():
            if found.plane != plane or name not in biometry.values:
                continue
            x0, y0, x1, y1 = (round(v) for v in found.box)
            cv2.rectangle(image, (x0, y0), (x1, y1), STRUCTURE, thick, cv2.LINE_AA)
            label = f"{STRUCTURE_LABELS.get(name, name)} {biometry.values[name]:.1f}"
            cv2.putText(
                image, label, (x0, max(10, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, STRUCTURE, 1
            )
    head = biometry.head
    if plane != "tv" or head is None or head.outer is None:
        return image
    for ellipse, colour in ((head.outer, OUTER), (head.inner, INNER)):
        if ellipse is not None:
            box = ((ellipse.cx, ellipse.cy), (ellipse.d1, ellipse.d2), ellipse.angle_deg)
            cv2.ellipse(image, box, colour, thick, cv2.LINE_AA)
    for (x0, y0), (x1, y1) in head.callipers().values():
        cv2.line(image, (round(x0), round(y0)), (round(x1), round(y1)), CALLIPER, thick, cv2.LINE_AA)
        for x, y in ((x0, y0), (x1, y1)):
            cv2.drawMarker(image, (round(x), round(y)), CALLIPER, cv2.MARKER_CROSS, 6 * thick + 4, thick)
    lines = [
        f"{STRUCTURE_LABELS.get(k, k.removesuffix('_mm').upper())} {v:.1f} mm"
        for k, v in biometry.values.items()
        if k.endswith("_mm")
    ]
    if "cephalic_index" in biometry.values:
        lines.append(f"CI {biometry.values['cephalic_index']:.2f}")
    for i, text in enumerate(lines):
        y = round((i + 1) * 22 * scale * 1.6)
        cv2.putText(
            image, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, CALLIPER, max(1, thick), cv2.LINE_AA
        )
    return image
