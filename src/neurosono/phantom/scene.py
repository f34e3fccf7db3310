"""What the realistic look (generator 2) adds to a plane, beside the head's anatomy.

Side by side with real second-trimester scans, a plain phantom shows a small head floating in
black, a thin even skull and a flat grey brain. Generator 2 draws what a real scan shows:

* **surroundings**: the head lies in amniotic fluid (a rim of varying width round the skull,
  and pockets), inside the uterus: textured maternal and uterine tissue everywhere else, often
  a thick granular placenta on one side with the bright uterine wall beyond it, and fetal
  body parts (trunk with a dotted spine and ribs, limbs with bright long bones that cast
  shadows);
* **skull**: a thick echo, brightest where the beam meets it square and fading at the sides
  (the specular law of image formation does that), with soft edges;
* **brain**: a fine reticular texture of echogenic lines (vessels, sulci) over the
  parenchyma, and soft boundaries between structures;
* **machine processing** (``form_image``): frame persistence, which averages speckle, and
  edge enhancement.

Every draw comes from a generator of its own (``extra``), so the plain look's images are
unchanged by what this module adds.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from neurosono.phantom.centers import CenterStyle

AMNIOTIC = 0.00006
BONE_OTHER = 4  # structure id: fetal bone outside the head (limbs, spine), which shadows too
SOFT_TISSUE = 0.012
LONG_BONE = 0.55
UTERINE_WALL = 0.09


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    small = rng.standard_normal((max(2, cells[0]), max(2, cells[1]))).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _cells(shape: tuple[int, int], spacing_mm: float, feature_mm: float) -> tuple[int, int]:
    return (round(shape[0] * spacing_mm / feature_mm), round(shape[1] * spacing_mm / feature_mm))


def draw_surroundings(canvas, head, style: CenterStyle, extra: np.random.Generator) -> None:
    """Tissue, placenta, uterine wall and amniotic fluid round the head (before the head is drawn)."""
    shape, sp = canvas.shape, canvas.pose.spacing_mm
    coarse = smooth_noise(extra, shape, _cells(shape, sp, 22.0))
    fine = smooth_noise(extra, shape, _cells(shape, sp, 5.0))
    canvas.E[:] = style.tissue_level * np.exp(0.55 * coarse + 0.35 * fine)
    if extra.random() < style.placenta_rate:
        _draw_placenta(canvas, head, style, extra)
    # Amniotic fluid: an irregular rim round the skull, and a few pockets.
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    wobble = np.convolve(np.tile(extra.normal(0, 1, 24), 3), np.ones(5) / 5, mode="same")[24:48]
    margin = style.fluid_margin_mm * (1 + 0.6 * np.interp(t, np.linspace(0, 2 * np.pi, 24), wobble))
    grow = head.skull + 2.5 + np.clip(margin, 0.5, None)
    rim = np.stack([(head.a + grow) * np.cos(t), (head.b + grow) * np.sin(t)], axis=1)
    canvas.fill(rim, AMNIOTIC)
    for _ in range(int(extra.integers(0, 4))):
        angle, dist = extra.uniform(0, 2 * math.pi), extra.uniform(1.3, 2.2)
        centre = (dist * head.a * math.cos(angle), dist * head.b * math.sin(angle))
        canvas.fill(_blob(centre, extra.uniform(6, 22), extra.uniform(4, 12), extra), AMNIOTIC)
    draw_fetal_body(canvas, head, style, extra)


def _blob(centre: tuple[float, float], rx: float, ry: float, extra: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    r = 1 + 0.18 * np.sin(3 * t + extra.uniform(0, 6)) + 0.1 * np.sin(5 * t + extra.uniform(0, 6))
    rot = extra.uniform(0, math.pi)
    x, y = rx * r * np.cos(t), ry * r * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)


def _draw_placenta(canvas, head, style: CenterStyle, extra: np.random.Generator) -> None:
    """A thick granular band tangent to the fluid round the head, the uterine wall beyond it."""
    phi = extra.uniform(0, 2 * math.pi)
    thick = extra.uniform(14, 32)
    dist = max(head.a, head.b) + head.skull + style.fluid_margin_mm + thick / 2 + extra.uniform(2, 10)
    centre = np.array([dist * math.cos(phi), dist * math.sin(phi)])
    length = extra.uniform(2.2, 4.0) * head.a
    t = np.linspace(-1, 1, 40)
    tangent = np.array([-math.sin(phi), math.cos(phi)])
    normal = np.array([math.cos(phi), math.sin(phi)])
    bend = 0.25 * length * t**2  # curves away from the head, as the uterus does
    spine = centre + np.outer(t * length, tangent) + np.outer(bend, normal)
    widths = thick * np.sqrt(np.clip(1 - t**2, 0.05, 1))
    left = spine + normal * widths[:, None] / 2
    right = spine - normal * widths[:, None] / 2
    canvas.fill(np.concatenate([left, right[::-1]]), style.tissue_level * extra.uniform(1.6, 2.6))
    canvas.line(spine + normal * (widths[:, None] / 2 + 1.5), UTERINE_WALL, extra.uniform(1.0, 2.5))


def draw_fetal_body(canvas, head, style: CenterStyle, extra: np.random.Generator) -> None:
    """A trunk with spine and ribs, and limbs with bright long bones, beside the head."""
    for _ in range(int(extra.integers(1, 4))):
        angle, dist = extra.uniform(0, 2 * math.pi), extra.uniform(1.35, 2.1)
        centre = (dist * head.a * math.cos(angle), dist * head.b * math.sin(angle))
        if extra.random() < 0.45:  # the trunk: soft tissue, a row of vertebrae, a few ribs
            rx, ry = extra.uniform(20, 40), extra.uniform(14, 26)
            canvas.fill(_blob(centre, rx, ry, extra), SOFT_TISSUE * extra.uniform(0.8, 1.6))
            side = extra.choice([-1.0, 1.0])
            for k in range(7):
                x = centre[0] + (k - 3) * rx * 0.22
                canvas.fill(_ellipse((x, centre[1] + side * 0.7 * ry), 1.6, 1.2), LONG_BONE, BONE_OTHER)
            for k in range(3):
                x = centre[0] + (k - 1) * rx * 0.4
                arc_t = np.linspace(-1.2, 1.2, 12)
                arc = np.stack([x + 4 * np.sin(arc_t), centre[1] + side * 0.7 * ry * np.cos(arc_t)], axis=1)
                canvas.line(arc, LONG_BONE * 0.6, 0.8, BONE_OTHER)
        else:  # a limb: soft tissue round a long bone
            length, rot = extra.uniform(18, 35), extra.uniform(0, math.pi)
            d = np.array([math.cos(rot), math.sin(rot)]) * length / 2
            p0, p1 = np.array(centre) - d, np.array(centre) + d
            canvas.fill(_capsule(p0, p1, extra.uniform(3.5, 6.0)), SOFT_TISSUE * extra.uniform(0.8, 1.5))
            canvas.line(
                np.stack([p0 * 0.9 + p1 * 0.1, p0 * 0.1 + p1 * 0.9]),
                LONG_BONE,
                extra.uniform(1.2, 2.2),
                BONE_OTHER,
            )


def _ellipse(centre: tuple[float, float], rx: float, ry: float, n: int = 16) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + rx * np.cos(t), centre[1] + ry * np.sin(t)], axis=1)


def _capsule(p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
    d = p1 - p0
    angle = math.atan2(d[1], d[0])
    t0 = np.linspace(angle + math.pi / 2, angle + 3 * math.pi / 2, 10)
    t1 = np.linspace(angle - math.pi / 2, angle + math.pi / 2, 10)
    return np.concatenate(
        [
            np.stack([p0[0] + radius * np.cos(t0), p0[1] + radius * np.sin(t0)], axis=1),
            np.stack([p1[0] + radius * np.cos(t1), p1[1] + radius * np.sin(t1)], axis=1),
        ]
    )


def draw_thick_skull(canvas, head, style: CenterStyle, skull_id: int) -> None:
    """The skull's echo as thick as a real one: bone grown outward by the centre's factor."""
    canvas.fill(head.outline(head.skull * style.skull_thickness + 2.5), SOFT_TISSUE * 1.4)
    canvas.fill(
        head.outline(head.skull * style.skull_thickness), 3.0, skull_id
    )  # a real skull saturates the display


def draw_reticulum(canvas, brain_id: int, style: CenterStyle, extra: np.random.Generator) -> None:
    """A network of fine echogenic lines (vessels, sulci) over the parenchyma."""
    shape, sp = canvas.shape, canvas.pose.spacing_mm
    mask = brain_id == canvas.L
    if not mask.any():
        return
    lines = np.zeros(shape, np.float32)
    # Lines about a millimetre wide (as wide as the probe resolves), where a smooth random
    # field crosses zero: long, curving and joined, as the vessels and sulci of a real brain are.
    for feature_mm, width, weight in ((7.0, 0.22, 1.0), (14.0, 0.15, 0.6)):
        noise = smooth_noise(extra, shape, _cells(shape, sp, feature_mm))
        lines += weight * np.clip(1 - np.abs(noise) / width, 0, 1)
    canvas.E[mask] *= 1 + style.reticulum * lines[mask]


def soften(canvas, keep: tuple[int, ...], style: CenterStyle) -> None:
    """Soft boundaries: the tissue map blurred by the centre's blur, bone left sharp."""
    sigma = style.blur_mm / canvas.pose.spacing_mm
    if sigma < 0.3:
        return
    blurred = cv2.GaussianBlur(canvas.E, (0, 0), sigma)
    hard = np.isin(canvas.L, keep)
    canvas.E = np.where(hard, canvas.E, blurred).astype(np.float32)


