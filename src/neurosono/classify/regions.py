"""From a case's images and the detector's boxes to HexaNet's input.

For each region, the best box is taken from the plane(s) where the region
belongs (``dataset.yaml`` planes). The CSP and the thalami appear in both TV and
TC: we take the more confident of the two detections, because the view in which
the detector is surest is the better-seen structure, and a region counts as
absent only when neither plane shows it (absence is itself a finding).

Each region becomes a square grey crop (box plus a context margin, resized to
``CROP`` pixels, standardised per crop so that machine gain does not matter) and
six scalars: present, detector confidence, box width and height in mm / 20 when
the pixel spacing is known (otherwise relative to the head), and box width and
height relative to the head's size in that plane. The relative sizes matter
because the normal size of a structure grows with gestational age, which the
model is not told: a 19 mm cerebellum is normal at 20 weeks and hypoplastic at
23, and the head's own size is the proxy for age. The head's size is either the
span of the detected regions in that image (the default, ``head_size="span"``)
or the skull's short axis (BPD-like, :mod:`neurosono.classify.skull`;
``head_size="skull"``, with the span where no skull can be fitted).

Models that take the gestational age (:mod:`neurosono.classify.gestation`) get two more
numbers per region, its size *for age*: box width and height in mm divided by the age in
weeks (zero when either is unknown). Handing the age over as one more input was not
enough: the network had to learn the small difference between two strongly correlated
numbers (a cerebellum's mm and the weeks) from a few cases, and did not (0 of 8
hypoplasias, as without the age). The ratio puts that difference in one number.

Head-scaled crops (``crop_fractions``; ``classify train --crop-scale head``): a crop cut
from the box alone always shows its structure at the same size, so the network cannot see
that a cerebellum is small; only the box's width and height say so, and the detector's box
edges are a few pixels off (on the seed-303 phantom cohort, the cerebellum box's larger
side against the skull separates hypoplasia from normal cerebella with AUC 0.98 on the
true boxes but 0.93 on the detector's). A head-scaled crop is centred on the box but its
side is a fixed fraction of the head's size (one fraction per region, learnt from the
normal training cases), so the structure's size relative to the head is in the picture,
measured by the network from the anatomy itself rather than from the box's edges.

Age-scaled crops (``age_crop_fractions``; ``--crop-scale age``, for gestational-age models):
where the age and the pixel spacing are known the side is a fraction of the age in weeks
taken as millimetres, the clinical yardstick (a normal transverse cerebellar diameter is
about the age in weeks, in mm; hypoplasia is below it by 2 mm or more), so a structure
small *for age* looks small; without them the crop falls back to the head scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from neurosono.classify.networks import N_SCALARS
from neurosono.classify.skull import fit_skull
from neurosono.detect.predict import Detection
from neurosono.models import HEAD_REGION

CROP = 64
MARGIN = 0.25  # context on each side, as a fraction of the box size
MM_SCALE = 20.0  # sizes in mm are divided by this to sit near 1
N_SIZE_FOR_AGE = 2  # box width and height in mm per week of gestational age
# A head-scaled crop's scale is its size signal: training jitters it this much less than a box crop's.
HEAD_CROP_SCALE_JITTER = 0.25
# Head-scaled windows hold the region's normal size at this centile, plus the margin.
HEAD_CROP_CENTILE = 90


def brain_regions(regions: Sequence[str]) -> list[str]:
    """The regions stage 2 reads a crop of: every region but the fetal head, whose box gives
    the head's size instead."""
    return [r for r in regions if r != HEAD_REGION]


