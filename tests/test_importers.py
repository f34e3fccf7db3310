"""Importers on a small committed sample of the public sets.

Attribution and licences: tests/data/real_sample/README.md (CC BY 4.0).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neurosono.cli import app
from neurosono.data.check import check_dataset
from neurosono.data.format import Dataset, read_labels
from neurosono.data.importers import (
    SourceFormatError,
    import_hc18,
    import_roboflow_classification,
    import_yolo,
)
from neurosono.data.importers import source_group_from_name as group
from neurosono.data.split import holdout

SAMPLE = Path(__file__).parent / "data" / "real_sample"
SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
runner = CliRunner()


def test_source_groups_from_roboflow_names() -> None:
    assert (
        group("Copy-of-anold-chiari-malformation-16e_aug_0_png_jpg.rf.e5ef5d.jpg")
        == "anold-chiari-malformation-16"
    )
    assert group("Patient00709_Plane3_1_of_3_aug_2_png_jpg.rf.5b6ad0.jpg") == "Patient00709"
    assert group("arachnoid-cyst-26a-image_png.rf.9358fc.jpg") == "arachnoid-cyst-26"
    assert group("severe-ventriculomegaly-26c_png.rf.abc.jpg") == "severe-ventriculomegaly-26"


def test_roboflow_classification_import(tmp_path: Path) -> None:
    dataset = import_roboflow_classification(SAMPLE / "fbau", tmp_path / "fbau")
    assert check_dataset(tmp_path / "fbau").ok
    assert len(dataset.cases) == 6
    assert {c.label for c in dataset.cases} == {"normal", "abnormal"}
    assert {c.group for c in dataset.cases} == {
        "Patient00709",
        "anold-chiari-malformation-16",
        "arachnoid-cyst-27",
    }
    normal = next(c for c in dataset.cases if c.label == "normal")
    assert normal.extra["source_plane"] == "Trans-thalamic" and normal.tv_image
    assert dataset.spec.unlabelled_images == "allowed" and "CC BY 4.0" in dataset.spec.licence
    # Group-aware splits keep augmented copies of one source together.
    split = holdout(dataset.cases, seed=0)
    by_group: dict[str, set[str]] = {}
    for case in split:
        by_group.setdefault(case.group, set()).add(case.split)
    assert all(len(s) == 1 for s in by_group.values())


def test_roboflow_one_hot_classes_csv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SAMPLE / "fbau" / "images", src)
    names = sorted(p.name for p in src.iterdir())
    rows = ["filename, normal, anold-chiari-malformation"] + [
        f"{n}, {int(n.startswith('Patient'))}, {int(not n.startswith('Patient'))}" for n in names
    ]
    (src / "_classes.csv").write_text("\n".join(rows) + "\n")
    dataset = import_roboflow_classification(src, tmp_path / "out")
    assert sum(c.label == "normal" for c in dataset.cases) == 2
    assert check_dataset(tmp_path / "out").ok


def test_malformed_csv_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SAMPLE / "fbau", src)
    lines = (src / "labels.csv").read_text().splitlines()
    lines[3] = lines[3] + ",extra,fields,here"
    (src / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFormatError, match=r"labels.csv:4: wrong number of fields"):
        import_roboflow_classification(src, tmp_path / "out")
    result = runner.invoke(app, ["data", "import", "roboflow-classification", str(src), str(tmp_path / "o2")])
    assert result.exit_code == 2 and "labels.csv:4" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists()


def test_yolo_import_turns_label_classes_into_a_head_box(tmp_path: Path) -> None:
    dataset = import_yolo(SAMPLE / "fhead", tmp_path / "fhead")
    assert check_dataset(tmp_path / "fhead").ok
    assert dataset.spec.regions == ["fetal_head"]
    assert len(dataset.cases) == 5 and {c.label for c in dataset.cases} == {"normal", "abnormal"}
    for case in dataset.cases:
        (box,) = read_labels(dataset.label_path(case.tv_image))
        assert box.class_id == 0 and 0 < box.w <= 1


def test_yolo_unknown_class_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SAMPLE / "fhead", src)
    label = sorted((src / "labels").iterdir())[0]
    label.write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(SourceFormatError, match=rf"{label.name}:1: unknown class id 7"):
        import_yolo(src, tmp_path / "out")


def test_hc18_masks_become_head_boxes_with_spacing(tmp_path: Path) -> None:
    dataset = import_hc18(SAMPLE / "hc18", tmp_path / "hc18")
    assert check_dataset(tmp_path / "hc18").ok
    assert len(dataset.cases) == 4
    assert {c.group for c in dataset.cases} == {
        "hc18_000",
        "hc18_001",
        "hc18_014",
    }  # 014_HC and 014_2HC together
    case = next(c for c in dataset.cases if c.case_id == "hc18_000_HC")
    assert case.pixel_spacing_mm == pytest.approx(0.0691358041432)
    assert float(case.extra["hc_mm"]) == pytest.approx(44.3)
    (box,) = read_labels(dataset.label_path(case.tv_image))
    # The box round the mask's ellipse has a perimeter close to the reference HC.
    import math

    a, b = box.w * 800 * case.pixel_spacing_mm / 2, box.h * 540 * case.pixel_spacing_mm / 2
    perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    assert perimeter == pytest.approx(44.3, rel=0.15)


@pytest.mark.skipif(not SHARED_REAL.is_dir(), reason="../shared/data/real is not present")
def test_full_public_sets_import_cleanly(tmp_path: Path) -> None:
    dataset = import_yolo(SHARED_REAL / "fhead", tmp_path / "fhead")
    assert check_dataset(tmp_path / "fhead").ok
    assert len(Dataset.load(tmp_path / "fhead").cases) == len(dataset.cases) > 200