def noise_floor(env: np.ndarray, style: CenterStyle, extra: np.random.Generator) -> np.ndarray:
    """The receiver's noise under the echoes: fluid shows as dark grain, not pure black. Its
    level is the display level ``style.noise_floor`` would have after gain and the display window."""
    db = (style.noise_floor * style.dynamic_range_db - style.dynamic_range_db + 12.0) - style.gain_db
    level = np.float32(10 ** (db / 20))
    noise = np.hypot(
        extra.standard_normal(env.shape, dtype=np.float32), extra.standard_normal(env.shape, dtype=np.float32)
    )
    return np.sqrt(env * env + (level * noise / np.float32(math.sqrt(2))) ** 2).astype(np.float32)


def persist(envelopes: list[np.ndarray]) -> np.ndarray:
    """Frame persistence: the mean of several frames' envelopes (independent speckle)."""
    return np.mean(envelopes, axis=0).astype(np.float32)


def despeckle(img: np.ndarray, strength: float) -> np.ndarray:
    """The machine's speckle reduction: an edge-preserving (bilateral) smoothing of the display
    image, as strong as the centre's setting."""
    if strength <= 0:
        return img
    smooth = cv2.bilateralFilter(
        img.astype(np.float32), d=0, sigmaColor=0.15 + 0.25 * strength, sigmaSpace=2.0 + 4.0 * strength
    )
    return (strength * smooth + (1 - strength) * img).astype(np.float32)


def jpeg(image8: np.ndarray, quality: int) -> np.ndarray:
    """The export's JPEG compression (quality 0: none), decoded back to pixels."""
    if quality <= 0:
        return image8
    ok, data = cv2.imencode(".jpg", image8, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        return image8
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def enhance_edges(img: np.ndarray, amount: float, spacing_mm: float) -> np.ndarray:
    """The machine's edge enhancement: an unsharp mask of about a millimetre."""
    if amount <= 0:
        return img
    blurred = cv2.GaussianBlur(img, (0, 0), max(0.8, 1.0 / spacing_mm))
    return np.clip(img + amount * (img - blurred), 0, 1).astype(np.float32)