def brain_planes(planes: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """TV and TC, the planes the decision reads, with their brain regions."""
    return {p: brain_regions(names) for p, names in planes.items() if p in ("tv", "tc")}


def dataset_brain_planes(spec) -> dict[str, list[str]]:
    """:func:`brain_planes` of a dataset's spec (``DatasetSpec``: its planes and their regions)."""
    return brain_planes({name: plane.regions for name, plane in spec.planes.items()})


def split_head(
    detections: list[Detection], detector_regions: Sequence[str], regions: Sequence[str]
) -> tuple[list[Detection], dict[str, tuple[float, float, float, float]]]:
    """Stage 1's detections as stage 2 reads them: the brain regions' detections with class ids
    into ``regions`` (by name), and each plane's most confident fetal-head box."""
    index = {name: k for k, name in enumerate(regions)}
    brain, heads = [], {}
    for d in detections:
        name = detector_regions[d.class_id]
        if name == HEAD_REGION:
            if d.plane not in heads or d.confidence > heads[d.plane][0]:
                heads[d.plane] = (d.confidence, d.box)
        elif name in index:
            brain.append(Detection(d.plane, index[name], d.confidence, d.box))
    return brain, {plane: box for plane, (_, box) in heads.items()}


def check_stage2_regions(detector_regions: Sequence[str], regions: Sequence[str], where: str) -> None:
    """Stage 2's regions must be the detector's brain regions, in order (the detector may also box
    the fetal head)."""
    from neurosono.detect.model import RegionMismatchError

    if brain_regions(detector_regions) != list(regions):
        raise RegionMismatchError(
            f"{where}: stage 2 reads the regions {list(regions)}, the detector finds {list(detector_regions)}"
        )


def head_box_sizes(head_boxes: dict[str, tuple[float, float, float, float]]) -> dict[str, float | None]:
    """Each plane's head size from its fetal-head box: the geometric mean of the box's sides,
    which changes little as the head's ellipse turns."""
    return {p: float(np.sqrt((b[2] - b[0]) * (b[3] - b[1]))) for p, b in head_boxes.items()}


def select_regions(
    detections: list[Detection], regions: list[str], planes: dict[str, list[str]]
) -> list[Detection | None]:
    """Best detection of each region from the planes where it belongs (None: not found)."""
    chosen: list[Detection | None] = []
    for class_id, region in enumerate(regions):
        allowed = {p for p, names in planes.items() if region in names}
        candidates = [d for d in detections if d.class_id == class_id and d.plane in allowed]
        chosen.append(max(candidates, key=lambda d: d.confidence) if candidates else None)
    return chosen


def crop_box(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    size: int = CROP,
    margin: float = MARGIN,
    jitter: float = 0.0,
    rng: np.random.Generator | None = None,
    side: float | None = None,
) -> np.ndarray:
    """Square crop round a box with context, resized and standardised (float32 [size, size]).

    ``side``: the crop's side in pixels (a head-scaled crop); by default the box's larger
    side plus ``margin`` on each side.
    """
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    scale_jitter = jitter
    if side is None:
        side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    else:
        scale_jitter = jitter * HEAD_CROP_SCALE_JITTER
    if jitter and rng is not None:
        cx += rng.normal(0, jitter) * (x1 - x0)
        cy += rng.normal(0, jitter) * (y1 - y0)
        side *= float(np.exp(rng.normal(0, scale_jitter)))
    side = max(side, 4.0)
    # An affine warp crops and resizes in one step, padding with black outside the image.
    scale = size / side
    matrix = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]], np.float32)
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    crop = crop.astype(np.float32)
    return (crop - crop.mean()) / (crop.std() + 1e-3)


# Detections at least this sure place the head's centre for the skull fit.
CENTRE_CONFIDENCE = 0.25


def head_extent(detections: list[Detection], plane: str) -> float | None:
    """Diagonal of the span of the detected regions: the fallback head size."""
    boxes = [d.box for d in detections if d.plane == plane]
    if not boxes:
        return None
    arr = np.asarray(boxes)
    return float(np.hypot(arr[:, 2].max() - arr[:, 0].min(), arr[:, 3].max() - arr[:, 1].min()))


def head_sizes(images: dict[str, np.ndarray], detections: list[Detection]) -> dict[str, float | None]:
    """Each plane's head size in pixels: the skull's short axis, or None where it cannot be fitted.

    The skull is searched round the middle of the confident detections (the image's
    centre when there are none).
    """
    sizes: dict[str, float | None] = {}
    for plane, image in images.items():
        sure = [d.box for d in detections if d.plane == plane and d.confidence >= CENTRE_CONFIDENCE]
        if sure:
            boxes = np.asarray(sure)
            centre = (float(boxes[:, [0, 2]].mean()), float(boxes[:, [1, 3]].mean()))
        else:
            centre = (image.shape[1] / 2, image.shape[0] / 2)
        fit = fit_skull(image, centre)
        sizes[plane] = fit.short_axis_px if fit else None
    return sizes


