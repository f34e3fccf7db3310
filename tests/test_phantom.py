from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from neurosono.core.images import read_grey
from neurosono.data.check import check_dataset
from neurosono.data.format import Dataset, read_labels
from neurosono.phantom.anatomy import (
    ABNORMAL_FINDINGS,
    ATRIUM_MAX_MM,
    CISTERNA_MAGNA_MAX_MM,
    CISTERNA_MAGNA_MIN_MM,
    FINDING_QUANTITY,
    NORMAL_FINDINGS,
    out_of_range,
    sample_anatomy,
)
from neurosono.phantom.centers import sample_center
from neurosono.phantom.cohort import CohortConfig, generate_cohort, plan_cohort, render_case
from neurosono.phantom.render import PLANE_REGIONS, render_plane, sample_pose


@pytest.mark.parametrize("finding", ABNORMAL_FINDINGS)
def test_every_finding_crosses_its_threshold(finding: str) -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        anatomy = sample_anatomy(rng, finding)
        assert anatomy.label == "abnormal"
        assert FINDING_QUANTITY[finding] in out_of_range(anatomy), anatomy.measurements()


@pytest.mark.parametrize("finding", NORMAL_FINDINGS)
def test_every_normal_stays_inside_the_normal_range(finding: str) -> None:
    rng = np.random.default_rng(12)
    for _ in range(300):
        anatomy = sample_anatomy(rng, finding)
        assert anatomy.label == "normal"
        assert out_of_range(anatomy) == [], anatomy.measurements()
        assert 0.75 <= anatomy.cephalic_index <= 0.85
        assert 19 <= anatomy.ga_weeks < 24


def test_borderline_cases_exist_on_both_sides() -> None:
    rng = np.random.default_rng(13)
    upper = [sample_anatomy(rng, "normal_upper_limit") for _ in range(300)]
    mild = [sample_anatomy(rng, "ventriculomegaly_mild") for _ in range(300)]
    mega = [sample_anatomy(rng, "mega_cisterna_magna") for _ in range(300)]
    assert any(ATRIUM_MAX_MM - 1.0 < a.atrium_mm < ATRIUM_MAX_MM for a in upper)
    assert any(ATRIUM_MAX_MM <= a.atrium_mm < ATRIUM_MAX_MM + 0.5 for a in mild)
    assert any(CISTERNA_MAGNA_MAX_MM - 1.0 < a.cisterna_magna_mm <= CISTERNA_MAGNA_MAX_MM for a in upper)
    assert any(CISTERNA_MAGNA_MAX_MM < a.cisterna_magna_mm < CISTERNA_MAGNA_MAX_MM + 0.6 for a in mega)
    chiari = [sample_anatomy(rng, "chiari_ii") for _ in range(100)]
    assert all(a.cisterna_magna_mm < CISTERNA_MAGNA_MIN_MM and a.lemon_mm > 0 for a in chiari)


def test_a_monoventricle_records_no_atrium_and_its_case_no_ventriculomegaly_truth() -> None:
    from neurosono.data.format import Case
    from neurosono.evaluate.biometry import true_hints

    rng = np.random.default_rng(14)
    anatomy = sample_anatomy(rng, "holoprosencephaly")
    assert anatomy.monoventricle and anatomy.atrium_mm >= ATRIUM_MAX_MM  # the drawn ventricle is large
    recorded = anatomy.measurements()
    assert recorded["atrium_mm"] == 0.0 and recorded["csp_width_mm"] == 0.0
    case = Case("c", "abnormal", extra={k: f"{v:g}" for k, v in recorded.items()})
    assert "ventriculomegaly" not in true_hints(case)
    mild = sample_anatomy(rng, "ventriculomegaly_mild").measurements()
    assert true_hints(Case("m", "abnormal", extra={k: f"{v:g}" for k, v in mild.items()}))["ventriculomegaly"]


