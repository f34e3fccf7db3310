"""Real-image tools: merge, dedupe, the single-image classifiers, the variant comparison, 'real eval'.

Uses the committed sample (tests/data/real_sample, CC BY 4.0, attribution in its README) and
small synthetic images; tests that need ../shared/data/real skip when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from neurosono.classify.config import ClassifyTrainConfig
from neurosono.classify.crossval import cross_validate
from neurosono.classify.inputs import CaseInputs, gather_cases
from neurosono.classify.kinds import kind_class, load_classifier
from neurosono.classify.train import train_classifier
from neurosono.cli import app
from neurosono.core.metrics import classification_metrics
from neurosono.data.check import check_dataset
from neurosono.data.format import Box, Case, Dataset, default_spec, labels_text, read_labels, write_cases
from neurosono.data.importers import import_hc18, import_roboflow_classification, import_yolo
from neurosono.data.importers import source_image_from_name as source_image
from neurosono.data.merge import MergeError, merge_datasets, one_image_per_source
from neurosono.data.split import kfold
from neurosono.evaluate.real import evaluate_real, plan
from neurosono.models import REAL_DIR

SAMPLE = Path(__file__).parent / "data" / "real_sample"
SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
runner = CliRunner()


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real")
    import_yolo(SAMPLE / "fhead", root / "fhead")
    import_hc18(SAMPLE / "hc18", root / "hc18")
    import_roboflow_classification(SAMPLE / "fbau", root / "fbau")
    return root


def test_merge_prefixes_ids_and_groups_and_keeps_boxes(imported: Path, tmp_path: Path) -> None:
    fhead, hc18 = Dataset.load(imported / "fhead"), Dataset.load(imported / "hc18")
    result = runner.invoke(
        app, ["data", "merge", str(imported / "fhead"), str(imported / "hc18"), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.output
    merged = Dataset.load(tmp_path / "m")
    assert check_dataset(merged.root).ok
    assert len(merged.cases) == len(fhead.cases) + len(hc18.cases)
    assert merged.spec.regions == ["fetal_head"]
    ids = {c.case_id for c in merged.cases}
    assert {f"fhead_{c.case_id}" for c in fhead.cases} | {f"hc18_{c.case_id}" for c in hc18.cases} == ids
    assert {c.group for c in merged.cases} == {f"fhead_{c.group}" for c in fhead.cases} | {
        f"hc18_{c.group}" for c in hc18.cases
    }
    assert all(not c.split and not c.fold for c in merged.cases)
    by_id = {c.case_id: c for c in merged.cases}
    for case in hc18.cases:
        new = by_id[f"hc18_{case.case_id}"]
        assert new.pixel_spacing_mm == case.pixel_spacing_mm and new.extra["hc_mm"] == case.extra["hc_mm"]
        assert new.extra["dataset"] == "hc18" and new.tv_image.startswith("images/hc18/")
        assert read_labels(merged.label_path(new.tv_image)) == read_labels(hc18.label_path(case.tv_image))
        assert merged.image_path(new.tv_image).read_bytes() == hc18.image_path(case.tv_image).read_bytes()
        mask = merged.root / new.extra["tv_head_mask"]  # the head mask travels with its image
        assert mask.read_bytes() == (hc18.root / case.extra["tv_head_mask"]).read_bytes()


def test_merge_shrinks_head_masks_with_their_images(imported: Path, tmp_path: Path) -> None:
    from neurosono.core.images import image_size

    merged = merge_datasets([imported / "fhead", imported / "hc18"], tmp_path / "m", max_side=256)
    for case in merged.cases:
        if case.extra.get("tv_head_mask"):
            mask = merged.root / case.extra["tv_head_mask"]
            assert image_size(mask) == image_size(merged.image_path(case.tv_image))


def test_merge_refuses_different_regions_and_same_names(imported: Path, tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="share one region list"):
        merge_datasets([imported / "fhead", imported / "fbau"], tmp_path / "a")
    with pytest.raises(MergeError, match="names must differ"):
        merge_datasets([imported / "fhead", imported / "fhead"], tmp_path / "b")
    result = runner.invoke(
        app, ["data", "merge", str(imported / "fhead"), str(imported / "fbau"), "--out", "x"]
    )
    assert result.exit_code == 2 and "region" in result.output


def test_source_image_names() -> None:
    assert source_image("Copy-of-arachnoid-cyst-27a_aug_0_png_jpg.rf.70a0.jpg") == "arachnoid-cyst-27a"
    assert source_image("Patient00709_Plane3_1_of_3_png.rf.5073.jpg") == "Patient00709_Plane3_1_of_3"
    assert (
        source_image("Patient00709_Plane3_1_of_3_aug_5_png_jpg.rf.4d38.jpg") == "Patient00709_Plane3_1_of_3"
    )
    assert source_image("014_2HC.png") == "014_2HC"


def test_dedupe_keeps_one_image_per_source(imported: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "dedupe", str(imported / "fbau"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    kept = Dataset.load(tmp_path / "d")
    assert check_dataset(kept.root).ok
    # The sample's six files are copies of three source images (two each).
    assert len(kept.cases) == 3
    assert {c.group for c in kept.cases} == {c.group for c in Dataset.load(imported / "fbau").cases}
    # Already unique (HC18): nothing dropped.
    _, dropped = one_image_per_source(imported / "hc18", tmp_path / "h")
    assert dropped == 0


def _synthetic_heads(root: Path, n: int = 48, seed: int = 0) -> Dataset:
    """Grey images with one bright ring (the 'head') at a random place; abnormal heads hold a dark hole.

    Each image has its head box; the label is visible only inside the head."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cases = []
    for k in range(n):
        image = rng.normal(60, 12, (128, 128)).clip(0, 255).astype(np.uint8)
        r = int(rng.integers(18, 26))
        cx, cy = (int(v) for v in rng.integers(r + 4, 128 - r - 4, 2))
        cv2.circle(image, (cx, cy), r, 200, 3)
        cv2.circle(image, (cx, cy), r - 3, 120, -1)
        abnormal = k % 2 == 1
        if abnormal:
            cv2.circle(image, (cx, cy), r // 2, 10, -1)
        rel = f"images/s{k:03d}.png"
        cv2.imwrite(str(root / rel), image)
        box = Box.from_xyxy(0, cx - r, cy - r, cx + r, cy + r, 128, 128)
        (root / "labels" / f"s{k:03d}.txt").write_text(labels_text([box]))
        cases.append(
            Case(
                f"s{k:03d}",
                "abnormal" if abnormal else "normal",
                source_group=f"g{k // 2}",
                tv_image=rel,
                split=("train", "train", "val", "test")[k % 8 // 2],
            )
        )
    spec = default_spec("synthetic-heads", "neurosono test", "CC0")
    spec.unlabelled_images = "allowed"
    dataset = Dataset(root, spec, cases)
    dataset.write_spec()
    write_cases(root / "cases.csv", cases)
    return Dataset.load(root)


def _with_true_heads(dataset: Dataset, items: list[CaseInputs]) -> list[CaseInputs]:
    for item in items:
        (box,) = read_labels(dataset.label_path(item.case.tv_image))
        item.head, item.head_conf = box.to_xyxy(*item.image.shape[::-1]), 1.0
    return items


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["head-crop", "whole-image"])
def test_single_image_classifier_learns_a_visible_sign(tmp_path: Path, kind: str) -> None:
    dataset = _synthetic_heads(tmp_path / "heads")
    items = _with_true_heads(dataset, gather_cases(dataset, dataset.cases))
    train = [i for i in items if i.case.split == "train"]
    val = [i for i in items if i.case.split == "val"]
    test = [i for i in items if i.case.split == "test"]
    config = ClassifyTrainConfig(epochs=12, patience=12, batch=8, lr=3e-3)
    classifier = kind_class(kind).create(config, dataset.spec.regions, {})
    fit = classifier.fit(train, val)
    scores = classifier.scores(test)
    metrics = classification_metrics([i.label for i in test], scores, fit.threshold, n_boot=50)
    assert metrics["auc"]["value"] >= 0.85, metrics["auc"]


def test_head_crop_falls_back_to_the_whole_image_without_a_head(tmp_path: Path) -> None:
    from neurosono.classify.head_crop import SIZE, head_crop

    dataset = _synthetic_heads(tmp_path / "heads", n=2)
    (item,) = gather_cases(dataset, dataset.cases[:1])
    assert item.head is None
    crop = head_crop(item)
    assert crop.shape == (SIZE, SIZE) and np.isfinite(crop).all()


def test_compare_keeps_groups_in_one_fold_and_reports_every_variant(tmp_path: Path) -> None:
    dataset = _synthetic_heads(tmp_path / "heads", n=40)
    result = cross_validate(
        dataset, ["whole-image"], ClassifyTrainConfig(epochs=1, batch=8), folds=3, n_boot=20
    )
    rows = result["whole-image"]["out_of_fold"]
    assert len(rows) == 40 and {r["case_id"] for r in rows} == {c.case_id for c in dataset.cases}
    fold_of_group: dict[str, set[str]] = {}
    for row in rows:
        fold_of_group.setdefault(row["group"], set()).add(row["fold"])
    assert all(len(f) == 1 for f in fold_of_group.values())
    # The same folds as 'data split --scheme kfold' with the same seed.
    expected = {c.case_id: c.fold for c in kfold(dataset.cases, 0, 3)}
    assert all(expected[r["case_id"]] == r["fold"] for r in rows)
    pooled = result["whole-image"]["pooled_by_group"]
    assert pooled["n_normal"] + pooled["n_abnormal"] == 20
    for key in ("auc", "sensitivity", "specificity", "f1"):
        assert set(result["whole-image"]["pooled_out_of_fold"][key]) >= {"value", "ci95", "method"}
    with pytest.raises(ValueError, match="head detector"):
        cross_validate(dataset, ["head-crop"], ClassifyTrainConfig(epochs=1), folds=3)


@pytest.mark.slow
def test_real_eval_classification_matches_its_own_scores(tmp_path: Path) -> None:
    dataset = _synthetic_heads(tmp_path / "heads")
    run = train_classifier(
        dataset.root, tmp_path / "run", "whole-image", ClassifyTrainConfig(epochs=2), progress=False
    )
    assert "whole-image" in (run / "MODEL_CARD.md").read_text()
    # A classification set has no boxes: drop them so 'auto' picks classification.
    for label in (dataset.root / "labels").iterdir():
        label.unlink()
    assert plan(dataset, "test", "auto") == (False, True)
    result = runner.invoke(
        app,
        [
            "real",
            "eval",
            str(dataset.root),
            "--model",
            str(run),
            "--split",
            "test",
            "--json",
            str(tmp_path / "m.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())["classifier"]
    for key in ("auc", "sensitivity", "specificity", "f1"):
        assert set(metrics[key]) >= {"value", "ci95", "method"}
    model = load_classifier(run)
    test = [c for c in dataset.cases if c.split == "test"]
    scores = model.scores(gather_cases(dataset, test))
    expected = classification_metrics([int(c.label == "abnormal") for c in test], scores, model.threshold)
    assert metrics["auc"]["value"] == expected["auc"]["value"]
    assert metrics["sensitivity"]["count"] == expected["sensitivity"]["count"]
    assert "auc" in result.output and "sensitivity" in result.output
    # The stage verb gives the same figures.
    args = ["classify", "eval", str(dataset.root), "--model", str(run), "--json", str(tmp_path / "c.json")]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads((tmp_path / "c.json").read_text())["auc"]["value"] == expected["auc"]["value"]
    # A folder without a classifier is refused.
    bad = runner.invoke(app, ["real", "eval", str(dataset.root), "--model", str(tmp_path), "--split", "test"])
    assert bad.exit_code == 2


def test_real_eval_refuses_a_dataset_with_nothing_to_measure(imported: Path) -> None:
    hc18 = Dataset.load(imported / "hc18")
    with pytest.raises(ValueError, match="classification needs both"):
        plan(hc18, None, "classification")
    assert plan(hc18, None, "auto") == (True, False)
    fbau = Dataset.load(imported / "fbau")
    with pytest.raises(ValueError, match="no fetal_head boxes"):
        plan(fbau, None, "detection")


def test_shipped_real_models_run_on_the_committed_sample(imported: Path, tmp_path: Path) -> None:
    # The committed sample is part of the shipped models' development data: this checks that the
    # shipped files load, read these images and find what is there, not how well they generalise.
    result = runner.invoke(app, ["real", "eval", str(imported / "fbau"), "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())["classifier"]
    assert len(metrics["predictions"]) == 6 and set(metrics["auc"]) >= {"value", "ci95", "method"}
    assert metrics["classifier_kind"] == "whole-image"
    merged = merge_datasets([imported / "fhead", imported / "hc18"], tmp_path / "head")
    detection = evaluate_real(merged, REAL_DIR, None, "detection", n_boot=20)["detector"]
    # Nine heads, one box each: the shipped head detector finds them.
    assert detection["n_images"] == 9 and detection["map50"]["value"] >= 0.8
    assert detection["recall"]["value"] >= 0.8


@pytest.mark.skipif(not SHARED_REAL.is_dir(), reason="../shared/data/real is not present")
def test_fbau_has_one_image_per_source_after_dedupe(tmp_path: Path) -> None:
    import_roboflow_classification(SHARED_REAL / "fbau", tmp_path / "fbau")
    kept, dropped = one_image_per_source(tmp_path / "fbau", tmp_path / "fbau1")
    assert len(kept.cases) + dropped == 1270
    groups = {c.group for c in kept.cases}
    assert len(groups) == len({c.group for c in Dataset.load(tmp_path / "fbau").cases})
    folds = kfold(kept.cases, 0, 5)
    for fold in {c.fold for c in folds}:
        assert {c.label for c in folds if c.fold == fold} == {"normal", "abnormal"}


def test_merge_shrinks_large_images_and_scales_spacing(imported: Path, tmp_path: Path) -> None:
    from PIL import Image

    merged = merge_datasets([imported / "fhead", imported / "hc18"], tmp_path / "m", max_side=200)
    assert check_dataset(merged.root).ok
    hc18 = {c.case_id: c for c in Dataset.load(imported / "hc18").cases}
    for case in merged.cases:
        with Image.open(merged.image_path(case.tv_image)) as image:
            assert max(image.size) <= 200
        if case.extra["dataset"] == "hc18":
            original = hc18[case.case_id.removeprefix("hc18_")]
            assert case.spacing_mm("tv") == pytest.approx(original.pixel_spacing_mm * 800 / 200, rel=1e-5)


def test_transfer_measures_the_six_region_detector_on_real_images(imported: Path) -> None:
    from neurosono.detect.evaluate import measure_transfer
    from neurosono.detect.model import load_detector
    from neurosono.models import DEFAULT_DETECTOR

    if not DEFAULT_DETECTOR.exists():
        pytest.skip("the shipped phantom detector is absent")
    result = measure_transfer(Dataset.load(imported / "fbau"), load_detector(DEFAULT_DETECTOR))
    assert result["n_images"] == 6 and list(result["regions"]) == load_detector(DEFAULT_DETECTOR).regions
    for entry in result["regions"].values():
        assert 0.0 <= entry["found_fraction"] <= 1.0 and 0.0 <= entry["median_best_confidence"] <= 1.0
    assert sum(result["regions_found_per_image"]["histogram"].values()) == 6


def test_real_compare_and_table_commands(tmp_path: Path) -> None:
    dataset = _synthetic_heads(tmp_path / "heads", n=30)
    out = tmp_path / "cv.json"
    args = ["classify", "cv", str(dataset.root), "--kind", "whole-image", "--folds", "3"]
    result = runner.invoke(app, [*args, "--epochs", "1", "--n-boot", "20", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "whole-image" in result.output and "by group" in result.output
    table = runner.invoke(app, ["classify", "table", str(out)])
    assert table.exit_code == 0 and "whole-image" in table.output and "AUC" in table.output
    other = json.loads(out.read_text())
    other["folds"] = {"0": {}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    mixed = runner.invoke(app, ["classify", "table", str(out), str(tmp_path / "other.json")])
    assert mixed.exit_code == 2 and "different folds" in mixed.output
