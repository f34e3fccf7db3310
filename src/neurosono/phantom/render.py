"""Render one axial plane (TV or TC) of a phantom head as a B-mode image.

Two steps:

1. **Anatomy to a tissue map.** Structures are polygons in a head frame in mm
   (x along the midline, anterior positive; y across it, the far hemisphere
   positive), placed on the image by a pose (centre, rotation, flip, pixel
   spacing) and painted in order into an echogenicity map ``E`` and a
   structure-id map ``L``. Region boxes are the bounding boxes of the visible
   structure pixels in ``L``, so every box surrounds what was actually drawn.
2. **Image formation** in the probe's polar frame (depth x beam angle):
   bone attenuation (posterior acoustic shadow), near-field reverberation,
   maternal wall layers, Rayleigh speckle from a complex scatterer field blurred
   by a PSF whose lateral width grows with depth, time-gain ripple, log
   compression, then scan conversion to the convex sector and the centre's
   display style (grey or sepia, burned-in text, callipers, depth scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import cv2
import numpy as np

from neurosono.phantom import scene
from neurosono.phantom.anatomy import Anatomy
from neurosono.phantom.centers import CenterStyle

# ---- echogenicity (linear backscatter intensity; bone = 1) ---------------------------
FLUID = 0.00004
CSF = 0.00008
AMNIOTIC = 0.00006
PARENCHYMA = 0.007
THALAMUS = 0.0055
SCALP = 0.02
BONE = 1.0
FALX = 0.30
CHOROID = 0.22
WALL = 0.10
VERMIS = 0.18
CEREBELLUM = 0.018
CEREBELLAR_RIM = 0.10
INSULA = 0.10

# ---- structure ids in L ----------------------------------------------------------
BACKGROUND, BRAIN, SKULL, OTHER = 0, 1, 2, 3
CSP_ID, THALAMI_ID, VENTRICLE_ID, CHOROID_ID = 10, 11, 12, 13
SYLVIAN_ID, CEREBELLUM_ID, VERMIS_ID, CISTERNA_ID = 14, 15, 16, 17
REGION_STRUCTURES: dict[str, tuple[int, ...]] = {
    "csp": (CSP_ID,),
    "thalami": (THALAMI_ID,),
    "lateral_ventricle": (VENTRICLE_ID, CHOROID_ID),
    "sylvian_fissure": (SYLVIAN_ID,),
    "cerebellum": (CEREBELLUM_ID, VERMIS_ID),
    "cisterna_magna": (CISTERNA_ID,),
    "fetal_head": (SKULL,),  # the skull's outer ellipse (the realistic look boxes it)
}
PLANE_REGIONS = {
    "tv": ("csp", "thalami", "lateral_ventricle", "sylvian_fissure"),
    "tc": ("csp", "thalami", "cerebellum", "cisterna_magna"),
    "tt": ("csp", "thalami"),
}
HEAD_BOX = "fetal_head"
PLAIN, REALISTIC = 1, 2  # the generator's looks
MIN_REGION_PIXELS = 6  # fewer visible pixels than this: the region is not visible
BOX_MARGIN_MM = 0.6  # annotators box a structure with a little context
# The realistic look's wide zoom: the share of acquisitions whose zoom is drawn afresh (the others keep the
# centre's habit), and that zoom's range as the fraction of the width the head fills.
REALISTIC_FREE_ZOOM = 0.5
REALISTIC_ZOOM = (0.32, 1.0)
MIN_ZOOM, MAX_ZOOM = 0.1, 1.5  # the range a cohort may ask for instead


@dataclass(frozen=True)
class Pose:
    """Where the head lies in the image."""

    center_x: float  # px
    center_y: float  # px
    angle_deg: float  # midline angle from horizontal
    flip: bool  # True: anterior points left
    spacing_mm: float  # mm per pixel

    def to_px(self, pts_mm: np.ndarray) -> np.ndarray:
        theta = math.radians(self.angle_deg)
        c, s = math.cos(theta), math.sin(theta)
        x = pts_mm[:, 0] * (-1.0 if self.flip else 1.0)
        y = pts_mm[:, 1]
        return np.stack(
            [
                self.center_x + (c * x - s * y) / self.spacing_mm,
                self.center_y + (s * x + c * y) / self.spacing_mm,
            ],
            axis=1,
        )


@dataclass
class Rendered:
    image: np.ndarray  # uint8, HxW (grey) or HxWx3 (sepia)
    boxes: dict[str, tuple[float, float, float, float]]  # region -> x0, y0, x1, y1 in px
    pose: Pose
    structures: np.ndarray | None = None  # L map, when asked for
    info: dict[str, float] = field(default_factory=dict)

    def region_mask(self, region: str) -> np.ndarray:
        if self.structures is None:
            raise ValueError("render with keep_structures=True to get masks")
        return np.isin(self.structures, REGION_STRUCTURES[region])


# ---- polygon helpers (head frame, mm) -----------------------------------------------
def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48, rot: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def superellipse(cx: float, cy: float, rx: float, ry: float, p: float = 3.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ct, st = np.cos(t), np.sin(t)
    x = rx * np.sign(ct) * np.abs(ct) ** (2 / p)
    y = ry * np.sign(st) * np.abs(st) ** (2 / p)
    return np.stack([cx + x, cy + y], axis=1)


def tube(center: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Polygon of a variable-width band around a centreline."""
    tangent = np.gradient(center, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    left = center + normal * widths[:, None] / 2
    right = center - normal * widths[:, None] / 2
    return np.concatenate([left, right[::-1]])


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def frame_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image: a side for square images, or the pair itself."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Canvas:
    """Painter's-order tissue map E and structure map L for one image."""

    def __init__(self, size: int | tuple[int, int], pose: Pose) -> None:
        self.height, self.width = frame_shape(size)
        self.pose = pose
        self.E = np.full((self.height, self.width), AMNIOTIC, np.float32)
        self.L = np.zeros((self.height, self.width), np.uint8)
        self.head_depth_mm = 20.0  # depth of the near hemisphere, for reverberation

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _px(self, pts: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(pts)):
            raise ValueError("non-finite polygon point in phantom geometry")
        return np.round(self.pose.to_px(pts) * 16).astype(np.int32)  # 4 fractional bits

    def fill(self, pts: np.ndarray, echo: float, struct: int | None = None) -> None:
        poly = [self._px(pts)]
        cv2.fillPoly(self.E, poly, float(echo), lineType=cv2.LINE_8, shift=4)
        if struct is not None:
            cv2.fillPoly(self.L, poly, int(struct), lineType=cv2.LINE_8, shift=4)

    def line(
        self,
        pts: np.ndarray,
        echo: float,
        width_mm: float,
        struct: int | None = None,
        closed: bool = False,
    ) -> None:
        poly = [self._px(pts)]
        thickness = max(1, round(width_mm / self.pose.spacing_mm))
        cv2.polylines(self.E, poly, closed, float(echo), thickness, cv2.LINE_8, shift=4)
        if struct is not None:
            cv2.polylines(self.L, poly, closed, int(struct), thickness, cv2.LINE_8, shift=4)


# ---- the head ------------------------------------------------------------------------
@dataclass
class HeadFrame:
    """Semi-axes of the skull and brain in this plane, and the skull outline function."""

    a: float  # inner skull semi-axis along the midline
    b: float  # inner skull semi-axis across it
    skull: float
    lemon_mm: float

    def outline(self, grow_mm: float, n: int = 96) -> np.ndarray:
        """Skull-parallel outline, ``grow_mm`` outside the inner table (negative: inside)."""
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        x = (self.a + grow_mm) * np.cos(t)
        y = (self.b + grow_mm) * np.sin(t)
        if self.lemon_mm > 0:
            # Lemon sign: concave frontal bones either side of the anterior pole.
            bump = np.exp(-(((t - 0.95) / 0.32) ** 2)) + np.exp(-(((t + 0.95) / 0.32) ** 2))
            bump += np.exp(-(((t - 2 * np.pi + 0.95) / 0.32) ** 2))
            r = np.hypot(x, y)
            scale = 1 - self.lemon_mm * 1.0 * bump / r
            x, y = x * scale, y * scale
        return np.stack([x, y], axis=1)

    def inner_y(self, x: float) -> float:
        """Far-side inner skull y at midline position x (ignoring the lemon dent)."""
        return self.b * math.sqrt(max(0.0, 1 - (x / self.a) ** 2))


def _head_frame(anatomy: Anatomy, plane: str) -> HeadFrame:
    # The TC plane is tilted down through the posterior fossa: a slightly shorter section.
    scale = 0.97 if plane == "tc" else 1.0
    a = (anatomy.ofd_mm / 2 - anatomy.skull_mm) * scale
    b = anatomy.bpd_mm / 2 - anatomy.skull_mm / 2
    return HeadFrame(a, b, anatomy.skull_mm, anatomy.lemon_mm)


def _draw_skull_and_brain(canvas: Canvas, head: HeadFrame) -> None:
    canvas.fill(head.outline(head.skull + 2.5), SCALP)
    canvas.fill(head.outline(head.skull), BONE, SKULL)
    canvas.fill(head.outline(0.0), CSF, OTHER)
    canvas.fill(head.outline(-1.1), PARENCHYMA, BRAIN)


def _draw_csp(canvas: Canvas, a: Anatomy, head: HeadFrame) -> float:
    """CSP (if present) and frontal horns; returns the x of the CSP's posterior end."""
    xc = 0.38 * head.a
    length, width = a.csp_length_mm, a.csp_width_mm
    if a.colpocephaly or a.monoventricle:
        # No CSP: frontal horns narrow and pushed apart (colpocephaly) or absent (HPE).
        if a.colpocephaly:
            for side in (-1, 1):
                horn = np.array([[xc + 0.2 * length, side * 4.5], [0.62 * head.a, side * 8.0]])
                canvas.fill(tube(_resample(horn, 8), np.linspace(1.6, 0.8, 8)), FLUID, OTHER)
        return xc - length / 2
    horn_w = min(3.2, 1.6 + 0.15 * width)
    for side in (-1, 1):
        horn = np.array(
            [[xc + 0.1 * length, side * (width / 2 + 1.3)], [0.62 * head.a, side * (width / 2 + 5.5)]]
        )
        canvas.fill(tube(_resample(horn, 8), np.linspace(horn_w, 1.0, 8)), FLUID, OTHER)
    outline = superellipse(xc, 0.0, length / 2 + 0.5, width / 2 + 0.5, p=3.2)
    canvas.fill(outline, WALL, OTHER)
    canvas.fill(superellipse(xc, 0.0, length / 2, width / 2, p=3.2), FLUID, CSP_ID)
    return xc - length / 2


def _resample(pts: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0, 1, len(pts))
    u = np.linspace(0, 1, n)
    return np.stack([np.interp(u, t, pts[:, 0]), np.interp(u, t, pts[:, 1])], axis=1)


def _draw_thalami(canvas: Canvas, a: Anatomy, x_front: float, plane: str) -> float:
    """Thalami just behind the CSP; returns the x of their posterior edge."""
    k = 0.85 if plane == "tv" else 1.0  # the TV section grazes their upper pole
    length, width = a.thalamus_length_mm * k, a.thalamus_width_mm * k
    xt = x_front - 1.5 - length / 2
    echo = THALAMUS * (1.35 if plane == "tv" else 1.0)
    if a.thalami_fused:
        canvas.fill(ellipse(xt, 0.0, length / 2, width * 0.95), echo, THALAMI_ID)
    else:
        for side in (-1, 1):
            canvas.fill(
                ellipse(
                    xt, side * (a.third_ventricle_mm / 2 + width / 2), length / 2, width / 2, rot=side * 0.12
                ),
                echo,
                THALAMI_ID,
            )
        canvas.line(np.array([[xt - length / 2, 0], [xt + length / 2, 0]]), FLUID, a.third_ventricle_mm)
    return xt - length / 2


def _falx(canvas: Canvas, a: Anatomy, head: HeadFrame, segments: list[tuple[float, float]]) -> None:
    if not a.falx_present:
        return
    for x0, x1 in segments:
        xs = np.linspace(x0, x1, 24)
        ys = np.zeros_like(xs)
        if a.arachnoid_cyst_mm > 0:  # mass effect: the midline bows away from the cyst
            cx = a.cyst_position[0] * head.a
            ys -= 0.35 * a.arachnoid_cyst_mm * np.exp(-(((xs - cx) / a.arachnoid_cyst_mm) ** 2))
        canvas.line(np.stack([xs, ys], 1), FALX, 0.8)


def _draw_ventricles(canvas: Canvas, a: Anatomy, head: HeadFrame) -> None:
    if a.monoventricle:
        # Alobar holoprosencephaly: one crescentic ventricle around fused thalami.
        mono = ellipse(0.08 * head.a, 0.0, 0.55 * head.a, min(0.8 * head.b, a.atrium_mm * 0.9 + 6))
        canvas.fill(mono, FLUID, VENTRICLE_ID)
        s = np.linspace(0.0, 1.0, 10)
        plexus = np.stack([-0.25 * head.a - 6 * s, 0.35 * head.b + 2 * s], 1)
        canvas.fill(
            tube(plexus, np.full(10, max(2.0, a.atrium_mm * a.choroid_fill * 0.5))), CHOROID, CHOROID_ID
        )
        return
    vp = a.atrium_mm
    s = np.linspace(0.0, 1.0, 18)
    x = 0.2 * head.a - s * (0.2 + 0.55) * head.a
    if a.colpocephaly:
        y = head.b * (0.3 + 0.12 * s) + 0.25 * (vp - 6) * s
        body = np.full_like(s, 1.6)
    else:
        y = head.b * (0.24 + 0.26 * s**1.3) + 0.12 * max(0.0, vp - 8) * s
        body = np.full_like(s, 1.8 + 0.35 * max(0.0, vp - 6))
    width = body + (vp - body) * smoothstep(0.35, 0.85, s)
    y = np.minimum(y, [head.inner_y(xi) - wi / 2 - 3.0 for xi, wi in zip(x, width, strict=True)])
    center = np.stack([x, y], 1)
    dangle = 1.0 if vp >= 10 else 0.35
    for side in (1, -1):  # far side is the measured one; near side mostly hidden by reverberation
        mirror = np.array([1.0, side])
        struct = VENTRICLE_ID if side == 1 else OTHER
        canvas.fill(tube(center * mirror, width), FLUID, struct)
        canvas.fill(ellipse(x[-1], side * y[-1], vp / 2, vp / 2), FLUID, struct)
        # Choroid plexus in the atrium; in ventriculomegaly it "dangles" to the dependent wall.
        idx = s >= 0.5
        # An ovoid glomus: thickest in the atrium, tapering at both ends.
        taper = np.sin(np.linspace(0.25, np.pi - 0.25, int(idx.sum()))) ** 0.6
        plexus_w = np.minimum(width[idx] * a.choroid_fill, 7.0) * taper
        shift = (width[idx] - plexus_w) / 2 * dangle
        plexus_c = center[idx] + np.stack([np.zeros_like(shift), shift], 1)
        near_dim = 1.0 if side == 1 else 0.3  # the near hemisphere is smeared by reverberation
        canvas.fill(tube(plexus_c * mirror, plexus_w), CHOROID * near_dim, CHOROID_ID if side == 1 else OTHER)
        if side == 1 and a.choroid_cyst_mm > 0:
            k = int(0.6 * len(plexus_c))
            canvas.fill(
                ellipse(*plexus_c[k], a.choroid_cyst_mm / 2, a.choroid_cyst_mm / 2), FLUID, CHOROID_ID
            )


def _draw_sylvian(canvas: Canvas, a: Anatomy, head: HeadFrame) -> None:
    xs0 = 0.08 * head.a
    half = 6.5 + 0.4 * (a.ga_weeks - 19)
    xs = np.linspace(xs0 - half, xs0 + half, 20)
    outer = np.array([head.inner_y(x) + 0.3 for x in xs])
    u = (xs - xs0) / half
    # Shallow smooth insular depression at 20-22 w; deeper and more angular later.
    depth = a.sylvian_depth_mm * np.clip(1 - u**2, 0, 1) ** (0.9 - 0.08 * (a.ga_weeks - 19))
    inner = outer - 0.3 - depth
    poly = np.concatenate([np.stack([xs, outer], 1), np.stack([xs[::-1], inner[::-1]], 1)])
    canvas.fill(poly, CSF, SYLVIAN_ID)
    canvas.line(np.stack([xs, inner], 1), INSULA, 0.8, SYLVIAN_ID)


def _draw_cyst(canvas: Canvas, a: Anatomy, head: HeadFrame) -> None:
    if a.arachnoid_cyst_mm <= 0:
        return
    cx, cy = a.cyst_position[0] * head.a, a.cyst_position[1] * head.b
    r = a.arachnoid_cyst_mm / 2
    cy = min(cy, head.inner_y(cx) - r - 1.0)
    canvas.fill(ellipse(cx, cy, r + 0.4, r * 0.92 + 0.4), WALL, OTHER)
    canvas.fill(ellipse(cx, cy, r, r * 0.92), FLUID, OTHER)


def _draw_posterior_fossa(canvas: Canvas, a: Anatomy, head: HeadFrame, x_thal_back: float) -> None:
    tcd = a.tcd_mm
    x_occ = -head.a  # inner occipital table on the midline
    x_vp = x_occ + a.cisterna_magna_mm  # posterior edge of the vermis
    # Brainstem / cerebral peduncles in front of the cerebellum.
    canvas.fill(ellipse(x_thal_back - 4.0, 0.0, 4.5, 4.8), THALAMUS * 1.2, OTHER)
    # Cisterna magna: fluid between the occipital bone and the cerebellum (drawn first,
    # the cerebellum is painted over its anterior edge).
    if a.cisterna_magna_mm >= 0.8:
        half_width = 0.42 * tcd + 0.2 * a.cisterna_magna_mm
        phi = math.asin(min(0.95, half_width / head.b))
        t = np.linspace(math.pi - phi, math.pi + phi, 24)
        arc = np.stack([head.a * np.cos(t), head.b * np.sin(t)], 1)
        front = x_vp + 1.5 + (0.3 * tcd if a.open_fourth_ventricle else 0.0)
        poly = np.concatenate([arc, [[front, -half_width * 0.6], [front, half_width * 0.6]]])
        canvas.fill(poly, FLUID, CISTERNA_ID)
        if a.open_fourth_ventricle:  # Dandy-Walker: the cyst opens into the fourth ventricle
            canvas.fill(ellipse(x_vp + 0.35 * tcd, 0.0, 0.3 * tcd, 0.16 * tcd), FLUID, CISTERNA_ID)
    rh = 0.26 * tcd
    if a.banana_cerebellum:
        # Chiari II: "banana" cerebellum wrapped round the brainstem, tips at +-TCD/2.
        r_out = max(tcd / 2 + 0.5, 0.55 * tcd)
        xc = x_vp + r_out
        beta = math.asin(min(1.0, (tcd / 2) / r_out))
        t = np.linspace(math.pi - beta, math.pi + beta, 30)
        thick = 0.26 * tcd
        outer = np.stack([xc + r_out * np.cos(t), r_out * np.sin(t)], 1)
        inner = np.stack([xc + (r_out - thick) * np.cos(t[::-1]), (r_out - thick) * np.sin(t[::-1])], 1)
        band = np.concatenate([outer, inner])
        canvas.fill(band, CEREBELLAR_RIM, CEREBELLUM_ID)
        canvas.fill(
            np.concatenate([outer * [1, 0.92] + [0.5, 0], inner * [1, 0.92] - [0.3, 0]]),
            CEREBELLUM,
            CEREBELLUM_ID,
        )
        return
    splay = 0.35 if a.open_fourth_ventricle else 0.0
    for side in (-1, 1):
        cy = side * (tcd / 2 - rh)
        cx = x_vp + rh * (0.95 + splay)
        canvas.fill(ellipse(cx, cy, rh * 1.05, rh), CEREBELLAR_RIM, CEREBELLUM_ID)
        canvas.fill(ellipse(cx, cy, rh * 0.92, rh * 0.86), CEREBELLUM, CEREBELLUM_ID)
        # Folia: faint arcs inside each hemisphere.
        for k in (0.35, 0.6):
            t = np.linspace(-1.0, 1.0, 10) + (math.pi if side < 0 else 0.0)
            arc = np.stack([cx + rh * k * np.cos(t), cy + rh * k * np.sin(t)], 1)
            canvas.line(arc, CEREBELLAR_RIM * 0.6, 0.4)
    vermis_len = 0.5 * tcd * a.vermis_fraction
    if vermis_len > 0.5:
        # A hypoplastic vermis loses its inferior (posterior in this section) part.
        x0 = x_vp + 0.5 * tcd * (1 - a.vermis_fraction)
        canvas.fill(ellipse(x0 + vermis_len / 2, 0.0, vermis_len / 2, 0.15 * tcd), VERMIS, VERMIS_ID)


def _draw_streaks(canvas: Canvas, head: HeadFrame, rng: np.random.Generator, n: int) -> None:
    """Faint echogenic squiggles in the parenchyma (vessels, sulci, clutter)."""
    for _ in range(n):
        r, t = math.sqrt(rng.uniform(0.05, 0.75)), rng.uniform(0, 2 * math.pi)
        p0 = np.array([r * head.a * math.cos(t), r * head.b * math.sin(t)])
        steps = rng.normal(0, 1, (5, 2)).cumsum(0) * rng.uniform(0.6, 1.4)
        canvas.line(p0 + steps, float(rng.uniform(0.03, 0.09)), float(rng.uniform(0.25, 0.5)), BRAIN)


def _draw_fetal_body(canvas: Canvas, head: HeadFrame, rng: np.random.Generator) -> None:
    """Trunk or limbs near the head, so the sector is not empty fluid."""
    for _ in range(int(rng.integers(1, 4))):
        ang = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(1.3, 1.9)
        cx, cy = dist * head.a * math.cos(ang), dist * head.b * math.sin(ang) + 0.3 * head.b
        canvas.fill(
            ellipse(cx, cy, rng.uniform(8, 25), rng.uniform(5, 14), rot=rng.uniform(0, math.pi)),
            float(rng.uniform(0.006, 0.02)),
            OTHER,
        )


def paint_plane(
    anatomy: Anatomy,
    plane: str,
    pose: Pose,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    look: int = PLAIN,
    style: CenterStyle | None = None,
    extra: np.random.Generator | None = None,
) -> Canvas:
    """Step 1: the tissue map and structure map of one plane. The realistic look (``look=2``,
    with the centre's ``style`` and a generator of its own, ``extra``) adds :mod:`scene`'s parts."""
    if plane not in PLANE_REGIONS:
        raise ValueError(f"unknown plane {plane!r}")
    if plane == "tt" and look == PLAIN:
        raise ValueError("the transthalamic plane is drawn by the realistic look only")
    head = _head_frame(anatomy, plane)
    canvas = Canvas(size, pose)
    canvas.head_depth_mm = head.b
    if look == REALISTIC:
        scene.draw_surroundings(canvas, head, style, extra)
    else:
        _draw_fetal_body(canvas, head, rng)
    if look == REALISTIC:
        scene.draw_thick_skull(canvas, head, style, SKULL)
        canvas.fill(head.outline(0.0), CSF, OTHER)
        # Real parenchyma is darker than the tissue round the head, its network of lines brighter.
        canvas.fill(head.outline(-1.1), PARENCHYMA * 0.5, BRAIN)
        scene.draw_reticulum(canvas, BRAIN, style, extra)
    else:
        _draw_skull_and_brain(canvas, head)
    _draw_streaks(canvas, head, rng, int(rng.integers(25, 45)))
    x_csp_back = _draw_csp(canvas, anatomy, head)
    if plane == "tt":
        _draw_transthalamic(canvas, anatomy, head, x_csp_back)
    elif plane == "tv":
        _draw_ventricles(canvas, anatomy, head)
        x_thal_back = _draw_thalami(canvas, anatomy, x_csp_back, plane)
        _falx(
            canvas,
            anatomy,
            head,
            [(0.97 * head.a, x_csp_back + anatomy.csp_length_mm + 0.5), (x_thal_back - 1.0, -0.97 * head.a)],
        )
        _draw_sylvian(canvas, anatomy, head)
        _draw_cyst(canvas, anatomy, head)
    else:
        if anatomy.monoventricle:
            _draw_ventricles(canvas, anatomy, head)
        x_thal_back = _draw_thalami(canvas, anatomy, x_csp_back, plane)
        _falx(canvas, anatomy, head, [(0.97 * head.a, x_csp_back + anatomy.csp_length_mm + 0.5)])
        _draw_cyst(canvas, anatomy, head)
        _draw_posterior_fossa(canvas, anatomy, head, x_thal_back)
    if look == REALISTIC:
        scene.soften(canvas, (SKULL, scene.BONE_OTHER), style)
    return canvas


def _draw_transthalamic(canvas: Canvas, a: Anatomy, head: HeadFrame, x_csp_back: float) -> None:
    """The TT plane: frontal horns and CSP, the thalami in full, the hippocampal gyri behind them."""
    x_thal_back = _draw_thalami(canvas, a, x_csp_back, "tc")
    length = a.thalamus_length_mm
    for side in (-1, 1):  # the hippocampal gyri curve round the thalami's posterior poles
        t = np.linspace(0.35 * math.pi, 0.95 * math.pi, 16)
        centre = np.array([x_thal_back + 0.45 * length, side * (a.thalamus_width_mm + 1.5)])
        arc = np.stack(
            [centre[0] + 0.6 * length * np.cos(t), centre[1] + side * 0.45 * length * np.sin(t)], 1
        )
        canvas.line(arc, INSULA * 0.8, 1.0, OTHER)
        canvas.line(arc + np.array([0.0, side * 1.4]), CSF, 0.8, OTHER)  # the ambient cistern beside them
    _falx(
        canvas,
        a,
        head,
        [(0.97 * head.a, x_csp_back + a.csp_length_mm + 0.5), (x_thal_back - 6.0, -0.97 * head.a)],
    )
    _draw_sylvian(canvas, a, head)


# ---- image formation -----------------------------------------------------------------
@dataclass(frozen=True)
class SectorGeometry:
    height: int
    width: int
    apex_x: float
    apex_y: float  # negative: the virtual apex lies above the image
    r_min: float
    r_max: float
    half_angle: float  # radians

    @property
    def n_r(self) -> int:
        return self.height

    @property
    def n_a(self) -> int:
        return self.width


def sector_geometry(shape: tuple[int, int], style: CenterStyle) -> SectorGeometry:
    height, width = shape
    r0 = style.probe_radius_frac * width
    half = math.radians(style.sector_half_angle_deg)
    r_max = math.hypot(width / 2, height + r0)
    return SectorGeometry(height, width, width / 2, -r0, r0, r_max, half)


@lru_cache(maxsize=64)
def _sector_maps(g: SectorGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """polar->cartesian sampling maps, cartesian->polar maps, and the sector mask."""
    r = np.linspace(g.r_min, g.r_max, g.n_r, dtype=np.float32)
    a = np.linspace(-g.half_angle, g.half_angle, g.n_a, dtype=np.float32)
    rr, aa = np.meshgrid(r, a, indexing="ij")
    to_cart_x = (g.apex_x + rr * np.sin(aa)).astype(np.float32)
    to_cart_y = (g.apex_y + rr * np.cos(aa)).astype(np.float32)
    ys, xs = np.mgrid[0 : g.height, 0 : g.width].astype(np.float32)
    dx, dy = xs - g.apex_x, ys - g.apex_y
    rad = np.hypot(dx, dy)
    ang = np.arctan2(dx, dy)
    row = (rad - g.r_min) / (g.r_max - g.r_min) * (g.n_r - 1)
    col = (ang + g.half_angle) / (2 * g.half_angle) * (g.n_a - 1)
    inside = (row >= 0) & (row <= g.n_r - 1) & (col >= 0) & (col <= g.n_a - 1)
    return to_cart_x, to_cart_y, col.astype(np.float32), row.astype(np.float32), inside


def _kernel_gain(sigma_x: float, sigma_y: float) -> float:
    """RMS envelope of unit complex white noise after cv2.GaussianBlur with these sigmas."""
    energy = 1.0
    for sigma in (sigma_x, sigma_y):
        ksize = round(sigma * 8 + 1) | 1  # OpenCV's choice for float images
        kernel = cv2.getGaussianKernel(ksize, sigma)
        energy *= float((kernel**2).sum())
    return math.sqrt(2 * energy)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def form_image(
    canvas: Canvas,
    style: CenterStyle,
    rng: np.random.Generator,
    look: int = PLAIN,
    extra: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: B-mode image (float 0..1, HxW) and the sector mask.

    The steps draw from ``rng`` in a fixed order (texture, wall, reverberation, speckle, gain):
    the same seed gives the same image. The realistic look also averages ``style.persistence``
    frames of speckle and enhances edges (its draws from ``extra``).
    """
    if look == REALISTIC:
        style = replace(style, sector_half_angle_deg=style.sector_realistic_deg)
    g = sector_geometry(canvas.shape, style)
    to_x, to_y, from_col, from_row, inside = _sector_maps(g)
    E = _echogenicity(canvas, g, rng)
    Ep = cv2.remap(E.astype(np.float32), to_x, to_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    Lp = cv2.remap(canvas.L, to_x, to_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    dr_mm = (g.r_max - g.r_min) / (g.n_r - 1) * canvas.pose.spacing_mm
    Ep = _wall_and_shadow(Ep, Lp, g, dr_mm, rng)
    Ep = _reverberation(Ep, Lp, g, dr_mm, canvas.head_depth_mm, style, rng)
    env = _speckle(Ep, g, dr_mm, canvas.pose.spacing_mm, style, rng)
    if look == REALISTIC and style.persistence > 1:
        frames = [
            _speckle(Ep, g, dr_mm, canvas.pose.spacing_mm, style, extra) for _ in range(style.persistence - 1)
        ]
        env = scene.persist([env, *frames])
    if look == REALISTIC:  # real second-trimester brain planes are displayed darker, above a noise floor
        env = scene.noise_floor(env * np.float32(10 ** (-5 / 20)), style, extra)
    img = _display_window(env, g, style, rng)
    cart = cv2.remap(
        img.astype(np.float32),
        from_col,
        from_row,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if look == REALISTIC:
        cart = scene.despeckle(cart, style.despeckle)
        cart = scene.enhance_edges(cart, style.edge_enhance, canvas.pose.spacing_mm)
    cart[~inside] = 0
    return cart, inside


def _echogenicity(canvas: Canvas, g, rng: np.random.Generator) -> np.ndarray:
    """Parenchymal texture and specular bone on the drawn echogenicity map."""
    E = canvas.E
    # Parenchymal texture: slow multiplicative variation of tissue echogenicity.
    tissue = canvas.L != 0
    texture = cv2.exp(0.35 * _smooth_noise(rng, E.shape, 12) + 0.2 * _smooth_noise(rng, E.shape, 40))
    E = np.where(tissue, E * texture, E)
    # Specular bone: brightest where the beam meets the skull at right angles.
    bone = canvas.L == SKULL
    ys, xs = np.nonzero(bone)
    if len(xs):
        rx, ry = xs - canvas.pose.center_x, ys - canvas.pose.center_y
        bx, by = xs - g.apex_x, ys - g.apex_y
        cos = np.abs(rx * bx + ry * by) / (np.hypot(rx, ry) * np.hypot(bx, by) + 1e-6)
        E = E.copy()
        E[ys, xs] *= 0.06 + 0.94 * cos**2
    return E


def _wall_and_shadow(Ep: np.ndarray, Lp: np.ndarray, g, dr_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Maternal wall layers near the probe, and the shadow behind bone (polar frame)."""
    # Maternal abdominal wall and uterus: layers that follow the probe's curvature.
    wall_rows = int(rng.uniform(0.06, 0.2) * g.n_r)
    if wall_rows > 0:
        layers = np.repeat(rng.uniform(0.002, 0.03, 8), max(1, wall_rows // 8 + 1))[:wall_rows]
        profile = np.convolve(layers, np.ones(3) / 3, mode="same").astype(np.float32)
        outside = Lp[:wall_rows] == BACKGROUND
        Ep[:wall_rows] = np.where(outside, profile[:, None], Ep[:wall_rows])
    # Bone attenuation: everything behind thick skull (or other fetal bone) is shadowed.
    bone_p = np.isin(Lp, (SKULL, scene.BONE_OTHER)).astype(np.float32)
    path = np.cumsum(bone_p, axis=0, dtype=np.float32) * np.float32(dr_mm)
    return Ep * cv2.exp(-0.3 * path)


def _reverberation(
    Ep: np.ndarray,
    Lp: np.ndarray,
    g,
    dr_mm: float,
    head_depth: float,
    style: CenterStyle,
    rng: np.random.Generator,
) -> np.ndarray:
    """Near-field reverberation: haze and bands below the near skull table."""
    bone_p = (Lp == SKULL).astype(np.float32)
    hit = bone_p.argmax(axis=0)
    has_bone = bone_p.max(axis=0) > 0
    rows = np.arange(g.n_r, dtype=np.float32)[:, None]
    below = (rows - hit[None, :].astype(np.float32)) * np.float32(dr_mm)
    period = float(rng.uniform(2.5, 4.5))
    haze = np.exp(-np.clip(below, 0, None) / (0.3 * head_depth)) * (
        0.6 + 0.4 * np.cos(2 * np.pi * below / period)
    )
    haze = np.where((below > 0) & has_bone[None, :] & (Lp != BACKGROUND), haze, 0)
    return Ep + (0.012 * style.reverb_strength) * haze.astype(np.float32)


def _speckle(
    Ep: np.ndarray, g, dr_mm: float, sp: float, style: CenterStyle, rng: np.random.Generator
) -> np.ndarray:
    """Rayleigh speckle: complex scatterers, PSF blur (lateral grows with depth), envelope."""
    amp = np.sqrt(np.maximum(Ep, 0)).astype(np.float32)
    re = rng.standard_normal(amp.shape, dtype=np.float32) * amp
    im = rng.standard_normal(amp.shape, dtype=np.float32) * amp
    sig_ax = max(0.3, style.speckle_axial / dr_mm)
    envs = []
    for growth in (1.0, style.lateral_growth):
        arc_mm = (g.r_min + 0.5 * (g.r_max - g.r_min)) * (2 * g.half_angle / (g.n_a - 1)) * sp
        sig_lat = max(0.3, style.speckle_lateral * growth / arc_mm)
        b_re = cv2.GaussianBlur(re, (0, 0), sigmaX=sig_lat, sigmaY=sig_ax)
        b_im = cv2.GaussianBlur(im, (0, 0), sigmaX=sig_lat, sigmaY=sig_ax)
        # Blurring averages scatterers; divide by the kernel's energy so that the mean
        # envelope power equals the echogenicity whatever the PSF.
        envs.append(cv2.magnitude(b_re, b_im) / np.float32(_kernel_gain(sig_lat, sig_ax)))
    depth = np.linspace(0, 1, g.n_r, dtype=np.float32)[:, None]
    return envs[0] * (1 - depth) + envs[1] * depth


def _display_window(env: np.ndarray, g, style: CenterStyle, rng: np.random.Generator) -> np.ndarray:
    """Gain, log compression and the machine's display window (polar frame, 0..1)."""
    # Time-gain compensation that is never quite flat.
    tgc = 1 + style.tgc_ripple * _smooth_noise(rng, (g.n_r, 1), 5)[:, :1]
    env = env * tgc * 10 ** (style.gain_db / 20)
    db = np.float32(20 / np.log(10)) * cv2.log(env.astype(np.float32) + np.float32(1e-6))
    # Display window: bone near white, parenchyma low grey, fluid black.
    return cv2.pow(
        np.clip((db + np.float32(style.dynamic_range_db - 12.0)) / np.float32(style.dynamic_range_db), 0, 1),
        style.gamma,
    )


# ---- display -------------------------------------------------------------------------
def _overlays(
    img8: np.ndarray,
    style: CenterStyle,
    anatomy: Anatomy,
    plane: str,
    pose: Pose,
    head: HeadFrame,
    rng: np.random.Generator,
) -> None:
    height, width = img8.shape[:2]
    scale = width / 900
    thick = max(1, round(width / 400))
    white = 235

    def text(message: str, x: float, y: float, size_factor: float = 0.8) -> None:
        cv2.putText(
            img8,
            message,
            (int(x), int(y)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale * size_factor,
            white,
            thick,
            cv2.LINE_AA,
        )

    if style.text and width >= 96:
        weeks, days = int(anatomy.ga_weeks), round((anatomy.ga_weeks % 1) * 7) % 7
        text(f"{style.name} {style.machine}", 6 * scale, 22 * scale)
        text(f"GA {weeks}w{days}d  {plane.upper()}", width - 250 * scale, 22 * scale)
        text("C5-1 MI 0.9 TIs 0.3", 6 * scale, height - 12 * scale, 0.7)
    if style.depth_scale:
        step = 10.0 / pose.spacing_mm  # a dot every centimetre
        for k in range(1, int(height / step) + 1):
            y = int(k * step)
            cv2.circle(img8, (int(width - 8 * scale) - 2, y), max(1, thick), white, -1)
    if rng.random() < style.callipers_rate:
        # Callipers across the BPD (TV) or the TCD (TC), as a sonographer would leave them.
        if plane == "tv":
            p = np.array([[0.0, -head.b - head.skull / 2], [0.0, head.b - head.skull / 2]])
            label = f"BPD {anatomy.bpd_mm / 10:.2f}cm"
        else:
            x = -head.a + anatomy.cisterna_magna_mm + 0.26 * anatomy.tcd_mm
            p = np.array([[x, -anatomy.tcd_mm / 2], [x, anatomy.tcd_mm / 2]])
            label = f"TCD {anatomy.tcd_mm / 10:.2f}cm"
        px = pose.to_px(p)
        arm = max(2, round(5 * scale))
        for x, y in px:
            x, y = round(x), round(y)
            cv2.line(img8, (x - arm, y), (x + arm, y), white, thick)
            cv2.line(img8, (x, y - arm), (x, y + arm), white, thick)
        if width >= 96:
            text(label, 6 * scale, height - 40 * scale)


def _to_display(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _colourise(img8: np.ndarray, style: CenterStyle) -> np.ndarray:
    if not style.sepia:
        return img8
    f = img8.astype(np.float32) / 255
    rgb = np.stack([f**0.9 * 255, f**1.05 * 225, f**1.3 * 180], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def region_boxes(
    L: np.ndarray, visible: np.ndarray, regions: tuple[str, ...], spacing_mm: float
) -> dict[str, tuple[float, float, float, float]]:
    """Tight boxes (plus a small margin) round the visible pixels of each region."""
    size_y, size_x = L.shape
    margin = BOX_MARGIN_MM / spacing_mm + 0.5
    boxes = {}
    for region in regions:
        mask = np.isin(L, REGION_STRUCTURES[region]) & visible
        if mask.sum() < MIN_REGION_PIXELS:
            continue
        ys, xs = np.nonzero(mask)
        x0, x1 = max(0.0, xs.min() - margin), min(float(size_x), xs.max() + 1 + margin)
        y0, y1 = max(0.0, ys.min() - margin), min(float(size_y), ys.max() + 1 + margin)
        boxes[region] = (float(x0), float(y0), float(x1), float(y1))
    return boxes


def render_plane(
    anatomy: Anatomy,
    plane: str,
    pose: Pose,
    style: CenterStyle,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    keep_structures: bool = False,
    look: int = PLAIN,
    extra: np.random.Generator | None = None,
) -> Rendered:
    """One plane as a B-mode image with its region boxes; the realistic look also boxes the
    fetal head (the skull's outer ellipse) in every plane."""
    if look == REALISTIC and extra is None:
        raise ValueError("the realistic look needs a generator of its own (extra)")
    canvas = paint_plane(anatomy, plane, pose, size, rng, look, style, extra)
    img, inside = form_image(canvas, style, rng, look, extra)
    regions = PLANE_REGIONS[plane] + ((HEAD_BOX,) if look == REALISTIC else ())
    boxes = region_boxes(canvas.L, inside, regions, pose.spacing_mm)
    info = {}
    if plane == "tc":
        info["cisterna_magna_in_view"] = float(cisterna_magna_in_view(anatomy, pose, inside))
    img8 = _to_display(img)
    _overlays(img8, style, anatomy, plane, pose, _head_frame(anatomy, plane), rng)
    image = _colourise(img8, style)
    if look == REALISTIC:
        image = scene.jpeg(image, style.jpeg_quality)
    return Rendered(
        image=image,
        boxes=boxes,
        pose=pose,
        structures=np.where(inside, canvas.L, 0).astype(np.uint8) if keep_structures else None,
        info=info,
    )


def cisterna_magna_in_view(anatomy: Anatomy, pose: Pose, inside: np.ndarray) -> bool:
    """Whether the cisterna magna's depth can be read off the TC image: the midline from the
    inner occipital table to the vermis (1 mm past its edge) lies wholly in the imaged sector.
    An obliterated cisterna (no fluid to box) still has a depth there, near zero."""
    x_occ = -_head_frame(anatomy, "tc").a
    xs = np.arange(x_occ - 0.5, x_occ + anatomy.cisterna_magna_mm + 1.0, 0.25)
    px = np.round(pose.to_px(np.stack([xs, np.zeros_like(xs)], 1))).astype(int)
    height, width = inside.shape
    within = (px[:, 0] >= 0) & (px[:, 0] < width) & (px[:, 1] >= 0) & (px[:, 1] < height)
    return bool(within.all() and inside[px[:, 1], px[:, 0]].all())


def sample_pose(
    anatomy: Anatomy,
    style: CenterStyle,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    look: int = PLAIN,
    wide_zoom: bool = False,
    zoom_range: tuple[float, float] = REALISTIC_ZOOM,
) -> Pose:
    """Head position, rotation, flip and zoom for one acquisition (the realistic look zooms in
    as real second-trimester brain planes do; with ``wide_zoom``, half its acquisitions frame
    the head anywhere in ``zoom_range``, as fractions of the width its long axis fills: by
    default from a third of the width to all of it). Above 1 the head is larger than the
    image, cut at its sides, and may be cut at its top and bottom too."""
    height, width = frame_shape(size)
    zoom = (style.zoom_realistic if look == REALISTIC else style.zoom) * rng.uniform(0.9, 1.08)
    fill_height = 0.88
    if look == REALISTIC and wide_zoom:
        if rng.random() < REALISTIC_FREE_ZOOM:
            # Real brain planes frame the head from a third of the width to all of it.
            zoom = math.exp(rng.uniform(math.log(zoom_range[0]), math.log(zoom_range[1])))
        fill_height = float(rng.uniform(0.88, 1.0))
        # A head wider than the image may be taller than it as well (no draw of its own, and a
        # factor of 1 within the default range: its images stay as they were).
        fill_height *= max(1.0, zoom)
    spacing = (anatomy.ofd_mm + 2 * anatomy.skull_mm) / (zoom * width)
    # A wide image may be too low for the head across: zoom out until it fits its height.
    spacing = max(spacing, (anatomy.bpd_mm + 2 * anatomy.skull_mm) / (fill_height * height))
    half_h = (anatomy.bpd_mm / 2 + anatomy.skull_mm) / spacing
    cx = width * (0.5 + rng.uniform(-0.07, 0.07))
    cy = height * rng.uniform(0.5, 0.6)
    margin = 0.04 if fill_height <= 0.9 else 0.0
    if 2 * half_h <= height:
        cy = min(cy, height - half_h - margin * height)  # keep the far skull inside the image
    return Pose(
        center_x=float(cx),
        center_y=float(cy),
        angle_deg=float(rng.uniform(-22, 22)),
        flip=bool(rng.random() < 0.5),
        spacing_mm=float(spacing),
    )
