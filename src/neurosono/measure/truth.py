"""The true head outline of a dataset's case, where the dataset knows it.

Two sources:

* a head mask (``tv_head_mask``, e.g. HC18's sonographer ellipses): the outer border of
  the skull only;
* the phantom's geometry (its cases.csv records the head's centre and angle in each image
  with the true BPD, OFD and HC): both the outer and the inner border of the skull. The
  BPD is outer-inner and the OFD outer-outer, so the outer ellipse has semi-axes OFD/2
  and (BPD + skull)/2, and the inner one is a skull thickness smaller; the thickness
  follows from the HC (the outer ellipse's perimeter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from neurosono.core.images import read_grey
from neurosono.data.format import HEAD_MASK_COLUMN, Case, Dataset
from neurosono.measure.ellipse import Ellipse, perimeter

PHANTOM_COLUMNS = ("tv_head_x_px", "tv_head_y_px", "tv_angle_deg", "bpd_mm", "ofd_mm", "hc_mm")


@dataclass
class HeadTruth:
    image: np.ndarray  # grey uint8
    spacing_mm: float | None
    head: np.ndarray  # bool mask inside the skull's outer border
    brain: np.ndarray | None  # bool mask inside its inner border (None: not known)
    values: dict[str, float]  # the case's true measurements (mm), where recorded


def phantom_ellipses(case: Case) -> tuple[Ellipse, Ellipse] | None:
    """(outer, inner) skull ellipses in TV-image pixels from a phantom case's columns."""
    extra, spacing = case.extra, case.spacing_mm("tv")
    if spacing is None or any(not extra.get(c) for c in PHANTOM_COLUMNS):
        return None
    bpd, ofd, hc = (float(extra[c]) for c in ("bpd_mm", "ofd_mm", "hc_mm"))
    a = ofd / 2
    half_across = brentq(lambda b: perimeter(2 * a, 2 * b) - hc, 1e-3, 4 * a)
    skull = max(0.0, 2 * half_across - bpd)
    cx, cy, angle = (float(extra[c]) for c in ("tv_head_x_px", "tv_head_y_px", "tv_angle_deg"))
    outer = Ellipse(cx, cy, ofd / spacing, 2 * half_across / spacing, angle)
    inner = Ellipse(cx, cy, (ofd - 2 * skull) / spacing, (bpd - skull) / spacing, angle)
    return outer, inner


def head_truth(dataset: Dataset, case: Case, image: np.ndarray | None = None) -> HeadTruth | None:
    """The case's TV image (``image`` where already read) with its true head (and brain)
    masks; None where neither is known."""
    if not case.tv_image:
        return None
    values = {}
    for column in ("hc_mm", "bpd_mm", "ofd_mm", "cephalic_index"):
        try:
            values[column] = float(case.extra[column])
        except (KeyError, ValueError):
            continue
    mask_rel = case.extra.get(HEAD_MASK_COLUMN, "")
    ellipses = None if mask_rel else phantom_ellipses(case)
    if not mask_rel and ellipses is None:
        return None
    if image is None:
        image = read_grey(dataset.image_path(case.tv_image))
    if mask_rel:
        head = read_grey(dataset.root / mask_rel) > 127
        if head.shape != image.shape:
            raise ValueError(f"{dataset.root / mask_rel}: mask size {head.shape} differs from its image's")
        return HeadTruth(image, case.spacing_mm("tv"), head, None, values)
    outer, inner = ellipses
    return HeadTruth(image, case.spacing_mm("tv"), outer.mask(image.shape), inner.mask(image.shape), values)


def has_head_truth(case: Case) -> bool:
    return bool(case.tv_image) and (
        bool(case.extra.get(HEAD_MASK_COLUMN)) or all(case.extra.get(c) for c in PHANTOM_COLUMNS)
    )
