"""The skull fit that gives HexaNet its head size (stand-in for gestational age)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurosono.classify.regions import Detection, head_sizes
from neurosono.classify.skull import fit_skull
from neurosono.core.images import read_image
from neurosono.data.format import Dataset, read_labels


def test_short_axis_tracks_the_true_bpd(tiny_cohort: Path) -> None:
    dataset = Dataset.load(tiny_cohort)
    measured, truth = [], []
    for case in dataset.cases:
        for plane, rel in case.images():
            image = read_image(dataset.image_path(rel)).pixels
            height, width = image.shape
            boxes = [b.to_xyxy(width, height) for b in read_labels(dataset.label_path(rel))]
            detections = [Detection(plane, 0, 0.9, box) for box in boxes]
            size = head_sizes({plane: image}, detections)[plane]
            assert size is not None, f"{rel}: no skull fitted"
            measured.append(size * case.spacing_mm(plane))
            truth.append(float(case.extra["bpd_mm"]))
    measured, truth = np.array(measured), np.array(truth)
    # 128-px images (about 0.6 mm a pixel): the fit follows the BPD within a few pixels.
    assert np.corrcoef(measured, truth)[0, 1] > 0.95
    assert np.abs(measured - truth).max() < 4.0


def test_no_skull_in_noise_or_a_blank_image() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (128, 128)).astype(np.uint8)
    assert fit_skull(np.zeros((128, 128), np.uint8), (64, 64)) is None
    fit = fit_skull(noise, (64, 64))
    # Noise has no ring: either no fit or not the ellipse of a drawn head.
    assert fit is None or fit.n_points < 60


def test_a_drawn_ring_is_measured() -> None:
    image = np.full((200, 240), 30, np.uint8)
    import cv2

    cv2.ellipse(image, (120, 100), (80, 60), 20, 0, 360, 230, 4)
    fit = fit_skull(image, (118, 102))
    assert fit is not None
    assert abs(fit.short_axis_px - 120) < 3 and abs(fit.long_axis_px - 160) < 3