def test_biometry_follows_gestational_age() -> None:
    rng = np.random.default_rng(14)
    early = [sample_anatomy(rng, "normal", ga_weeks=19.2) for _ in range(100)]
    late = [sample_anatomy(rng, "normal", ga_weeks=23.7) for _ in range(100)]
    assert 42 < np.mean([a.bpd_mm for a in early]) < 47
    assert 55 < np.mean([a.bpd_mm for a in late]) < 60
    assert np.mean([a.hc_mm for a in late]) - np.mean([a.hc_mm for a in early]) > 40
    assert abs(np.mean([a.tcd_mm - a.ga_weeks for a in late])) < 1.0


@pytest.mark.parametrize(
    "finding", ["normal", "ventriculomegaly_severe", "holoprosencephaly", "chiari_ii", "dandy_walker"]
)
def test_boxes_lie_in_the_image_and_round_the_drawn_structure(finding: str) -> None:
    size = 192
    for seed in range(4):
        rng = np.random.default_rng([seed, 99])
        anatomy = sample_anatomy(rng, finding)
        style = sample_center(seed, seed)
        for plane in ("tv", "tc"):
            pose = sample_pose(anatomy, style, size, rng)
            rendered = render_plane(anatomy, plane, pose, style, size, rng, keep_structures=True)
            assert rendered.image.shape[:2] == (size, size)
            for region, (x0, y0, x1, y1) in rendered.boxes.items():
                assert region in PLANE_REGIONS[plane]
                assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
                ys, xs = np.nonzero(rendered.region_mask(region))
                assert len(xs) > 0
                assert x0 <= xs.min() and xs.max() + 1 <= x1, region
                assert y0 <= ys.min() and ys.max() + 1 <= y1, region
                # Tight: the box is not much bigger than what it surrounds.
                assert (x1 - x0) - (xs.max() + 1 - xs.min()) <= 2 * (0.6 / pose.spacing_mm + 0.5) + 1e-6


def test_regions_present_or_absent_as_the_anatomy_says() -> None:
    size = 256
    rng = np.random.default_rng(21)
    style = sample_center(0, 0)
    normal = sample_anatomy(rng, "normal")
    for plane in ("tv", "tc"):
        boxes = render_plane(normal, plane, sample_pose(normal, style, size, rng), style, size, rng).boxes
        assert set(boxes) == set(PLANE_REGIONS[plane]), plane
    for finding in ("absent_csp_colpocephaly", "holoprosencephaly"):
        anatomy = sample_anatomy(rng, finding)
        boxes = render_plane(anatomy, "tv", sample_pose(anatomy, style, size, rng), style, size, rng).boxes
        assert "csp" not in boxes and "lateral_ventricle" in boxes
    chiari = sample_anatomy(rng, "chiari_ii")
    chiari.cisterna_magna_mm = 0.3  # obliterated
    boxes = render_plane(chiari, "tc", sample_pose(chiari, style, size, rng), style, size, rng).boxes
    assert "cisterna_magna" not in boxes and "cerebellum" in boxes


def test_cisterna_magna_box_grows_with_its_depth() -> None:
    size = 256
    style = sample_center(0, 1)
    widths = {}
    for depth in (3.0, 14.0):
        rng = np.random.default_rng(5)
        anatomy = sample_anatomy(rng, "normal", ga_weeks=21)
        anatomy.cisterna_magna_mm = depth
        pose = sample_pose(anatomy, style, size, rng)
        x0, y0, x1, y1 = render_plane(anatomy, "tc", pose, style, size, rng).boxes["cisterna_magna"]
        widths[depth] = max(x1 - x0, y1 - y0) * pose.spacing_mm
    assert widths[14.0] > widths[3.0]


