"""Stage 1 end to end on a tiny cohort, offline; COCO vs ultralytics AP agreement; bad inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from neurosono.cli import app
from neurosono.core.images import ImageReadError
from neurosono.data.format import Dataset
from neurosono.detect.env import config_dir
from neurosono.detect.evaluate import IOU_THRESHOLDS, ImageResult, coco_map, match, matched_ap
from neurosono.detect.model import RegionMismatchError, load_detector
from neurosono.detect.predict import darkness, detect_regions, detector_input, stretched

runner = CliRunner()


def test_training_makes_no_network_call(tiny_run) -> None:
    _, _, attempts = tiny_run
    assert attempts == []


def test_ultralytics_runs_offline_without_its_integrations() -> None:
    import ultralytics.utils as yolo_utils

    assert os.environ["YOLO_OFFLINE"] == "1" and yolo_utils.SETTINGS["sync"] is False
    for integration in ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb"):
        assert yolo_utils.SETTINGS[integration] is False, integration


def test_run_folder_is_complete(tiny_run) -> None:
    cohort, run, _ = tiny_run
    assert {"detector.pt", "detector.json", "metrics.json", "MODEL_CARD.md"} <= {
        p.name for p in run.iterdir()
    }
    assert not list(run.rglob("*.pt"))[1:], "only our own weights file is kept"
    payload = torch.load(run / "detector.pt", map_location="cpu", weights_only=True)
    assert payload["regions"] == Dataset.load(cohort).spec.regions
    assert (run / "detector.pt").stat().st_size < 20e6
    record = json.loads((run / "detector.json").read_text())
    assert record["seed"] == 0 and len(record["dataset"]["sha256_train_val"]) == 64
    assert {"torch", "ultralytics", "neurosono"} <= set(record["versions"])
    assert record["epochs_run"] == 8
    # the darkness under which its input is stretched: its darkest 5% of training images
    dark = record["input"]["dark_below"]
    train = [c for c in Dataset.load(cohort).split("train")]
    means = [darkness(Dataset.load(cohort).image_path(rel)) for c in train for _, rel in c.images()]
    assert dark == pytest.approx(np.percentile(means, 5), abs=0.01)
    assert load_detector(run).dark_below == dark
    assert "synthetic phantoms" in (run / "MODEL_CARD.md").read_text()
    # ultralytics' settings and font live in the folder neurosono controls, not in the home folder.
    assert list(config_dir().rglob("Arial.ttf"))
    assert not str(config_dir()).startswith(str(Path.home()))


def test_training_lowers_the_validation_loss(tiny_run) -> None:
    _, run, _ = tiny_run
    import csv

    with (run / "ultralytics" / "train" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # Too short to find regions from scratch, long enough that the held-out loss must fall.
    losses = [float(r["val/box_loss"]) for r in rows]
    assert len(losses) == 8 and losses[-1] < 0.97 * losses[0]


def _assert_metric(m: dict) -> None:
    assert set(m) >= {"value", "ci95", "method"}
    lo, hi = m["ci95"]
    assert lo <= m["value"] <= hi
    assert "bootstrap" in m["method"]


def test_eval_cli_writes_complete_metrics(tiny_run, tmp_path: Path) -> None:
    cohort, run, _ = tiny_run
    out = tmp_path / "metrics.json"
    result = runner.invoke(
        app, ["detect", "eval", str(run), str(cohort), "--json", str(out), "--n-boot", "100"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert {"map50", "map50_95", "precision", "recall", "per_region", "per_plane", "n_images"} <= set(metrics)
    for key in ("map50", "map50_95", "precision", "recall"):
        _assert_metric(metrics[key])
    assert set(metrics["per_plane"]) == {"tv", "tc"}
    for entry in list(metrics["per_region"].values()) + list(metrics["per_plane"].values()):
        _assert_metric(entry["map50"])
    assert metrics["n_images"] == 2 * len(Dataset.load(cohort).split("test"))
    again = tmp_path / "again.json"
    runner.invoke(app, ["detect", "eval", str(run), str(cohort), "--json", str(again), "--n-boot", "100"])
    assert json.loads(again.read_text()) == metrics  # seeded bootstrap: reproducible


def test_predict_returns_boxes_per_image(tiny_run, tmp_path: Path) -> None:
    cohort, run, _ = tiny_run
    images = sorted((cohort / "images").glob("*.png"))[:3]
    out = tmp_path / "pred.json"
    result = runner.invoke(
        app, ["detect", "predict", str(run), *map(str, images), "--json", str(out), "--conf", "0.0"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [r["image"] for r in payload["images"]] == [str(p) for p in images]
    assert len(payload["model_sha256"]) == 64
    for record in payload["images"]:
        for det in record["detections"]:
            x0, y0, x1, y1 = det["box"]
            assert 0 <= x0 <= x1 <= 128 and 0 <= y0 <= y1 <= 128
            assert det["region"] in Dataset.load(cohort).spec.regions


def test_corrupt_image_is_a_clear_error(tiny_run, tmp_path: Path) -> None:
    _, run, _ = tiny_run
    fake = tmp_path / "scan.png"
    fake.write_text("not an image")
    with pytest.raises(ImageReadError, match=r"scan\.png"):
        detect_regions(load_detector(run), [fake])
    result = runner.invoke(app, ["detect", "predict", str(run), str(fake)])
    assert result.exit_code == 2 and "scan.png" in result.output


def test_training_refuses_a_dataset_with_a_corrupt_image(tiny_run, tmp_path: Path) -> None:
    cohort, _, _ = tiny_run
    broken = tmp_path / "broken"
    shutil.copytree(cohort, broken)
    next((broken / "images").glob("*.png")).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = runner.invoke(
        app, ["detect", "train", str(broken), "--out", str(tmp_path / "r"), "--imgsz", "64"]
    )
    assert result.exit_code == 1 and "truncated image" in result.output and "_t" in result.output
    assert not (tmp_path / "r").exists()


def _renamed(cohort: Path, target: Path, rename: dict[str, str]) -> Path:
    shutil.copytree(cohort, target)
    spec = yaml.safe_load((target / "dataset.yaml").read_text())
    spec["regions"] = [rename.get(r, r) for r in spec["regions"]]
    for plane in spec["planes"].values():
        plane["regions"] = [rename.get(r, r) for r in plane["regions"]]
    (target / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return target


def test_detect_eval_scores_the_regions_a_dataset_shares_by_name(tiny_run, tmp_path: Path) -> None:
    from neurosono.detect.evaluate import evaluate_detector

    cohort, run, _ = tiny_run
    detector = load_detector(run)
    full = evaluate_detector(detector, Dataset.load(cohort), n_boot=10)
    other = _renamed(cohort, tmp_path / "other", {"csp": "cavum"})
    part = evaluate_detector(detector, Dataset.load(other), n_boot=10)
    assert part["regions_scored"] == [r for r in Dataset.load(cohort).spec.regions if r != "csp"]
    assert part["regions_not_scored"] == ["cavum", "csp"] and "cavum" not in part["per_region"]
    # The shared regions score as they do on the full dataset.
    for region, m in part["per_region"].items():
        assert m["map50"]["value"] == full["per_region"][region]["map50"]["value"]
    none = _renamed(cohort, tmp_path / "none", {r: f"x{k}" for k, r in enumerate(detector.regions)})
    with pytest.raises(RegionMismatchError, match="share none"):
        evaluate_detector(detector, Dataset.load(none), n_boot=10)
    result = runner.invoke(app, ["detect", "eval", str(none), "--detector", str(run)])
    assert result.exit_code == 2 and "share none" in result.output


def _fixture_results(seed: int = 0, n_images: int = 40, n_classes: int = 3) -> tuple[dict, list[ImageResult]]:
    """Ground truth with jittered, missed and false detections, as COCO and as ImageResults."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append(
            {"id": image_id, "file_name": f"{image_id}.png", "width": 200, "height": 200, "plane": "tv"}
        )
        gt_cls = rng.choice(n_classes, size=rng.integers(1, 4), replace=False)
        gt = []
        for c in gt_cls:
            x, y = rng.uniform(10, 140, 2)
            w, h = rng.uniform(15, 50, 2)
            gt.append([x, y, x + w, y + h])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(c) + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        gt = np.array(gt)
        dets, cls, scores = [], [], []
        for c, box in zip(gt_cls, gt, strict=True):
            if rng.random() < 0.85:  # found, with localisation noise
                dets.append(box + rng.normal(0, 4, 4))
                cls.append(c)
                scores.append(rng.uniform(0.3, 1.0))
        for _ in range(rng.integers(0, 3)):  # false positives
            x, y = rng.uniform(0, 150, 2)
            dets.append([x, y, x + 30, y + 30])
            cls.append(rng.integers(n_classes))
            scores.append(rng.uniform(0.0, 0.7))
        results.append(
            ImageResult(
                image_id,
                "tv",
                gt_cls,
                gt,
                np.array(cls, dtype=int),
                np.array(scores),
                np.array(dets).reshape(-1, 4),
            )
        )
    categories = [{"id": k + 1, "name": f"r{k}"} for k in range(n_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def test_coco_eval_and_ultralytics_validator_agree_on_map50() -> None:
    from ultralytics.utils.metrics import ap_per_class

    coco, results = _fixture_results()
    coco_value = coco_map(coco, results)["map50"]
    # ultralytics' validator path: its greedy matching (match_predictions) and ap_per_class.
    from ultralytics.models.yolo.detect.val import DetectionValidator

    validator = DetectionValidator.__new__(DetectionValidator)
    validator.iouv = torch.tensor(IOU_THRESHOLDS, dtype=torch.float32)
    from ultralytics.utils.metrics import box_iou

    tps, confs, pred_cls, target_cls = [], [], [], []
    for r in results:
        order = np.argsort(-r.det_scores)
        det, cls, score = r.det_boxes[order], r.det_classes[order], r.det_scores[order]
        iou = box_iou(torch.tensor(r.gt_boxes, dtype=torch.float32), torch.tensor(det, dtype=torch.float32))
        tp = validator.match_predictions(torch.tensor(cls), torch.tensor(r.gt_classes), iou).numpy()
        tps.append(tp)
        confs.append(score)
        pred_cls.append(cls)
        target_cls.append(r.gt_classes)
    out = ap_per_class(
        np.concatenate(tps), np.concatenate(confs), np.concatenate(pred_cls), np.concatenate(target_cls)
    )
    ultralytics_value = float(out[5][:, 0].mean())
    ours = float(np.nanmean(matched_ap(match(results, 3), np.arange(len(results)), 3)[:, 0]))
    assert coco_value > 0.5
    assert abs(coco_value - ultralytics_value) < 0.01
    assert abs(coco_value - ours) < 0.01  # the bootstrap's AP reproduces COCOeval's


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("imgsz", 300, "multiple of 32"),
        ("epochs", 0, "at least 1"),
        ("lr0", 2.0, "--lr0"),
        ("warmup_epochs", -1.0, "--warmup-epochs"),
        ("model", "yolov8x", "--model"),
    ],
)
def test_training_settings_out_of_range_are_refused(field, value, message):
    from neurosono.detect.train import DetectTrainConfig

    with pytest.raises(ValueError, match=message):
        DetectTrainConfig(**{field: value}).validate()
    DetectTrainConfig(lr0=5e-4, warmup_epochs=0.0).validate()  # a fine-tuning recipe is accepted


