"""Head-scaled region crops: a structure's size relative to the head shows in its crop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from neurosono.classify.config import ClassifyTrainConfig, input_config
from neurosono.classify.regions import (
    HEAD_CROP_CENTILE,
    MARGIN,
    Detection,
    crop_box,
    learn_crop_fractions,
    region_inputs,
)
from neurosono.cli import app
from neurosono.data.format import Dataset
from neurosono.pipeline.predict import Pipeline

runner = CliRunner()


def _discs(radii: tuple[int, ...]) -> np.ndarray:
    image = np.zeros((240, 120 * len(radii)), np.uint8)
    for k, r in enumerate(radii):
        cv2.circle(image, (60 + 120 * k, 120), r, 255, -1)
    return image


def _bright_share(crop: np.ndarray) -> float:
    return float((crop > crop.mean()).mean())


def test_a_head_scaled_crop_shows_the_size_a_box_crop_hides() -> None:
    image = _discs((12, 24))
    boxes = [(60 - 12, 108, 60 + 12, 132), (180 - 24, 96, 180 + 24, 144)]
    box_shares = [_bright_share(crop_box(image, b)) for b in boxes]
    head_shares = [_bright_share(crop_box(image, b, side=100.0)) for b in boxes]
    # Cut round their boxes the two discs look alike; on one scale the larger fills four times the area.
    assert box_shares[1] == pytest.approx(box_shares[0], rel=0.1)
    assert head_shares[1] / head_shares[0] == pytest.approx(4.0, rel=0.2)


def test_crop_fractions_come_from_the_normal_cases_region_sizes() -> None:
    regions, planes = ["a", "b"], {"tv": ["a", "b"]}
    image = np.zeros((200, 200), np.uint8)
    sizes = np.linspace(10, 30, 11)
    samples = [
        (
            {"tv": image},
            [
                Detection("tv", 0, 0.9, (50, 50, 50 + s, 60)),
                Detection("tv", 1, 0.9, (10, 10, 20, 10 + 2 * s)),
            ],
            {"tv": 100.0},
        )
        for s in sizes
    ]
    fractions = learn_crop_fractions(samples, regions, planes)
    expected_a = np.percentile(sizes / 100, HEAD_CROP_CENTILE) * (1 + 2 * MARGIN)
    assert fractions == pytest.approx((expected_a, 2 * expected_a), abs=1e-4)
    with pytest.raises(ValueError, match="no normal training case shows b"):
        learn_crop_fractions([(s[0], s[1][:1], s[2]) for s in samples], regions, planes)


def test_crop_fractions_fall_back_to_the_labelled_boxes_when_the_detector_finds_a_region_nowhere() -> None:
    from neurosono.classify.hexanet import learnt_crop_fractions
    from neurosono.classify.inputs import CaseInputs
    from neurosono.data.format import Case

    regions, planes = ["a", "b"], {"tv": ["a", "b"]}
    image = np.zeros((200, 200), np.uint8)
    truth = [Detection("tv", 0, 1.0, (50, 50, 70, 60)), Detection("tv", 1, 1.0, (10, 10, 20, 50))]
    items = [
        CaseInputs(Case(f"c{k}", "normal"), 0, {"tv": image}, {"tv": None}, detections=truth[:1], truth=truth)
        for k in range(5)
    ]
    fractions = learnt_crop_fractions(items, regions, planes, ClassifyTrainConfig(crop_scale="head"))
    # Sized from the labelled boxes (the detections lack region b everywhere): b is twice a.
    from_truth = learn_crop_fractions([({"tv": image}, truth, {})] * 5, regions, planes)
    assert fractions["crop_fractions"] == from_truth and from_truth[1] == pytest.approx(2 * from_truth[0])
    blind = [CaseInputs(i.case, 0, i.images, i.spacing, detections=truth[:1]) for i in items]
    with pytest.raises(ValueError, match="no normal training case shows b"):
        learnt_crop_fractions(blind, regions, planes, ClassifyTrainConfig(crop_scale="head"))


def test_region_inputs_crop_on_the_head_scale_with_the_same_scalars() -> None:
    image = {"tv": _discs((12, 24))}
    planes = {"tv": ["small", "large"]}
    detections = [Detection("tv", 0, 0.9, (48, 108, 72, 132)), Detection("tv", 1, 0.9, (156, 96, 204, 144))]
    args = (image, detections, ["small", "large"], planes, {"tv": 0.2})
    box_crops, box_scalars, _ = region_inputs(*args)
    head_crops, head_scalars, _ = region_inputs(*args, head_px={"tv": 200.0}, crop_fractions=(0.5, 0.5))
    assert np.array_equal(box_scalars[:, :4], head_scalars[:, :4])  # present, confidence, mm sizes
    shares = [_bright_share(c) for c in head_crops]
    assert shares[1] / shares[0] == pytest.approx(4.0, rel=0.2)
    assert not np.allclose(box_crops, head_crops)


def test_age_scaled_crops_where_the_age_and_spacing_are_known() -> None:
    image = {"tv": _discs((12, 24))}
    planes = {"tv": ["small", "large"]}
    detections = [Detection("tv", 0, 0.9, (48, 108, 72, 132)), Detection("tv", 1, 0.9, (156, 96, 204, 144))]
    args = (image, detections, ["small", "large"], planes)
    head = {"head_px": {"tv": 200.0}, "crop_fractions": (0.5, 0.5)}
    by_head, _, _ = region_inputs(*args, {"tv": 0.2}, **head)
    # 20 weeks at 0.2 mm/px: the reference is 100 px, so fraction 1.0 is a 100-px side, as the head's.
    same, _, _ = region_inputs(*args, {"tv": 0.2}, ga_weeks=20.0, age_crop_fractions=(1.0, 1.0), **head)
    assert np.allclose(same, by_head, atol=1e-4)
    wider, _, _ = region_inputs(*args, {"tv": 0.2}, ga_weeks=20.0, age_crop_fractions=(2.0, 2.0), **head)
    assert _bright_share(wider[0]) == pytest.approx(_bright_share(by_head[0]) / 4, rel=0.25)
    # Without the age, or without the spacing, the head scale.
    for spacing, ga in (({"tv": 0.2}, None), ({"tv": None}, 20.0)):
        crops, _, _ = region_inputs(*args, spacing, ga_weeks=ga, age_crop_fractions=(2.0, 2.0), **head)
        assert np.allclose(crops, by_head, atol=1e-4)


def test_config_and_model_records_say_how_crops_are_cut() -> None:
    with pytest.raises(ValueError, match="crop_scale must be one of box, head"):
        ClassifyTrainConfig(crop_scale="wide")
    with pytest.raises(ValueError, match="need the gestational age"):
        ClassifyTrainConfig(crop_scale="age")
    # From a JSON record: a list becomes the tuple the config holds.
    assert ClassifyTrainConfig(crop_scale="head", crop_fractions=[0.5, 0.7]).crop_fractions == (0.5, 0.7)
    head = input_config({"head_size": "skull", "crop_fractions": [0.5, 0.7]})
    assert (head.crop_scale, head.crop_fractions, head.head_size) == ("head", (0.5, 0.7), "skull")
    old = input_config({})  # a model written before head-scaled crops
    assert (old.crop_scale, old.crop_fractions, old.head_size) == ("box", None, "span")
    age = input_config({"case_inputs": ["ga_weeks"], "crop_fractions": [0.5], "age_crop_fractions": [1.2]})
    assert (age.crop_scale, age.age_crop_fractions, age.gestational_age) == ("age", (1.2,), True)


# ---------------------------------------------------------------- a tiny age-scaled model, end to end


@pytest.fixture(scope="module")
def age_run(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs on the tiny cohort with the shipped detector (it finds every region on these
    phantoms); age-scaled crops, head-scaled where the age is not given."""
    cohort, _, _ = tiny_run
    run = tmp_path_factory.mktemp("age") / "run"
    args = ["classify", "train", str(cohort), "--out", str(run), "--epochs", "2", "--no-baseline"]
    result = runner.invoke(app, [*args, "--ga", "--crop-scale", "age", "--head-size", "skull"])
    assert result.exit_code == 0, result.output
    return run