def test_the_cisterna_magna_counts_as_in_view_only_when_its_whole_depth_is_imaged() -> None:
    from neurosono.phantom.render import Pose, cisterna_magna_in_view

    rng = np.random.default_rng(6)
    anatomy = sample_anatomy(rng, "normal", ga_weeks=21)
    size = 256
    # The head mid-image, its midline level, anterior to the right: the occipital bone lies
    # left of the centre by the inner skull's half-length.
    pose = Pose(128.0, 128.0, 0.0, False, (anatomy.ofd_mm + 10) / size)
    inside = np.ones((size, size), bool)
    assert cisterna_magna_in_view(anatomy, pose, inside)
    behind = pose.to_px(np.array([[-anatomy.ofd_mm / 2 + anatomy.skull_mm + 1.0, 0.0]]))[0]
    cut = inside.copy()
    cut[:, : round(behind[0])] = False  # a sector edge through the cisterna magna
    assert not cisterna_magna_in_view(anatomy, pose, cut)
    # an obliterated cisterna is in view where the bone and the vermis are
    anatomy.cisterna_magna_mm = 0.0
    assert cisterna_magna_in_view(anatomy, pose, inside)
    outside = Pose(-40.0, 128.0, 0.0, False, pose.spacing_mm)  # the posterior fossa left of the image
    assert not cisterna_magna_in_view(anatomy, outside, inside)


def test_cohorts_record_whether_the_cisterna_magna_is_in_view(tiny_cohort: Path) -> None:
    dataset = Dataset.load(tiny_cohort)
    recorded = {case.extra["tc_cisterna_magna_in_view"] for case in dataset.cases}
    assert recorded <= {"0", "1"} and "1" in recorded


def test_case_rendering_is_deterministic_and_seed_dependent() -> None:
    jobs = plan_cohort(CohortConfig(cases=3, seed=8, size=96))
    first = render_case(jobs[1])
    second = render_case(jobs[1])
    assert first[0] == second[0]
    for plane in ("tv", "tc"):
        assert np.array_equal(first[2][plane], second[2][plane])
    other = render_case(plan_cohort(CohortConfig(cases=3, seed=9, size=96))[1])
    assert not np.array_equal(first[2]["tv"], other[2]["tv"])


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_cohort_is_identical_whatever_the_worker_count(tmp_path: Path) -> None:
    config = CohortConfig(cases=6, seed=3, centers=2, size=96)
    generate_cohort(tmp_path / "one", config, workers=1)
    generate_cohort(tmp_path / "two", config, workers=2)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")
    # a cohort drawn from other than the default nine centres says so in its source
    assert "2 centres' machine looks" in Dataset.load(tmp_path / "one").spec.source


def test_cohort_is_valid_and_records_truth(tiny_cohort: Path) -> None:
    assert check_dataset(tiny_cohort).ok
    dataset = Dataset.load(tiny_cohort)
    assert sum(c.label == "abnormal" for c in dataset.cases) == round(12 * 0.32)
    assert {c.split for c in dataset.cases} == {"train", "val", "test"}
    assert len({c.center for c in dataset.cases}) > 1
    for case in dataset.cases:
        for column in ("bpd_mm", "hc_mm", "atrium_mm", "tcd_mm", "cisterna_magna_mm", "csp_width_mm"):
            assert float(case.extra[column]) >= 0
        for plane in ("tv", "tc"):
            # 128 px images of a ~60-80 mm head filling a third to all of the width
            assert 0.2 < case.spacing_mm(plane) < 2.2
            assert f"{plane}_angle_deg" in case.extra
            boxes = read_labels(dataset.label_path(case.image(plane)))
            allowed = dataset.spec.plane_region_ids(plane)
            assert boxes and all(b.class_id in allowed for b in boxes)


