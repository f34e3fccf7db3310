"""Measuring a case: the head model on the TV image, the structure model in stage 1's boxes.

:class:`Measurer` loads the head model once (default: the shipped one), the structure model
(default: the shipped one) and the region detector both the structures and the CSP hint
need (default: the shipped one; ``False`` to skip it, and with it the structures).
"""

from __future__ import annotations

from pathlib import Path

from neurosono.core.images import LoadedImage
from neurosono.detect.predict import Detection, detect_planes
from neurosono.measure.biometry import Biometry, assemble
from neurosono.measure.head import HeadMeasurement, measure_image
from neurosono.measure.headnet import load_head_model
from neurosono.measure.hints import CSP_MIN_CONFIDENCE
from neurosono.measure.structures import (
    FOSSA_FALLBACK_CONFIDENCE,
    MIN_CONFIDENCE,
    load_structure_model,
    measure_structures,
)
from neurosono.models import DEFAULT_DETECTOR, HEAD_REGION, PHANTOM_STRUCTURE_MODEL, REAL_HEAD_MODEL

CSP_REGION = "csp"
# Stage 1's head box frames the head model's look from this confidence on.
HEAD_BOX_CONFIDENCE = 0.5
# Stage 1 is asked for its boxes down to the least sure one any measurement reads.
DETECTION_CONFIDENCE = min(MIN_CONFIDENCE, HEAD_BOX_CONFIDENCE, FOSSA_FALLBACK_CONFIDENCE)


def csp_seen(detections: list[Detection], region_names: list[str]) -> tuple[bool | None, str]:
    """Whether any image shows the CSP, by stage 1's boxes; (None, why) when it cannot say."""
    if CSP_REGION not in region_names:
        return None, "the detector has no CSP region"
    csp = region_names.index(CSP_REGION)
    return any(d.class_id == csp and d.confidence >= CSP_MIN_CONFIDENCE for d in detections), ""


def head_box(detections, region_names, plane: str = "tv") -> tuple[float, float, float, float] | None:
    """Stage 1's surest fetal-head box in ``plane``'s image (None: none sure enough, or no run)."""
    if not detections or HEAD_REGION not in region_names:
        return None
    head = region_names.index(HEAD_REGION)
    found = [d for d in detections if d.plane == plane and d.class_id == head]
    best = max(found, key=lambda d: d.confidence, default=None)
    return best.box if best is not None and best.confidence >= HEAD_BOX_CONFIDENCE else None


def biometry_for(
    head_model,
    images: dict[str, LoadedImage],
    ga_weeks: float | None,
    detections,
    region_names,
    structure_model=None,
) -> Biometry:
    """The case's biometry from the head model on its TV image (framed on stage 1's head box
    where it found one) and, with stage 1's output, the structure model in its boxes."""
    head = None
    if "tv" in images:
        box = head_box(detections, region_names)
        head = measure_image(head_model, images["tv"].pixels, images["tv"].spacing_mm, box)
    return biometry_with(head, images, ga_weeks, detections, region_names, structure_model)


def biometry_with(
    head: HeadMeasurement | None,
    images: dict[str, LoadedImage],
    ga_weeks: float | None,
    detections,
    region_names,
    structure_model=None,
) -> Biometry:
    """The case's biometry from a head measurement already made and stage 1's output
    (None: no detector run): whether the CSP was seen, the structures in its boxes."""
    seen, why = (None, "no detector run") if detections is None else csp_seen(detections, region_names)
    structures, reason = None, "no structure model loaded"
    if structure_model is not None and detections is None:
        reason = "no detector run (the structures are measured in its boxes)"
    elif structure_model is not None:
        planes = {p: (im.pixels, im.spacing_mm) for p, im in images.items()}
        structures = measure_structures(structure_model, planes, detections, list(region_names))
    return assemble(head, ga_weeks, seen, why, structures=structures, structures_reason=reason)


class Measurer:
    def __init__(self, head_model, meta: dict, detector=None, structure_model=None) -> None:
        self.head_model, self.meta, self.detector = head_model, meta, detector
        self.structure_model = structure_model

    @classmethod
    def load(
        cls,
        head: str | Path | None = None,
        detector: str | Path | bool | None = True,
        structures: str | Path | bool | None = True,
    ) -> Measurer:
        """``head``: a head model file or run folder (None: the shipped one). ``detector``: a
        detector file, True for the shipped one, False for none (no CSP hint, no structures).
        ``structures``: a structure model file or run folder, True or None for the shipped
        one, False for none."""
        model, meta = load_head_model(head or REAL_HEAD_MODEL)
        found = None
        if detector is not False:
            from neurosono.detect.model import load_detector

            found = load_detector(DEFAULT_DETECTOR if detector is True else detector)
        structure_model = None
        if structures is not False and found is not None:
            chosen = PHANTOM_STRUCTURE_MODEL if structures in (True, None) else structures
            structure_model = load_structure_model(chosen)[0]
        return cls(model, meta, found, structure_model)

    def measure(self, images: dict[str, LoadedImage], ga_weeks: float | None = None) -> Biometry:
        detections = None
        if self.detector is not None:
            detections = detect_planes(self.detector, images, conf=DETECTION_CONFIDENCE)
        names = list(self.detector.regions) if self.detector is not None else []
        return biometry_for(self.head_model, images, ga_weeks, detections, names, self.structure_model)
