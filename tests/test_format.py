from __future__ import annotations

import json
from pathlib import Path

import pytest
from faster_coco_eval import COCO

from neurosono.data.coco import CATEGORY_OFFSET, to_coco
from neurosono.data.format import (
    Box,
    Dataset,
    DatasetFormatError,
    DatasetSpec,
    LabelLineError,
    default_spec,
    label_path_for,
    load_cases,
    read_labels,
)


def test_round_trip_preserves_every_column(tiny_cohort: Path, tmp_path: Path) -> None:
    original = Dataset.load(tiny_cohort)
    copy = Dataset(tmp_path, original.spec, original.cases)
    copy.write_spec()
    copy.write_cases()
    again = Dataset.load(tmp_path)
    assert again.spec == original.spec
    assert again.cases == original.cases
    assert (tmp_path / "cases.csv").read_text() == (tiny_cohort / "cases.csv").read_text()
    first = again.cases[0]
    assert first.extra["atrium_mm"]  # measurement columns survive
    assert first.tv_pixel_spacing_mm and first.tc_pixel_spacing_mm


def test_box_conversions_round_trip() -> None:
    box = Box.from_xyxy(2, 10, 20, 50, 60, width=100, height=200)
    assert box.to_xyxy(100, 200) == pytest.approx((10, 20, 50, 60))
    line = box.to_line()
    assert line.startswith("2 0.300000 0.200000 0.400000 0.200000")


def test_labels_parallel_to_images() -> None:
    assert label_path_for("images/a_tv.png") == "labels/a_tv.txt"
    assert label_path_for("images/sub/b.jpg") == "labels/sub/b.txt"
    assert label_path_for("scans/c.png") == "labels/scans/c.txt"


def test_read_labels_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("0 0.5 0.5 0.1 0.1\n1 0.5 oops 0.1 0.1\n")
    with pytest.raises(LabelLineError) as info:
        read_labels(path)
    assert info.value.line == 2
    assert str(path) in str(info.value)


def test_spec_schema_rejects_bad_yaml_fields() -> None:
    with pytest.raises(ValueError, match="unique"):
        DatasetSpec(name="x", source="s", licence="l", regions=["a", "a"], planes={})
    with pytest.raises(ValueError, match="not in 'regions'"):
        DatasetSpec(name="x", source="s", licence="l", regions=["a"], planes={"tv": {"regions": ["b"]}})
    with pytest.raises(ValueError, match="unknown plane"):
        DatasetSpec(name="x", source="s", licence="l", regions=["a"], planes={"xx": {"regions": []}})
    spec = default_spec("n", "s", "l")
    assert spec.regions[:2] == ["csp", "thalami"]
    assert spec.plane_region_ids("tc") == [0, 1, 4, 5]


def test_cases_csv_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_text("case_id,label\nA,normal\n")
    with pytest.raises(DatasetFormatError, match=r"cases.csv:1: missing required column"):
        load_cases(path)


def test_single_image_cases_fit(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_text(
        "case_id,label,finding,ga_weeks,center,split,tv_image,tc_image,source_group,pixel_spacing_mm\n"
        "A,abnormal,m-magna,,,train,,images/a.jpg,g1,0.2\n"
    )
    (case,) = load_cases(path)
    assert list(case.images()) == [("tc", "images/a.jpg")]
    assert case.spacing_mm("tc") == 0.2 and case.group == "g1"


def test_coco_export_matches_yolo_boxes(tiny_cohort: Path, tmp_path: Path) -> None:
    dataset = Dataset.load(tiny_cohort)
    coco = to_coco(dataset)
    n_boxes = sum(len(read_labels(dataset.label_path(rel))) for c in dataset.cases for _, rel in c.images())
    assert len(coco["images"]) == 2 * len(dataset.cases)
    assert len(coco["annotations"]) == n_boxes > 0
    # The export loads in a standard COCO implementation, and a box survives exactly.
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    api = COCO(str(path))
    first_image = coco["images"][0]
    anns = api.loadAnns(api.getAnnIds(imgIds=[first_image["id"]]))
    boxes = read_labels(dataset.label_path(first_image["file_name"]))
    assert len(anns) == len(boxes)
    x0, y0, x1, y1 = boxes[0].to_xyxy(first_image["width"], first_image["height"])
    assert anns[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-2)
    assert anns[0]["category_id"] == boxes[0].class_id + CATEGORY_OFFSET
    only_test = to_coco(dataset, split="test")
    assert len(only_test["images"]) == 2 * len(dataset.split("test"))
