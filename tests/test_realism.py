"""The realism scoreboard on the committed real sample and a tiny phantom cohort."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neurosono.cli import app
from neurosono.data.format import Dataset
from neurosono.data.importers import import_hc18, import_roboflow_classification, import_yolo
from neurosono.detect.model import load_detector
from neurosono.evaluate.realism import realism_scoreboard, side_by_side
from neurosono.models import DEFAULT_DETECTOR, HEAD_REGION
from neurosono.phantom.cohort import REALISTIC, CohortConfig, generate_cohort

SAMPLE = Path(__file__).parent / "data" / "real_sample"
runner = CliRunner()


@pytest.fixture(scope="module")
def real_and_phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    root = tmp_path_factory.mktemp("realism")
    import_yolo(SAMPLE / "fhead", root / "fhead")
    import_hc18(SAMPLE / "hc18", root / "hc18")
    import_roboflow_classification(SAMPLE / "fbau", root / "fbau")
    config = CohortConfig(cases=10, seed=4, centers=3, size=256, look=REALISTIC, tt=True)
    generate_cohort(root / "phantom", config, workers=1)
    return [root / "fhead", root / "hc18", root / "fbau"], root / "phantom"


def metric_ok(entry: dict) -> bool:
    low, high = entry["ci95"]
    return 0 <= low <= entry["value"] <= high <= 1 and entry["method"]


def test_scoreboard_on_the_committed_sample(real_and_phantom, tmp_path: Path) -> None:
    real, phantom = real_and_phantom
    detector = load_detector(DEFAULT_DETECTOR)
    datasets = [Dataset.load(p) for p in real]
    board = realism_scoreboard(datasets, Dataset.load(phantom), detector, n_boot=50, most=40, epochs=1)
    assert set(board["head_map50"]) == {"fhead", "hc18"}  # fbau has no head boxes
    for entry in board["head_map50"].values():
        if HEAD_REGION in detector.regions:
            assert metric_ok(entry) and entry["n_images"] > 0
        else:
            assert entry["value"] is None and HEAD_REGION in entry["note"]
    for key in ("statistics_auc", "discriminator_auc", "style_check_auc", "phantom_plane_auc"):
        assert metric_ok(board[key]), key
    # The sample's fbau images are transthalamic: their regions are counted under that plane.
    tt = board["regions_found"]["tt"]
    assert set(tt) == set(detector.regions) and all(0 <= e["value"] <= 1 for e in tt.values())
    assert set(board["phantom_regions_found"]) == {"tv", "tc", "tt"}
    assert board["n_real_images"] == board["n_phantom_images"] > 0
    sheet = side_by_side(datasets, Dataset.load(phantom), tmp_path / "sheet.png")
    assert sheet.stat().st_size > 1000


def test_realism_command_writes_the_json(real_and_phantom, tmp_path: Path) -> None:
    real, phantom = real_and_phantom
    out = tmp_path / "board.json"
    args = ["realism", *map(str, real), "--phantom", str(phantom), "--n-boot", "30", "--epochs", "1"]
    result = runner.invoke(app, [*args, "--most", "30", "--json", str(out)])
    assert result.exit_code == 0, result.output
    board = json.loads(out.read_text())
    assert {"head_map50", "stage1_plane_auc", "regions_found", "discriminator_auc", "statistics_auc"} <= set(
        board
    )
    assert "statistics discriminator AUC" in result.output
    bad = runner.invoke(app, ["realism", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "missing" in bad.output


@pytest.mark.slow
def test_learning_curve_fine_tunes_from_the_phantom_detector(real_and_phantom, tmp_path: Path) -> None:
    """Both starts at each size, scored on the same held-out images; tiny, so one epoch."""
    from dataclasses import replace

    from neurosono.data.format import write_cases
    from neurosono.data.merge import merge_datasets
    from neurosono.evaluate.pretraining import by_group_order, learning_curve

    detector = load_detector(DEFAULT_DETECTOR)
    if HEAD_REGION not in detector.regions:
        pytest.skip("the shipped phantom detector has no fetal_head region")
    real, _ = real_and_phantom
    head = merge_datasets(real[:2], tmp_path / "head", name="head", max_side=128)
    ordered = by_group_order(head.cases, seed=0)
    splits = ["test", "val"] + ["train"] * (len(ordered) - 2)
    write_cases(head.root / "cases.csv", [replace(c, split=s) for c, s in zip(ordered, splits, strict=True)])
    curve = learning_curve(
        head.root, tmp_path / "work", DEFAULT_DETECTOR, sizes=(2, None), imgsz=64, epochs=1, n_boot=20
    )
    points = curve["points"]
    assert [(p["init"], p["n_train"]) for p in points] == [
        ("phantom", 2),
        ("scratch", 2),
        ("phantom", len(ordered) - 2),
        ("scratch", len(ordered) - 2),
    ]
    assert {p["n_test_images"] for p in points} == {1}
    assert all(0 <= p["map50"]["value"] <= 1 for p in points)
    record = json.loads((tmp_path / "work" / "phantom_n2" / "detector.json").read_text())
    assert record["init_from_sha256"] == detector.sha256
    scratch = json.loads((tmp_path / "work" / "scratch_n2" / "detector.json").read_text())
    assert scratch["init_from_sha256"] is None
