"""Export-display variation: what happens to a scan between the machine and a public set.

Real sets are not seen on the machine's own display. Some frames are saved with the gain
turned far down (mid-greys crushed to black, only the skull's arcs left), some with the
greys lifted and the contrast flattened, and augmentation tools rotate whole frames, filling
the corners and boxing the rotated boxes loosely again. ``redisplay`` applies one such
export to a rendered image and its boxes; the cohort draws it from a stream of its own, so
the rest of a cohort stays image for image.

A turned frame's boxes are either ``loose`` (the box round each turned box, as augmentation
tools and the sets made with them box them) or ``tight`` (each region's own box, found
again in the turned map of structures, as an annotator boxes a head that lies tilted).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from neurosono.phantom.render import region_boxes

MAX_ROTATION_DEG = 30.0
# A box rotated partly out of the frame is kept while this share of it stays inside.
MIN_VISIBLE_SHARE = 0.4
TONES = ("dark", "lifted", "as-is")
TURN_BOXES = ("tight", "loose")
TONE_WEIGHTS = (0.45, 0.25, 0.30)
ROTATED_SHARE = 0.6


@dataclass(frozen=True)
class Export:
    """One export's settings: the tone curve and the whole-frame rotation."""

    tone: str  # dark, lifted or as-is
    black: float  # dark: the share of the frame's bright end (99.5th centile) crushed to black
    gamma: float  # dark: >1 darkens the mid-greys further
    gain: float  # dark: the grey the bright end is shown at; lifted: the contrast kept
    lift: float  # lifted: the grey black becomes
    rotation_deg: float  # in the image's own angle convention (Pose.angle_deg)

    def describe(self) -> str:
        parts = [self.tone]
        if self.rotation_deg:
            parts.append(f"rotated {self.rotation_deg:+.1f} deg")
        return ", ".join(parts)


def sample_export(rng: np.random.Generator) -> Export:
    tone = str(rng.choice(TONES, p=TONE_WEIGHTS))
    turned = rng.random() < ROTATED_SHARE
    rotation = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)) if turned else 0.0
    return Export(
        tone=tone,
        black=float(rng.uniform(0.35, 0.8)),
        gamma=float(rng.uniform(1.0, 2.0)),
        gain=float(rng.uniform(0.55, 0.95)),
        lift=float(rng.uniform(0.15, 0.4)),
        rotation_deg=rotation,
    )


def rotation_matrix(shape: tuple[int, int], rotation_deg: float) -> np.ndarray:
    """2x3 affine turning the frame about its centre, in Pose's convention (y down:
    x' = c x - s y, y' = s x + c y), so a head's midline angle grows by ``rotation_deg``."""
    height, width = shape
    # OpenCV's positive angle turns counter-clockwise on screen; Pose's turns clockwise.
    return cv2.getRotationMatrix2D((width / 2, height / 2), -rotation_deg, 1.0)


def _tone(image: np.ndarray, export: Export) -> np.ndarray:
    if export.tone == "as-is":
        return image
    v = image.astype(np.float32) / 255
    if export.tone == "dark":
        # Relative to the frame's own bright end, so the skull's arcs stay as they do in
        # real low-gain frames while the parenchyma goes black.
        bright = max(float(np.percentile(v, 99.5)), 1e-3)
        black = export.black * bright
        v = np.clip((v - black) / (bright - black), 0, 1) ** export.gamma * export.gain
    elif export.tone == "lifted":
        v = export.lift + v * export.gain * (1 - export.lift)
    return np.clip(v * 255 + 0.5, 0, 255).astype(np.uint8)


def _rotate_box(
    xyxy: tuple[float, float, float, float], matrix: np.ndarray, shape: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """The axis-aligned box round a rotated box, clipped to the frame (None: mostly outside)."""
    x0, y0, x1, y1 = xyxy
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]], dtype=np.float64) @ matrix.T
    (bx0, by0), (bx1, by1) = corners.min(axis=0), corners.max(axis=0)
    height, width = shape
    cx0, cy0 = max(0.0, bx0), max(0.0, by0)
    cx1, cy1 = min(float(width), bx1), min(float(height), by1)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    if (cx1 - cx0) * (cy1 - cy0) < MIN_VISIBLE_SHARE * (bx1 - bx0) * (by1 - by0):
        return None
    return float(cx0), float(cy0), float(cx1), float(cy1)


def redisplay(
    image: np.ndarray,
    boxes: dict[str, tuple[float, float, float, float]],
    export: Export,
    head_xy: tuple[float, float],
    structures: np.ndarray | None = None,
    spacing_mm: float = 1.0,
) -> tuple[np.ndarray, dict[str, tuple[float, float, float, float]], tuple[float, float]]:
    """The image as exported, its boxes (pixels, xyxy) and the head centre moved with it.

    With the image's map of ``structures`` (labels, 0 outside the image's field), a turned
    frame's boxes are tight: each region boxed again in the turned map (``spacing_mm`` sets
    the boxes' margin); without it, loose."""
    shape = image.shape[:2]
    if export.rotation_deg:
        matrix = rotation_matrix(shape, export.rotation_deg)
        # The corners the turn uncovers are filled black; a lifted tone then greys them, as
        # exports of lifted frames show.
        image = cv2.warpAffine(
            image,
            matrix,
            (shape[1], shape[0]),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        if structures is not None:
            turned = cv2.warpAffine(
                structures, matrix, (shape[1], shape[0]), flags=cv2.INTER_NEAREST, borderValue=0
            )
            boxes = region_boxes(turned, turned > 0, tuple(boxes), spacing_mm)
        else:
            moved = {}
            for region, xyxy in boxes.items():
                box = _rotate_box(xyxy, matrix, shape)
                if box is not None:
                    moved[region] = box
            boxes = moved
        hx, hy = matrix @ np.array([head_xy[0], head_xy[1], 1.0])
        head_xy = (float(hx), float(hy))
    return _tone(image, export), boxes, head_xy