def test_a_region_never_detected_scores_zero_whether_or_not_others_are() -> None:
    from dataclasses import replace

    coco, results = _fixture_results()
    silent = [
        replace(r, det_classes=np.zeros(0, int), det_scores=np.zeros(0), det_boxes=np.zeros((0, 4)))
        for r in results
    ]
    nothing = coco_map(coco, silent)
    assert nothing["map50"] == 0.0
    assert nothing["per_class_ap50"] == {0: 0.0, 1: 0.0, 2: 0.0}
    # COCOeval itself gives AP 0 to a region with no detections when other regions have some.
    without_region_0 = [
        replace(
            r,
            det_classes=r.det_classes[r.det_classes != 0],
            det_scores=r.det_scores[r.det_classes != 0],
            det_boxes=r.det_boxes[r.det_classes != 0],
        )
        for r in results
    ]
    partial = coco_map(coco, without_region_0)["per_class_ap50"]
    assert partial[0] == 0.0
    assert partial[1] > 0.5 and partial[2] > 0.5


def test_a_dark_image_reaches_the_detector_stretched_and_others_as_they_are(tmp_path: Path) -> None:
    import cv2

    from neurosono.core.images import read_image
    from neurosono.models import DEFAULT_DETECTOR

    rng = np.random.default_rng(0)
    grey = np.zeros((120, 160), np.uint8)
    grey[20:100, 30:130] = rng.integers(5, 40, (80, 100))  # a dim sector in black
    path = tmp_path / "dim.png"
    cv2.imwrite(str(path), grey)
    assert darkness(path) == pytest.approx(grey[grey > 0].mean())
    seen = detector_input(path, dark_below=30.0)
    assert seen.shape == (120, 160, 3) and (seen[..., 0] == seen[..., 2]).all()
    inside = seen[..., 0][grey > 0]
    assert inside.max() == 255 and inside.mean() > 3 * grey[grey > 0].mean()
    assert (seen[grey == 0] == 0).all()  # the black round the sector stays black
    np.testing.assert_array_equal(seen, stretched(grey))
    # the percentiles come from the grey-level histogram: the same as numpy's, pixel for pixel
    for _ in range(5):
        noisy = np.where(rng.random((64, 80)) < 0.2, 0, rng.integers(0, 256, (64, 80))).astype(np.uint8)
        lo, hi = np.percentile(noisy[noisy > 0], [1, 99.5])
        expected = np.clip((noisy.astype(np.float32) - lo) / max(hi - lo, 1) * 255, 0, 255).astype(np.uint8)
        expected[noisy == 0] = 0
        np.testing.assert_array_equal(stretched(noisy)[..., 1], expected)
    # brighter than the threshold, or no threshold: the image as it is
    as_read = read_image(path).bgr()
    np.testing.assert_array_equal(detector_input(path, dark_below=10.0), as_read)
    np.testing.assert_array_equal(detector_input(read_image(path)), as_read)
    # the shipped phantom detector carries its threshold in its record
    assert 20 < load_detector(DEFAULT_DETECTOR).dark_below < 40


