"""The head ellipses and callipers, and the boxes the structures were measured in, drawn on
the TV image (OpenCV's built-in vector font).

The drawing reads a biometry record (``Biometry.to_dict()``, the ``biometry`` block of a
prediction), so that ``neurosono measure --overlay`` and the prediction overlays draw it
the same way.
"""

from __future__ import annotations

import cv2
import numpy as np

from neurosono.measure.biometry import Biometry
from neurosono.measure.ellipse import Ellipse
from neurosono.measure.head import HeadMeasurement
from neurosono.measure.structures import STRUCTURE_LABELS

OUTER, INNER, CALLIPER, STRUCTURE = (0, 200, 255), (80, 220, 80), (255, 255, 0), (255, 120, 255)  # BGR


def draw_biometry(grey: np.ndarray, biometry: Biometry, plane: str = "tv") -> np.ndarray:
    """A BGR copy of ``grey`` (the ``plane`` image) with the fitted skull borders, the BPD and
    OFD callipers, the boxes of the structures measured on this plane, and the values."""
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    draw_biometry_record(image, biometry.to_dict(), plane)
    return image


def draw_biometry_record(image: np.ndarray, record: dict, plane: str, labels_below: bool = False) -> None:
    """Draw a biometry record on the BGR ``plane`` image, in place. ``labels_below``: the
    structure values under their boxes (where region names already sit above them)."""
    thick = max(1, round(max(image.shape[:2]) / 400))
    scale = max(0.4, image.shape[0] / 900)
    values = record["values"]
    for name, found in record.get("structure_boxes", {}).items():
        if found["plane"] != plane or name not in values:
            continue
        x0, y0, x1, y1 = (round(v) for v in found["box"])
        cv2.rectangle(image, (x0, y0), (x1, y1), STRUCTURE, thick, cv2.LINE_AA)
        label = f"{STRUCTURE_LABELS.get(name, name)} {values[name]:.1f}"
        # A depth read in a window of the cerebellum's shares its box: its label goes below.
        below = labels_below or found.get("window", "").startswith("posterior fossa")
        at = (x0, y1 + round((32 if labels_below else 16) * scale)) if below else (x0, max(10, y0 - 4))
        cv2.putText(image, label, at, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, STRUCTURE, 1)
    head = record.get("head") or {}
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
        f"{STRUCTURE_LABELS.get(k, k.removesuffix('_mm').upper())} {v:.1f} mm"
        for k, v in values.items()
        if k.endswith("_mm")
    ]
    if "cephalic_index" in values:
        lines.append(f"CI {values['cephalic_index']:.2f}")
    for i, text in enumerate(lines):
        y = round((i + 1) * 22 * scale * 1.6)
        cv2.putText(
            image, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, CALLIPER, max(1, thick), cv2.LINE_AA
        )
