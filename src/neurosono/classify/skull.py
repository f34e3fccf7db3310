"""The head's size from the skull: the bright ring round the brain, fitted as an ellipse.

HexaNet needs a stand-in for gestational age: a 19 mm cerebellum is normal at
20 weeks and hypoplastic at 23, and nothing in a region crop says which. The
skull's short axis (the biparietal diameter, BPD) grows about 3 mm a week and is
what sonographers date by, so each region's size is also given relative to it.

The fit: rays from the head's centre (the middle of the detected regions); on
each, the strongest thin bright ridge (a band-pass of the image, which keeps bone
and drops broad bright areas such as the placenta) between 8% and 62% of the
image size away, the image's edges (depth marks) excluded;
then the ellipse most of those points agree with (RANSAC), so that a limb or the
placenta next to the skull, or the midline echo inside it, does not pull it.
The fit runs on the image shrunk to 128 pixels across (fast; the skull is still
a few pixels thick there). The ellipse through each subset is OpenCV's ``fitEllipse``;
the RANSAC loop round it stays here rather than scikit-image's ``ransac`` with
``EllipseModel``: its 32 seeded subsets are drawn once per point count and scored
against every point in one array operation (a few milliseconds per image at
prediction), and the shipped HexaNet reads sizes measured by exactly this fit, so
another fit would change its inputs and need a retrained model.

On 200 phantom images (512 px, 100 cases of the seed-303 cohort, centred on the truth
boxes) the short axis matched the true BPD to 0.48 +- 0.22 mm (at most 1.23 mm);
``tests/test_skull.py`` checks it on 128-px phantoms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

N_RAYS = 72
RADIUS_RANGE = (0.08, 0.62)  # fraction of the image's larger side
MIN_POINTS = 12
# Plausible short axis as a fraction of the image's larger side; outside it the fit is refused.
SHORT_AXIS_RANGE = (0.15, 1.0)
WORK_SIDE = 128
BORDER = 0.03  # fraction of the image's side ignored at each edge
RANSAC_TRIALS = 32
SUBSET = 8
INLIER_RESIDUAL = 0.05  # |normalised radius - 1|: 5% of the radius


def _residuals(points: np.ndarray, ellipses: list[tuple]) -> np.ndarray:
    """[E, P]: how far each point lies off each ellipse, as a fraction of its radius there."""
    params = np.array([(ex, ey, d1, d2, angle) for (ex, ey), (d1, d2), angle in ellipses], np.float64)
    ex, ey, d1, d2, theta = params.T[:, :, None]
    theta = np.deg2rad(theta)
    dx, dy = points[None, :, 0] - ex, points[None, :, 1] - ey
    along = dx * np.cos(theta) + dy * np.sin(theta)
    across = -dx * np.sin(theta) + dy * np.cos(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.abs(np.hypot(along / (d1 / 2), across / (d2 / 2)) - 1)
    return np.where(np.isfinite(residual) & (np.minimum(d1, d2) > 1), residual, np.inf)


@dataclass(frozen=True)
class SkullFit:
    centre: tuple[float, float]  # x, y in pixels
    short_axis_px: float  # BPD-like: outer-to-outer across the head
    long_axis_px: float
    angle_deg: float
    n_points: int


def fit_skull(image: np.ndarray, centre: tuple[float, float]) -> SkullFit | None:
    """The skull ellipse of a grey image round ``centre`` (x, y), or None when it cannot be fitted.

    Two passes: the second searches from the first fit's centre, because the detected
    regions (which give ``centre``) sit off the head's middle in the TC plane.
    """
    # Fitted at most WORK_SIDE pixels across (fast, and the skull is many pixels thick there).
    scale = min(1.0, WORK_SIDE / max(image.shape))
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ridges = _ridges(image)
    # A ray whose strongest ridge is weaker than this has not found bone.
    weak = float(np.partition(ridges.ravel(), int(0.95 * ridges.size))[int(0.95 * ridges.size)])
    fit = _fit_once(ridges, (centre[0] * scale, centre[1] * scale), weak)
    if fit is not None:
        fit = _fit_once(ridges, fit.centre, weak) or fit
    if fit is None:
        return None
    return SkullFit(
        (fit.centre[0] / scale, fit.centre[1] / scale),
        fit.short_axis_px / scale,
        fit.long_axis_px / scale,
        fit.angle_deg,
        fit.n_points,
    )


def _ridges(image: np.ndarray) -> np.ndarray:
    """Thin bright structures (bone) kept, broad bright areas (placenta, limbs, gain) removed."""
    grey = image.astype(np.float32)
    size = max(grey.shape)
    fine = cv2.GaussianBlur(grey, (0, 0), max(1.0, size / 400))
    coarse = cv2.GaussianBlur(grey, (0, 0), max(4.0, size / 50))
    ridges = np.maximum(fine - coarse, 0)
    # Depth and calliper marks sit at the image's edges: no skull point is taken there.
    border = max(2, round(size * BORDER))
    ridges[:border], ridges[-border:], ridges[:, :border], ridges[:, -border:] = 0, 0, 0, 0
    return ridges


@cache
def _subsets(n_points: int) -> np.ndarray:
    """RANSAC's point subsets [RANSAC_TRIALS, SUBSET] for n points: the same for every fit
    with n points (seeded), so drawn once per n (read-only, as every such fit shares it)."""
    rng = np.random.default_rng(0)
    subsets = np.argsort(rng.random((RANSAC_TRIALS, n_points)), axis=1)[:, :SUBSET]
    subsets.setflags(write=False)
    return subsets


def _fit_once(ridges: np.ndarray, centre: tuple[float, float], weak: float) -> SkullFit | None:
    height, width = ridges.shape
    size = max(height, width)
    radii = np.arange(RADIUS_RANGE[0] * size, RADIUS_RANGE[1] * size, 1.0, dtype=np.float32)
    angles = np.linspace(0, 2 * np.pi, N_RAYS, endpoint=False, dtype=np.float32)
    xs = (float(centre[0]) + np.cos(angles)[:, None] * radii[None]).astype(np.float32)
    ys = (float(centre[1]) + np.sin(angles)[:, None] * radii[None]).astype(np.float32)
    values = cv2.remap(ridges, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    rows = np.arange(N_RAYS)
    strongest = values.argmax(axis=1)
    found = values[rows, strongest] > weak
    points = np.stack([xs[rows, strongest], ys[rows, strongest]], axis=1)[found]
    if len(points) < MIN_POINTS:
        return None
    # RANSAC (seeded, so a fit is reproducible): the ellipse through random subsets that
    # most points agree with, then refitted on those points.
    agree = _residuals(points, [cv2.fitEllipse(subset) for subset in points[_subsets(len(points))]])
    agree = agree < INLIER_RESIDUAL
    best = agree[agree.sum(axis=1).argmax()]
    if best.sum() < MIN_POINTS:
        return None
    points = points[best]
    (ex, ey), (d1, d2), angle = cv2.fitEllipse(points)
    short, long = min(d1, d2), max(d1, d2)
    if not SHORT_AXIS_RANGE[0] * size <= short <= SHORT_AXIS_RANGE[1] * size:
        return None
    return SkullFit((float(ex), float(ey)), float(short), float(long), float(angle), len(points))