def test_refuses_to_overwrite_an_existing_folder(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        generate_cohort(target, CohortConfig(cases=2, size=64), workers=1)
    assert (target / "mine.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no partial folder left


def test_realistic_look_with_the_tt_plane_is_valid_and_boxes_the_head(tmp_path: Path) -> None:
    config = CohortConfig(cases=6, seed=4, centers=2, size=160, look=2, tt=True)
    dataset = generate_cohort(tmp_path / "real-look", config, workers=1)
    report = check_dataset(dataset.root)
    assert report.ok, [str(p) for p in report.errors]
    assert dataset.spec.regions[-1] == "fetal_head" and set(dataset.spec.planes) == {"tv", "tc", "tt"}
    head = dataset.spec.regions.index("fetal_head")
    for case in dataset.cases:
        assert case.tt_image and case.spacing_mm("tt") > 0
        for plane in ("tv", "tc", "tt"):
            height, width = read_grey(dataset.image_path(case.image(plane))).shape
            assert width == 160 and 0.6 * width < height < 0.85 * width  # as wide as real scans
            boxes = read_labels(dataset.label_path(case.image(plane)))
            heads = [b for b in boxes if b.class_id == head]
            assert len(heads) == 1  # the skull's outer ellipse, in every plane
            # Every brain region lies inside the head's box.
            for b in boxes:
                assert heads[0].cx - heads[0].w / 2 <= b.cx <= heads[0].cx + heads[0].w / 2
        tt_regions = {
            dataset.spec.regions[b.class_id] for b in read_labels(dataset.label_path(case.tt_image))
        }
        assert tt_regions <= {"csp", "thalami", "fetal_head"} and "thalami" in tt_regions


def test_the_tt_image_leaves_tv_and_tc_as_they_were_and_the_plain_look_is_unchanged() -> None:
    with_tt = render_case(plan_cohort(CohortConfig(cases=2, seed=6, size=96, look=2, tt=True))[1])
    without = render_case(plan_cohort(CohortConfig(cases=2, seed=6, size=96, look=2))[1])
    for plane in ("tv", "tc"):
        assert np.array_equal(with_tt[2][plane], without[2][plane])
    assert "tt" in with_tt[2] and "tt" not in without[2]
    realistic = render_case(plan_cohort(CohortConfig(cases=2, seed=6, size=96, look=2))[1])
    plain = render_case(plan_cohort(CohortConfig(cases=2, seed=6, size=96, look=1))[1])
    assert plain[2]["tv"].shape[:2] == (96, 96) and realistic[2]["tv"].shape[1] == 96
    assert plain[0].ga_weeks == realistic[0].ga_weeks  # the same anatomy, drawn two ways
    with pytest.raises(ValueError, match="realistic look"):
        CohortConfig(cases=2, look=1, tt=True).validate()


def test_wide_zoom_frames_the_head_from_a_third_of_the_width_to_nearly_all_of_it() -> None:
    from neurosono.phantom.anatomy import sample_anatomy
    from neurosono.phantom.render import REALISTIC

    rng = np.random.default_rng(11)
    shape = (480, 692)  # a FETAL_PLANES_DB frame
    widths = []
    for index in range(300):
        anatomy = sample_anatomy(rng, "normal")
        pose = sample_pose(anatomy, sample_center(3, index % 8), shape, rng, REALISTIC, wide_zoom=True)
        widths.append((anatomy.ofd_mm + 2 * anatomy.skull_mm) / pose.spacing_mm / shape[1])
        half_height = (anatomy.bpd_mm / 2 + anatomy.skull_mm) / pose.spacing_mm
        assert 2 * half_height <= shape[0] + 1  # the head fits the frame's height
    widths = np.array(widths)
    assert widths.min() < 0.36 and np.percentile(widths, 10) < 0.45
    assert np.percentile(widths, 90) > 0.8 and widths.max() <= 1.0


def test_without_wide_zoom_the_realistic_look_keeps_the_centres_zoom() -> None:
    from neurosono.phantom.anatomy import sample_anatomy
    from neurosono.phantom.render import REALISTIC

    rng = np.random.default_rng(12)
    shape = (480, 692)
    for index in range(60):
        anatomy = sample_anatomy(rng, "normal")
        style = sample_center(3, index % 8)
        pose = sample_pose(anatomy, style, shape, rng, REALISTIC)
        width = (anatomy.ofd_mm + 2 * anatomy.skull_mm) / pose.spacing_mm / shape[1]
        assert width <= style.zoom_realistic * 1.08 + 1e-6
        assert width >= min(style.zoom_realistic * 0.9, 0.5) - 1e-6
    with pytest.raises(ValueError, match="realistic look"):
        CohortConfig(cases=2, look=1, wide_zoom=True).validate()


def test_the_realistic_look_frames_wide_by_default_and_the_plain_look_never() -> None:
    assert CohortConfig(cases=2).zooms_wide and not CohortConfig(cases=2, wide_zoom=False).zooms_wide
    assert not CohortConfig(cases=2, look=1).zooms_wide
    CohortConfig(cases=2, look=1).validate()  # the default asks nothing of the plain look
    assert all(job.wide_zoom for job in plan_cohort(CohortConfig(cases=3, seed=8, size=96)))
    closer = plan_cohort(CohortConfig(cases=3, seed=8, size=96, wide_zoom=False))
    assert not any(job.wide_zoom for job in closer)


def test_a_wider_zoom_range_frames_small_heads_and_heads_cut_by_the_image() -> None:
    from neurosono.phantom.anatomy import sample_anatomy
    from neurosono.phantom.render import REALISTIC

    rng = np.random.default_rng(13)
    shape = (480, 692)
    widths, taller = [], 0
    for index in range(400):
        anatomy = sample_anatomy(rng, "normal")
        style = sample_center(3, index % 8)
        pose = sample_pose(anatomy, style, shape, rng, REALISTIC, wide_zoom=True, zoom_range=(0.2, 1.4))
        widths.append((anatomy.ofd_mm + 2 * anatomy.skull_mm) / pose.spacing_mm / shape[1])
        taller += 2 * (anatomy.bpd_mm / 2 + anatomy.skull_mm) / pose.spacing_mm > shape[0] + 1
        assert 0 <= pose.center_y <= shape[0]  # a head cut at both ends still has its centre inside
    widths = np.array(widths)
    assert widths.min() < 0.25 and widths.max() > 1.1 and widths.max() <= 1.4 * 1.08 + 1e-6
    assert taller > 0  # some heads are cut at the top and bottom too


def test_the_default_zoom_range_leaves_the_images_as_they_were() -> None:
    from neurosono.phantom.render import REALISTIC_ZOOM

    default = render_case(plan_cohort(CohortConfig(cases=2, seed=9, size=128))[1])
    same = render_case(plan_cohort(CohortConfig(cases=2, seed=9, size=128, zoom_range=REALISTIC_ZOOM))[1])
    for plane in default[2]:
        assert np.array_equal(default[2][plane], same[2][plane])
    with pytest.raises(ValueError, match="zoom-range"):
        CohortConfig(cases=2, zoom_range=(0.5, 0.4)).validate()
    with pytest.raises(ValueError, match="wide zoom"):
        CohortConfig(cases=2, wide_zoom=False, zoom_range=(0.2, 1.2)).validate()


def test_images_stretched_to_squares_keep_their_boxes_and_leave_the_spacing_blank(tmp_path: Path) -> None:
    out = tmp_path / "square"
    generate_cohort(out, CohortConfig(cases=3, seed=10, size=160, square_share=1.0), workers=1)
    dataset = Dataset.load(out)
    assert check_dataset(out).errors == []
    for case in dataset.cases:
        for plane, rel in case.images():
            image = read_grey(dataset.image_path(rel))
            assert image.shape == (160, 160)
            assert case.spacing_mm(plane) is None
            assert read_labels(dataset.label_path(rel))  # the boxes are still there
    with pytest.raises(ValueError, match="square-share"):
        CohortConfig(cases=2, square_share=1.5).validate()
