"""What every stage-2 classifier reads of a case, loaded once: images, detections, head box.

:func:`gather_cases` reads each image through the one image reader, runs the six-region
detector (HexaNet's input) and the head detector (the head-crop classifier's) where they are
given, and keeps the ground-truth boxes for training. A dataset whose cases hold one image
each (the public single-image sets, whose plane is not known for every image) has that
image stand in both plane slots, so the slot an image was imported into cannot tell a
classifier anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from neurosono.classify.regions import (
    brain_regions,
    check_stage2_regions,
    head_box_sizes,
    head_sizes,
    split_head,
)
from neurosono.core.images import LoadedImage, read_image
from neurosono.core.progress import track
from neurosono.data.format import Case, Dataset, read_labels
from neurosono.detect.model import Detector
from neurosono.detect.predict import Detection, as_detections, predict_images

STAGE2_PLANES = ("tv", "tc")  # the planes a decision reads (a TT image beside them is the detector's)
DETECTION_CONF = 0.05  # low: a faint region is still evidence, its confidence goes in as a scalar
HEAD_CONF = 0.05  # lowest head confidence accepted as a box
CHUNK = 64  # cases loaded and detected at a time (bounds the progress bar's steps, not memory)


@dataclass
class CaseInputs:
    """Everything a classifier needs from one case."""

    case: Case
    label: int
    images: dict[str, np.ndarray]  # plane -> 8-bit grey pixels
    spacing: dict[str, float | None]
    detections: list[Detection] = field(default_factory=list)
    truth: list[Detection] = field(default_factory=list)
    head: tuple[float, float, float, float] | None = None  # most confident head box (head detector)
    head_conf: float = 0.0
    head_boxes: dict[str, tuple[float, float, float, float]] = field(
        default_factory=dict
    )  # stage 1's fetal head

    @property
    def box_head_px(self) -> dict[str, float | None]:
        """Each plane's head size from stage 1's fetal-head box (where it found one)."""
        return head_box_sizes(self.head_boxes)

    @property
    def ga_weeks(self) -> float | None:
        return self.case.ga_weeks

    @property
    def image(self) -> np.ndarray:
        """The case's first image (the one image of a single-image case)."""
        return next(iter(self.images.values()))

    @cached_property
    def skull_px(self) -> dict[str, float | None]:
        """Skull short axis per plane, fitted on first use (only skull models need it) and kept:
        the skull does not move when training jitters the region boxes."""
        return head_sizes(self.images, self.detections)


def is_single_image(cases: list[Case]) -> bool:
    """Whether every case holds exactly one image (a single-image dataset)."""
    return bool(cases) and all(len(list(c.images())) == 1 for c in cases)


def _load(dataset: Dataset, case: Case, single: bool) -> tuple[CaseInputs, dict[str, LoadedImage]]:
    planes = [(p, rel) for p, rel in case.images() if p in STAGE2_PLANES or single]
    loaded = {plane: read_image(dataset.image_path(rel)) for plane, rel in planes}
    spacing = {
        p: case.spacing_mm(p) or (loaded[p].spacing_mm if p in loaded else None) for p in STAGE2_PLANES
    }
    if single:
        (image,) = loaded.values()
        loaded = dict.fromkeys(STAGE2_PLANES, image)
        spacing = dict.fromkeys(
            STAGE2_PLANES, next(s for s in spacing.values() if s) if any(spacing.values()) else None
        )
    item = CaseInputs(
        case, int(case.label == "abnormal"), {p: im.pixels for p, im in loaded.items()}, spacing
    )
    return item, loaded


def gather_cases(
    dataset: Dataset,
    cases: list[Case],
    detector: Detector | None = None,
    head_detector: Detector | None = None,
    with_truth: bool = False,
    progress: bool = False,
) -> list[CaseInputs]:
    """Load each case once; ``detector`` gives its six-region detections (HexaNet),
    ``head_detector`` its head box (head crop); ``with_truth`` keeps its labelled boxes."""
    single = is_single_image(cases)
    regions = brain_regions(dataset.spec.regions)
    if detector is not None:  # it must find the dataset's brain regions; the fetal head is optional
        check_stage2_regions(detector.regions, regions, str(dataset.root / "dataset.yaml"))
    items: list[CaseInputs] = []
    starts = range(0, len(cases), CHUNK)
    for start in track(starts, "reading cases", total=len(starts), enabled=progress):
        chunk = [_load(dataset, case, single) for case in cases[start : start + CHUNK]]
        if detector is not None:
            _add_detections(detector, chunk, single, regions)
        if head_detector is not None:
            _add_heads(head_detector, chunk)
        if with_truth and not single:
            for item, _ in chunk:
                item.truth, _ = split_head(_truth(dataset, item), dataset.spec.regions, regions)
        items.extend(item for item, _ in chunk)
    return items


def _add_detections(
    detector: Detector, chunk: list[tuple[CaseInputs, dict]], single: bool, regions: list[str]
) -> None:
    # A single image stands in both planes: detected once, its detections given to both.
    planes = [(item, plane, image) for item, loaded in chunk for plane, image in loaded.items()]
    if single:
        planes = [(item, plane, image) for item, plane, image in planes if plane == STAGE2_PLANES[0]]
    outputs = predict_images(detector, [image for _, _, image in planes], conf=DETECTION_CONF)
    for (item, plane, _), boxes in zip(planes, outputs, strict=True):
        for target in STAGE2_PLANES if single else (plane,):
            brain, heads = split_head(as_detections(target, boxes), detector.regions, regions)
            item.detections += brain
            item.head_boxes.update(heads)


def _add_heads(head_detector: Detector, chunk: list[tuple[CaseInputs, dict]]) -> None:
    images = [next(iter(loaded.values())) for _, loaded in chunk]
    for (item, _), (_, scores, boxes) in zip(
        chunk, predict_images(head_detector, images, conf=HEAD_CONF), strict=True
    ):
        if len(scores):
            best = int(np.argmax(scores))
            item.head = tuple(float(v) for v in boxes[best])
            item.head_conf = float(scores[best])


def _truth(dataset: Dataset, item: CaseInputs) -> list[Detection]:
    truth = []
    for plane, rel in item.case.images():
        if plane not in item.images:
            continue
        label_file = dataset.label_path(rel)
        if label_file.exists():
            height, width = item.images[plane].shape
            truth += [
                Detection(plane, b.class_id, 1.0, b.to_xyxy(width, height)) for b in read_labels(label_file)
            ]
    return truth