def test_scaled_crop_training_records_its_fractions_and_prediction_uses_them(
    tiny_run, age_run: Path, tmp_path: Path
) -> None:
    from neurosono.models import PHANTOM_DIR
    from neurosono.pipeline.export import export_onnx
    from neurosono.pipeline.onnx_files import read_manifest

    cohort, _, _ = tiny_run
    record = json.loads((age_run / "classifier.json").read_text())
    fractions, age_fractions = record["crop_fractions"], record["age_crop_fractions"]
    assert record["config"]["crop_scale"] == "age" and record["config"]["crop_fractions"] == fractions
    for values in (fractions, age_fractions):
        assert len(values) == 6 and all(0.05 < f < 5 for f in values)
    card = (age_run / "MODEL_CARD.md").read_text()
    assert "age-scaled" in card and "head-scaled" in card

    model = tmp_path / "phantom-head"
    (model / "hexanet").mkdir(parents=True)
    for name in ("detector.pt", "detector.json"):
        shutil.copy(PHANTOM_DIR / name, model)
    shutil.copy(age_run / "classifier.pt", model / "hexanet")
    pipeline = Pipeline.load(model)
    case = Dataset.load(cohort).cases[0]
    tv, tc = cohort / case.tv_image, cohort / case.tc_image
    spacing = {plane: case.spacing_mm(plane) for plane in ("tv", "tc")}
    crops_seen = []
    stage2 = pipeline.stage2

    def recording(crops, scalars, case):
        crops_seen.append(crops.copy())
        return stage2(crops, scalars, case)

    pipeline.stage2 = recording
    dated, undated = pipeline.predict(tv, tc, spacing_mm=spacing, ga_weeks=21.0), pipeline.predict(tv, tc)
    # The fractions reach prediction: without them the same images give HexaNet other crops.
    pipeline.meta = {**pipeline.meta, "age_crop_fractions": None}
    pipeline.predict(tv, tc, spacing_mm=spacing, ga_weeks=21.0)
    pipeline.meta = {**pipeline.meta, "crop_fractions": None}
    pipeline.predict(tv, tc)
    assert not np.allclose(crops_seen[0], crops_seen[2]) and not np.allclose(crops_seen[1], crops_seen[3])
    pipeline.stage2 = stage2

    export_onnx(model, tmp_path / "export")
    manifest = read_manifest(tmp_path / "export")
    assert (manifest["crop_fractions"], manifest["age_crop_fractions"]) == (fractions, age_fractions)
    onnx = Pipeline.load(tmp_path / "export", runtime="onnx")
    for ga, expected in ((21.0, dated), (None, undated)):
        got = onnx.predict(tv, tc, spacing_mm=spacing if ga else None, ga_weeks=ga)
        assert abs(got.p_abnormal - expected.p_abnormal) < 2e-3

    args = ["classify", "train", str(cohort), "--out", str(tmp_path / "x"), "--crop-scale", "w"]
    bad = runner.invoke(app, args)
    assert bad.exit_code == 2 and "'w' is not one of 'box', 'head', 'age'" in bad.output
    no_age = runner.invoke(app, [*args[:-1], "age"])
    assert no_age.exit_code == 2 and "need the gestational age as an input (--ga)" in no_age.output
    assert not (tmp_path / "x").exists()