def test_an_images_boxes_do_not_depend_on_the_images_batched_with_it(tiny_cohort: Path) -> None:
    """A prediction detects one pair, an evaluation eight images at a time: grouped by size,
    each image is letterboxed the same way in both, so both see the same boxes."""
    import cv2

    from neurosono.core.images import read_image
    from neurosono.detect.predict import predict_images
    from neurosono.models import DEFAULT_DETECTOR

    detector = load_detector(DEFAULT_DETECTOR)
    dataset = Dataset.load(tiny_cohort)
    case = dataset.cases[0]
    tv = read_image(dataset.image_path(case.tv_image)).bgr()
    tc = read_image(dataset.image_path(case.tc_image)).bgr()
    wide = cv2.resize(tc, (tc.shape[1] * 3 // 2, tc.shape[0]))  # another size in the same batch
    alone = predict_images(detector, [tv])[0]
    for batch, position in (([tv, wide], 0), ([wide, tv, tc], 1), ([tc, wide, wide, tv], 3)):
        mixed = predict_images(detector, batch)[position]
        assert len(alone[1]) == len(mixed[1]) > 0
        np.testing.assert_array_equal(alone[0], mixed[0])
        np.testing.assert_allclose(alone[1], mixed[1], atol=1e-5)
        np.testing.assert_allclose(alone[2], mixed[2], atol=1e-3)
