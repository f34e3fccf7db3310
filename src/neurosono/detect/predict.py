"""Stage-1 inference: region boxes (pixels), class ids and confidences for images.

Every image reaches the detector through the one image reader (``core.images``), as a
3-channel BGR array, whether it comes from a file, a dataset or a prediction request, so
training, evaluation and prediction give the detector the same pixels. Images go to the
detector in batches of ``BATCH``, and each batch goes in as runs of images that share one
size: ultralytics letterboxes a batch of one size to a multiple of the stride but a batch
of mixed sizes to a full square, so an image's boxes would otherwise depend on the images
it happened to be batched with. Grouped by size, an image gives the same boxes whether it
is detected alone (a prediction), with its pair, or in a dataset's evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from neurosono.core.images import LoadedImage, read_image
from neurosono.detect.model import Detector

OPERATING_CONF = 0.25  # the confidence at which a region counts as found (precision, recall, reports)
EVAL_CONF = 0.001  # every detection, for mAP
MAX_DET = 50
NMS_IOU = 0.6
BATCH = 8


@dataclass(frozen=True)
class Detection:
    """One detected region in one plane's image."""

    plane: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


ImageInput = Path | str | np.ndarray | LoadedImage
Boxes = tuple[np.ndarray, np.ndarray, np.ndarray]  # classes [N], scores [N], xyxy boxes [N, 4]


# The grey levels a dark image is stretched between: these percentiles of its non-zero pixels.
STRETCH_PERCENTILES = (1.0, 99.5)


def _bgr(image: ImageInput) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    if isinstance(image, LoadedImage):
        return image.bgr()
    return read_image(image).bgr()


def _grey(image: ImageInput) -> np.ndarray:
    if isinstance(image, LoadedImage):
        return image.pixels
    if isinstance(image, np.ndarray):
        return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return read_image(image).pixels


def _histogram(grey: np.ndarray) -> np.ndarray:
    """Counts of grey levels 1-255 (index = level; black not counted)."""
    counts = np.bincount(grey.ravel(), minlength=256)
    counts[0] = 0
    return counts


def _percentiles(counts: np.ndarray, q: tuple[float, ...]) -> list[float]:
    """``np.percentile(pixels, q)`` (linear) of the pixels a histogram counts, without sorting them."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])

    def order(k: int) -> int:  # the k-th smallest pixel (from 0)
        return int(np.searchsorted(cumulative, k, side="right"))

    out = []
    for value in q:
        position = value / 100 * (n - 1)
        below = int(np.floor(position))
        above = min(below + 1, n - 1)
        out.append(order(below) + (position - below) * (order(above) - order(below)))
    return out


def stretched(grey: np.ndarray) -> np.ndarray:
    """``grey`` (uint8) with its non-zero pixels' 1st-99.5th percentiles stretched to 0-255
    (black stays black), as a 3-channel BGR array."""
    counts = _histogram(grey)
    lo, hi = _percentiles(counts, STRETCH_PERCENTILES) if counts.any() else (0.0, 255.0)
    levels = np.arange(256, dtype=np.float32)
    table = np.clip((levels - np.float64(lo)) / max(hi - lo, 1.0) * 255, 0, 255).astype(np.uint8)
    table[0] = 0
    return np.repeat(table[grey][..., None], 3, axis=2)


def detector_input(image: ImageInput, dark_below: float | None = None) -> np.ndarray:
    """The BGR array the detector sees. An image darker than ``dark_below`` (mean grey of its
    non-zero pixels: the sector, not the black round it) is seen with its grey range
    stretched: a detector trained on a narrower range of machine looks finds the brain
    regions of a much darker look less surely, and a case may go unanswered for it."""
    if not isinstance(image, (np.ndarray, LoadedImage)):
        image = read_image(image)  # once: both the darkness and the pixels come from it
    if seen_stretched(image, dark_below):
        return stretched(_grey(image))
    return _bgr(image)


def seen_stretched(image: ImageInput, dark_below: float | None) -> bool:
    """Whether a detector with this ``dark_below`` sees ``image`` with its grey range stretched."""
    return dark_below is not None and darkness(image) < dark_below


def darkness(image: ImageInput) -> float:
    """Mean grey of an image's non-zero pixels (the sector, not the black round it)."""
    grey = _grey(image)
    counts = _histogram(grey)
    n = counts.sum()
    return float(counts @ np.arange(256) / n) if n else 0.0