def head_extent_px(
    detection: Detection,
    detections: list[Detection],
    images: dict[str, np.ndarray],
    head_px: dict[str, float | None],
) -> float:
    """The head size a region is measured against: its plane's skull size where fitted,
    else the span of the plane's detections, else the image's larger side."""
    plane = detection.plane
    return head_px.get(plane) or head_extent(detections, plane) or max(images[plane].shape)


def learn_crop_fractions(
    samples: Sequence[tuple[dict[str, np.ndarray], list[Detection], dict[str, float | None]]],
    regions: list[str],
    planes: dict[str, list[str]],
) -> tuple[float, ...]:
    """Each region's crop side as a fraction of a reference length.

    ``samples``: (images, detections, reference) of normal cases, ``reference`` each
    plane's reference length in pixels (skull short axis; or the age in weeks as mm; a
    plane without one: the span of its detections). The window holds the region's box at
    the ``HEAD_CROP_CENTILE`` of those cases plus the usual margin, so a normal structure
    fills it about as a box crop would and an abnormal size shows.
    """
    ratios: list[list[float]] = [[] for _ in regions]
    for images, detections, reference in samples:
        for r, det in enumerate(select_regions(detections, regions, planes)):
            if det is None or det.plane not in images:
                continue
            w, h = det.box[2] - det.box[0], det.box[3] - det.box[1]
            ratios[r].append(max(w, h) / head_extent_px(det, detections, images, reference))
    missing = [name for name, values in zip(regions, ratios, strict=True) if not values]
    if missing:
        raise ValueError(f"no normal training case shows {', '.join(missing)}: cannot size its crop")
    return tuple(
        round(float(np.percentile(values, HEAD_CROP_CENTILE)) * (1 + 2 * MARGIN), 4) for values in ratios
    )


def age_length_px(ga_weeks: float, spacing_mm: float) -> float:
    """The age-scaled crops' reference: the age in weeks as millimetres, in pixels."""
    return ga_weeks / spacing_mm


def region_inputs(
    images: dict[str, np.ndarray],
    detections: list[Detection],
    regions: list[str],
    planes: dict[str, list[str]],
    spacing_mm: dict[str, float | None],
    jitter: float = 0.0,
    rng: np.random.Generator | None = None,
    head_px: dict[str, float | None] | None = None,
    size_for_age: bool = False,
    ga_weeks: float | None = None,
    crop_fractions: Sequence[float] | None = None,
    age_crop_fractions: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Detection | None]]:
    """crops [R, CROP, CROP], scalars [R, S] and the chosen detection of each region.

    ``head_px``: each plane's skull size from :func:`head_sizes`; a plane without one (or no
    ``head_px`` at all) measures sizes against the span of its detected regions.
    S is N_SCALARS, plus N_SIZE_FOR_AGE with ``size_for_age`` (for gestational-age models;
    zeros where ``ga_weeks`` or the plane's pixel spacing is unknown).
    ``crop_fractions``: head-scaled crops, each region's side that fraction of the head size
    (:func:`learn_crop_fractions`); None: crops from the boxes. ``age_crop_fractions``:
    age-scaled crops where ``ga_weeks`` and the plane's spacing are known (else head-scaled).
    """
    chosen = select_regions(detections, regions, planes)
    head_px = head_px or {}
    crops = np.zeros((len(regions), CROP, CROP), np.float32)
    scalars = np.zeros((len(regions), N_SCALARS + (N_SIZE_FOR_AGE if size_for_age else 0)), np.float32)
    for r, det in enumerate(chosen):
        if det is None or det.plane not in images:
            continue
        extent = head_extent_px(det, detections, images, head_px)
        spacing = spacing_mm.get(det.plane)
        side = crop_fractions[r] * extent if crop_fractions is not None else None
        if age_crop_fractions is not None and ga_weeks and spacing:
            side = age_crop_fractions[r] * age_length_px(ga_weeks, spacing)
        crops[r] = crop_box(images[det.plane], det.box, jitter=jitter, rng=rng, side=side)
        w, h = det.box[2] - det.box[0], det.box[3] - det.box[1]
        relative = (w / extent, h / extent)
        size = (w * spacing / MM_SCALE, h * spacing / MM_SCALE) if spacing else relative
        scalars[r, :N_SCALARS] = (1.0, det.confidence, *size, *relative)
        if size_for_age and spacing and ga_weeks:
            scalars[r, N_SCALARS:] = (w * spacing / ga_weeks, h * spacing / ga_weeks)
    return crops, scalars, chosen
