"""The export-display variation: tone curves, whole-frame rotation, and the cohort streams."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from neurosono.data.format import DEFAULT_REGIONS
from neurosono.measure.truth import phantom_ellipses
from neurosono.models import HEAD_REGION
from neurosono.phantom.cohort import CohortConfig, plan_cohort, render_case
from neurosono.phantom.display import Export, redisplay, rotation_matrix

REGIONS = [*DEFAULT_REGIONS, HEAD_REGION]


def _export(tone: str = "as-is", rotation: float = 0.0) -> Export:
    return Export(tone=tone, black=0.6, gamma=1.5, gain=0.8, lift=0.3, rotation_deg=rotation)


def test_rotation_boxes_the_turned_object_loosely_and_moves_the_head_centre() -> None:
    image = np.zeros((200, 300), np.uint8)
    image[80:120, 100:200] = 200  # a bright 100 x 40 bar centred on (150, 100)
    boxes = {"fetal_head": (100.0, 80.0, 200.0, 120.0)}
    turned, moved, head = redisplay(image, boxes, _export(rotation=30.0), (150.0, 100.0))
    ys, xs = np.nonzero(turned > 100)
    x0, y0, x1, y1 = moved["fetal_head"]
    assert x0 <= xs.min() + 1 and y0 <= ys.min() + 1 and x1 >= xs.max() - 1 and y1 >= ys.max() - 1
    # The bar's centre sat at the frame's centre, so it stays; its corners swing out.
    assert abs(head[0] - 150) < 1e-6 and abs(head[1] - 100) < 1e-6
    assert y1 - y0 > 80  # a 30 degree turn of a flat bar needs a taller box
    assert turned[0, 0] == 0 and turned[-1, -1] == 0  # the uncovered corners are filled black


def test_a_box_turned_mostly_out_of_the_frame_is_dropped() -> None:
    image = np.zeros((100, 100), np.uint8)
    boxes = {"csp": (0.0, 0.0, 8.0, 8.0), "fetal_head": (20.0, 20.0, 80.0, 80.0)}
    _, moved, _ = redisplay(image, boxes, _export(rotation=30.0), (50.0, 50.0))
    assert set(moved) == {"fetal_head"}


def test_dark_export_keeps_the_bright_skull_and_crushes_the_parenchyma() -> None:
    image = np.full((100, 100), 90, np.uint8)  # parenchyma grey
    image[:, :8] = 230  # a skull arc
    dark, _, _ = redisplay(image, {}, _export("dark"), (50.0, 50.0))
    assert dark[:, 50].max() == 0 and dark[:, :8].min() >= 0.75 * 255
    lifted, _, _ = redisplay(np.zeros((10, 10), np.uint8), {}, _export("lifted"), (5.0, 5.0))
    assert abs(int(lifted.min()) - 0.3 * 255) <= 1  # black shown grey, as lifted exports show it


def _ellipse_points(ellipse) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    theta = np.radians(ellipse.angle_deg)
    along, across = ellipse.d1 / 2 * np.cos(t), ellipse.d2 / 2 * np.sin(t)
    return np.c_[
        ellipse.cx + along * np.cos(theta) - across * np.sin(theta),
        ellipse.cy + along * np.sin(theta) + across * np.cos(theta),
    ]


@pytest.mark.parametrize("turn_boxes", ["tight", "loose"])
def test_cohort_exports_come_from_their_own_stream(turn_boxes: str) -> None:
    base = CohortConfig(cases=8, seed=12, centers=2, size=128, look=2, zoom_range=(0.3, 0.9))
    exported = CohortConfig(**{**base.__dict__, "display_share": 1.0, "turn_boxes": turn_boxes})
    changed = checked = 0
    for job, job_exported in zip(plan_cohort(base), plan_cohort(exported), strict=True):
        case, boxes, images = render_case(job)
        case_x, boxes_x, images_x = render_case(job_exported)
        assert case.ga_weeks == case_x.ga_weeks and case.finding == case_x.finding
        for plane in ("tv", "tc"):
            export = case_x.extra[f"{plane}_export"]
            assert export
            if export == "as-is":
                assert np.array_equal(images[plane], images_x[plane])
            else:
                changed += 1
        # The head's recorded centre and angle follow the turn; a loose box holds the turn of
        # the part of the true skull ellipse the unturned box held.
        export = case_x.extra["tv_export"]
        head = [b for b in boxes_x["tv"] if REGIONS[b.class_id] == HEAD_REGION]
        before = [b for b in boxes["tv"] if REGIONS[b.class_id] == HEAD_REGION]
        if "rotated" in export and head and before and phantom_ellipses(case_x):
            height, width = images_x["tv"].shape[:2]
            turn = float(export.split("rotated ")[1].split(" deg")[0])
            points = _ellipse_points(phantom_ellipses(case)[0])
            # The recorded angle and centre give the same ellipse as the turn of the unturned one.
            again = _ellipse_points(phantom_ellipses(case_x)[0])
            expected = np.c_[points, np.ones(len(points))] @ rotation_matrix((height, width), turn).T
            assert np.abs(again - expected).max() < 1.0
            if turn_boxes == "loose":
                bx0, by0, bx1, by1 = before[0].to_xyxy(width, height)
                held = points[
                    (points[:, 0] >= bx0)
                    & (points[:, 0] <= bx1)
                    & (points[:, 1] >= by0)
                    & (points[:, 1] <= by1)
                ]
                turned = np.c_[held, np.ones(len(held))] @ rotation_matrix((height, width), turn).T
                turned = turned[
                    (turned[:, 0] >= 0)
                    & (turned[:, 0] < width)
                    & (turned[:, 1] >= 0)
                    & (turned[:, 1] < height)
                ]
                x0, y0, x1, y1 = head[0].to_xyxy(width, height)
                assert ((turned[:, 0] >= x0 - 3) & (turned[:, 0] <= x1 + 3)).all()
                assert ((turned[:, 1] >= y0 - 3) & (turned[:, 1] <= y1 + 3)).all()
            checked += 1
    assert changed >= 4 and checked >= 1


def test_rotation_follows_the_pose_angle_convention() -> None:
    # Turning the frame by t degrees is the same as drawing the head at angle + t about
    # the moved centre: the cohort records that angle for the biometry truth.
    from neurosono.phantom.render import Pose

    points_mm = np.array([[30.0, 0.0], [0.0, 20.0], [-12.0, -7.0]])
    for flip in (False, True):
        pose = Pose(center_x=140.0, center_y=90.0, angle_deg=12.0, flip=flip, spacing_mm=0.25)
        matrix = rotation_matrix((200, 320), 25.0)
        turned = np.c_[pose.to_px(points_mm), np.ones(3)] @ matrix.T
        cx, cy = matrix @ np.array([pose.center_x, pose.center_y, 1.0])
        redrawn = Pose(center_x=cx, center_y=cy, angle_deg=37.0, flip=flip, spacing_mm=0.25)
        assert np.allclose(turned, redrawn.to_px(points_mm))


def test_tight_boxes_are_found_again_in_the_turned_structures() -> None:
    from neurosono.phantom.render import BOX_MARGIN_MM, REGION_STRUCTURES

    label = REGION_STRUCTURES["fetal_head"][0]
    structures = np.zeros((240, 320), np.uint8)
    cv2.ellipse(structures, (160, 120), (90, 60), 0, 0, 360, int(label), -1)
    image = np.where(structures > 0, 180, 20).astype(np.uint8)
    boxes = {"fetal_head": (70.0, 60.0, 251.0, 181.0)}
    _, tight, _ = redisplay(image, boxes, _export(rotation=35.0), (160.0, 120.0), structures, 0.5)
    expected = np.zeros_like(structures)
    cv2.ellipse(expected, (160, 120), (90, 60), 35, 0, 360, 1, -1)  # cv2 turns clockwise on screen
    ys, xs = np.nonzero(expected)
    margin = BOX_MARGIN_MM / 0.5 + 0.5
    want = np.array([xs.min() - margin, ys.min() - margin, xs.max() + 1 + margin, ys.max() + 1 + margin])
    assert np.abs(np.array(tight["fetal_head"]) - want).max() <= 2.0
    _, loose, _ = redisplay(image, boxes, _export(rotation=35.0), (160.0, 120.0))
    x0, y0, x1, y1 = loose["fetal_head"]
    assert (x1 - x0) * (y1 - y0) > 1.2 * np.prod(want[2:] - want[:2])  # the box round a turned box
