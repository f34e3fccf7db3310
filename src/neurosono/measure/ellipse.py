"""Ellipses: fitted to a mask's outline, measured, drawn.

An ellipse is kept in pixels (centre, full axes, angle of the first axis from the
image's x axis in degrees, as OpenCV gives it); millimetres come from the pixel spacing.
The perimeter is Ramanujan's second approximation, exact to far below a pixel for head
shapes (and what HC18's reference HCs were computed with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

MIN_CONTOUR_POINTS = 20


@dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    d1: float  # full axis along ``angle_deg``
    d2: float  # full axis across it
    angle_deg: float

    @property
    def major(self) -> float:
        return max(self.d1, self.d2)

    @property
    def minor(self) -> float:
        return min(self.d1, self.d2)

    @property
    def perimeter(self) -> float:
        return perimeter(self.d1, self.d2)

    def scaled(
        self, factor_x: float, factor_y: float | None = None, dx: float = 0.0, dy: float = 0.0
    ) -> Ellipse:
        """The ellipse in another pixel grid: x' = x * fx + dx (equal factors keep the shape)."""
        fy = factor_x if factor_y is None else factor_y
        if abs(factor_x - fy) > 1e-6 * max(factor_x, fy):
            raise ValueError("an ellipse keeps its shape only under equal x and y scaling")
        return Ellipse(
            self.cx * factor_x + dx, self.cy * fy + dy, self.d1 * factor_x, self.d2 * fy, self.angle_deg
        )

    def box(self) -> tuple[float, float, float, float]:
        """The axis-aligned box (x0, y0, x1, y1) round the ellipse."""
        t = math.radians(self.angle_deg)
        a, b = self.d1 / 2, self.d2 / 2
        half_w = math.hypot(a * math.cos(t), b * math.sin(t))
        half_h = math.hypot(a * math.sin(t), b * math.cos(t))
        return self.cx - half_w, self.cy - half_h, self.cx + half_w, self.cy + half_h

    def axis_ends(self, which: str) -> tuple[tuple[float, float], tuple[float, float]]:
        """The two ends of the ``'major'`` or ``'minor'`` axis (pixel coordinates)."""
        first_is_major = self.d1 >= self.d2
        along = (which == "major") == first_is_major
        theta = math.radians(self.angle_deg + (0.0 if along else 90.0))
        half = (self.d1 if along else self.d2) / 2
        dx, dy = half * math.cos(theta), half * math.sin(theta)
        return (self.cx - dx, self.cy - dy), (self.cx + dx, self.cy + dy)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Filled ellipse as a bool mask of ``shape`` (rows, cols), drawn with sub-pixel precision."""
        canvas = np.zeros(shape, np.uint8)
        shift = 4
        scale = 1 << shift
        centre = (round(self.cx * scale), round(self.cy * scale))
        axes = (round(self.d1 / 2 * scale), round(self.d2 / 2 * scale))
        cv2.ellipse(canvas, centre, axes, self.angle_deg, 0, 360, 1, -1, cv2.LINE_8, shift)
        return canvas.astype(bool)

    def pixels_within(self, shape: tuple[int, int]) -> int:
        """How many pixels of an image of ``shape`` its ``mask`` fills, drawn over its own box only."""
        x0, y0, x1, y1 = self.box()
        bx0, by0 = max(0, math.floor(x0) - 1), max(0, math.floor(y0) - 1)
        bx1, by1 = min(shape[1], math.ceil(x1) + 2), min(shape[0], math.ceil(y1) + 2)
        if bx1 <= bx0 or by1 <= by0:
            return 0
        return int(self.scaled(1.0, 1.0, -bx0, -by0).mask((by1 - by0, bx1 - bx0)).sum())

    @classmethod
    def from_dict(cls, record: dict) -> Ellipse:
        """The ellipse of a ``to_dict`` record (pixel coordinates)."""
        return cls(
            record["cx_px"], record["cy_px"], record["major_px"], record["minor_px"], record["angle_deg"]
        )

    def to_dict(self, spacing_mm: float | None = None) -> dict:
        out = {
            "cx_px": round(self.cx, 2),
            "cy_px": round(self.cy, 2),
            "major_px": round(self.major, 2),
            "minor_px": round(self.minor, 2),
            # The long axis's direction, so that the record alone redraws the ellipse.
            "angle_deg": round((self.angle_deg + (0.0 if self.d1 >= self.d2 else 90.0)) % 180.0, 2),
        }
        if spacing_mm:
            out["perimeter_mm"] = round(self.perimeter * spacing_mm, 2)
        return out


def perimeter(d1: float, d2: float) -> float:
    """Perimeter of an ellipse with full axes d1, d2 (Ramanujan's second approximation)."""
    a, b = d1 / 2, d2 / 2
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def fit_mask_ellipse(mask: np.ndarray) -> Ellipse | None:
    """The ellipse fitted (least squares, OpenCV) to the outline of the mask's largest part;
    None when there is no part with enough outline to fit."""
    binary = np.ascontiguousarray(mask.astype(np.uint8))
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)
    if len(largest) < MIN_CONTOUR_POINTS:
        return None
    (cx, cy), (d1, d2), angle = cv2.fitEllipse(largest.reshape(-1, 2).astype(np.float32))
    if min(d1, d2) <= 1:
        return None
    return Ellipse(float(cx), float(cy), float(d1), float(d2), float(angle))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)