# Images darker than this share of a detector's training images are stretched before it.
DARK_SHARE = 0.05


def input_record(images: Sequence[ImageInput], share: float = DARK_SHARE) -> dict:
    """The detector's input rule, from its training images: the mean grey under which the
    darkest ``share`` of them lie."""
    values = np.array([darkness(image) for image in images])
    return {
        "dark_below": round(float(np.percentile(values, 100 * share)), 2),
        "rule": (
            f"an image whose mean grey (non-zero pixels) is below that of the darkest {share:.0%} "
            "of the training images is seen with its grey range stretched: the percentiles "
            f"{STRETCH_PERCENTILES[0]:g} and {STRETCH_PERCENTILES[1]:g} of its non-zero pixels to 0 "
            "and 255"
        ),
        "n_training_images": int(values.size),
    }


def _batches(
    images: Sequence[ImageInput], batch: int, dark_below: float | None = None
) -> Iterator[list[np.ndarray]]:
    """The images as BGR arrays, ``batch`` at a time (files are read one batch at a time)."""
    for start in range(0, len(images), batch):
        yield [detector_input(image, dark_below) for image in images[start : start + batch]]


def predict_images(
    detector: Detector,
    images: Sequence[ImageInput],
    conf: float = EVAL_CONF,
    max_det: int = MAX_DET,
    batch: int = BATCH,
) -> list[Boxes]:
    """(classes, scores, xyxy boxes) for each image, in order: files are read one batch at a time."""
    results: list[Boxes] = []
    for chunk in _batches(images, batch, detector.dark_below):
        chunk_results: dict[int, Boxes] = {}
        for positions in _same_size_runs(chunk):
            outputs = detector.yolo.predict(
                [chunk[i] for i in positions],
                imgsz=detector.imgsz,
                conf=conf,
                iou=NMS_IOU,
                max_det=max_det,
                device="cpu",
                verbose=False,
            )
            for i, result in zip(positions, outputs, strict=True):
                boxes = result.boxes
                chunk_results[i] = (
                    boxes.cls.numpy().astype(int),
                    boxes.conf.numpy().astype(float),
                    boxes.xyxy.numpy().astype(float),
                )
        results.extend(chunk_results[i] for i in range(len(chunk)))
    return results


def _same_size_runs(chunk: Sequence[np.ndarray]) -> list[list[int]]:
    """The chunk's positions grouped by image size, each group in the chunk's order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(chunk):
        groups.setdefault(image.shape, []).append(i)
    return list(groups.values())


def as_detections(plane: str, boxes: Boxes) -> list[Detection]:
    classes, scores, xyxy = boxes
    return [
        Detection(plane, int(c), float(s), tuple(float(v) for v in b))
        for c, s, b in zip(classes, scores, xyxy, strict=True)
    ]


def detect_planes(detector: Detector, images: dict[str, ImageInput], conf: float) -> list[Detection]:
    """Every detection in every plane's image (one batch: TV and TC of a case)."""
    outputs = predict_images(detector, list(images.values()), conf=conf)
    return [d for plane, boxes in zip(images, outputs, strict=True) for d in as_detections(plane, boxes)]


def detect_regions(detector: Detector, paths: list[str | Path], conf: float = OPERATING_CONF) -> list[dict]:
    """One record per image file: its regions with box [x0, y0, x1, y1] in pixels and confidence.

    Every file is read before the detector runs, so a bad file stops the call with an
    :class:`~neurosono.core.images.ImageReadError` naming it and nothing is half done.
    """
    images = [read_image(p) for p in paths]
    records = []
    for image, (classes, scores, boxes) in zip(
        images, predict_images(detector, images, conf=conf), strict=True
    ):
        detections = [
            {
                "region": detector.regions[int(c)],
                "class_id": int(c),
                "confidence": round(float(s), 4),
                "box": [round(float(v), 1) for v in b],
            }
            for c, s, b in zip(classes, scores, boxes, strict=True)
        ]
        records.append({"image": str(image.path), "detections": detections})
    return records
