"""Stage 2: HexaNet forward with missing regions, learning, and a tiny end-to-end run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neurosono.classify.config import ClassifyTrainConfig
from neurosono.classify.fit import fit_binary, predict_scores
from neurosono.classify.networks import HexaNet, MiniResNet, count_parameters, drop_one_region_attribution
from neurosono.classify.regions import crop_box, select_regions
from neurosono.cli import app
from neurosono.core.metrics import point_metrics
from neurosono.detect.predict import Detection

runner = CliRunner()


def test_minresnet_is_small_and_hexanet_handles_any_region_count() -> None:
    assert count_parameters(MiniResNet()) < 500_000
    for n_regions, shared in ((6, False), (3, False), (6, True)):
        model = HexaNet(n_regions, share_branches=shared).eval()
        crops, scalars = torch.randn(2, n_regions, 1, 64, 64), torch.rand(2, n_regions, 6)
        assert model(crops, scalars).shape == (2,)


def test_forward_with_regions_missing() -> None:
    model = HexaNet(6).eval()
    crops, scalars = torch.randn(4, 6, 1, 64, 64), torch.rand(4, 6, 6)
    crops[:, 0] = 0  # CSP not found
    scalars[:, 0] = 0
    crops[1] = 0  # nothing found at all
    scalars[1] = 0
    logits = model(crops, scalars)
    assert torch.isfinite(logits).all()
    attribution = drop_one_region_attribution(model, crops, scalars)
    assert attribution.shape == (4, 6)
    assert torch.allclose(
        attribution[:, 0], torch.zeros(4), atol=1e-6
    )  # dropping an absent region changes nothing


def test_best_box_per_region_comes_from_its_planes() -> None:
    regions = ["csp", "thalami", "lateral_ventricle", "sylvian_fissure", "cerebellum", "cisterna_magna"]
    planes = {"tv": regions[:4], "tc": ["csp", "thalami", "cerebellum", "cisterna_magna"]}
    dets = [
        Detection("tv", 0, 0.6, (0, 0, 10, 10)),
        Detection("tc", 0, 0.9, (5, 5, 15, 15)),  # CSP seen better in TC: chosen
        Detection("tc", 2, 0.99, (0, 0, 5, 5)),  # a ventricle box in TC does not count
        Detection("tc", 4, 0.8, (1, 1, 9, 9)),
    ]
    chosen = select_regions(dets, regions, planes)
    assert chosen[0].plane == "tc" and chosen[0].confidence == 0.9
    assert chosen[2] is None and chosen[1] is None and chosen[4].class_id == 4
    crop = crop_box(np.full((100, 100), 50, np.uint8), (40, 40, 60, 60))
    assert crop.shape == (64, 64) and np.isfinite(crop).all()


@dataclass
class _Item:
    label: int
    crops: np.ndarray
    scalars: np.ndarray


def _synthetic_items(n: int, rng: np.random.Generator) -> list[_Item]:
    """Abnormal = the first region is missing, or the third region's crop is dark in its centre."""
    items = []
    for i in range(n):
        crops = rng.normal(0, 1, (6, 1, 32, 32)).astype(np.float32)
        scalars = np.tile([1.0, 0.9, 1.0, 1.0, 0.3, 0.3], (6, 1)).astype(np.float32)
        label = i % 3 == 0
        if label and i % 2:
            crops[0], scalars[0] = 0, 0
        elif label:
            crops[2, 0, 10:22, 10:22] -= 3
        items.append(_Item(int(label), crops, scalars))
    return items


def _batches(items, train, rng):
    crops = torch.from_numpy(np.stack([i.crops for i in items]))
    scalars = torch.from_numpy(np.stack([i.scalars for i in items]))
    return (crops, scalars), torch.tensor([i.label for i in items], dtype=torch.float32)


@pytest.mark.slow
def test_hexanet_learns_region_level_abnormalities() -> None:
    rng = np.random.default_rng(0)
    train, val, test = _synthetic_items(90, rng), _synthetic_items(30, rng), _synthetic_items(45, rng)
    model = HexaNet(6, widths=(8, 16, 32))
    config = ClassifyTrainConfig(epochs=12, batch=16, lr=3e-3, patience=12)
    fit = fit_binary(model, train, val, _batches, config, False, "test")
    scores = predict_scores(model, test, _batches)
    labels = np.array([i.label for i in test])
    assert point_metrics(labels, scores, 0.5)["auc"] > 0.9
    assert len(fit.history) >= fit.best_epoch and 0 < fit.threshold < 1


def test_tiny_end_to_end_train_and_eval(tiny_run, tiny_hexanet: Path, tmp_path: Path) -> None:
    cohort, _, _ = tiny_run
    run = tiny_hexanet
    record = json.loads((run / "classifier.json").read_text())
    assert "validation" in record["threshold_rule"] and 0 <= record["threshold"] <= 1
    out = tmp_path / "eval"
    metrics_file = tmp_path / "metrics.json"
    result = runner.invoke(
        app,
        [
            "classify",
            "eval",
            str(cohort),
            "--model",
            str(run),
            "--split",
            "all",
            "--out",
            str(out),
            "--json",
            str(metrics_file),
            "--n-boot",
            "100",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_file.read_text())
    assert {
        "auc",
        "sensitivity",
        "specificity",
        "f1",
        "accuracy",
        "ppv",
        "npv",
        "threshold",
        "n_normal",
        "n_abnormal",
    } <= set(metrics)
    assert metrics["n_normal"] + metrics["n_abnormal"] == 24
    assert metrics["sensitivity"]["count"].endswith(f"of {metrics['n_abnormal']}")
    assert "ci95_delong" in metrics["auc"] and "ci95_wilson" in metrics["specificity"]
    assert {"predictions.csv", "roc.png", "reliability.png", "metrics.json"} <= {
        p.name for p in out.iterdir()
    }
    assert metrics["detector_matches_training"] is True


def test_cross_validation_and_pipeline_evaluate(tiny_run, tiny_hexanet: Path, tmp_path: Path) -> None:
    cohort, _, _ = tiny_run
    run = tiny_hexanet
    assert (run / "baseline" / "baseline.pt").exists()  # trained beside HexaNet, same split and budget

    cv_file = tmp_path / "cv.json"
    args = ["classify", "cv", str(cohort), "--like", str(run), "--kind", "hexanet", "--kind", "whole-image"]
    cv = runner.invoke(app, [*args, "--folds", "2", "--n-boot", "50", "--json", str(cv_file)])
    assert cv.exit_code == 0, cv.output
    result = json.loads(cv_file.read_text())
    assert result["config"]["epochs"] == 2  # the run's own configuration, repeated per fold
    for model_name in ("hexanet", "whole-image"):
        folds = result[model_name]["per_fold"]
        assert [f["fold"] for f in folds] == ["0", "1"]
        assert sum(f["n"] for f in folds) == 24  # every case held out exactly once
        pooled = result[model_name]["pooled_out_of_fold"]
        assert pooled["n_normal"] + pooled["n_abnormal"] == 24
        assert "mean" in result[model_name]["mean_sd"]["accuracy"]

    both = tmp_path / "both.json"
    evaluated = runner.invoke(
        app, ["eval", str(cohort), "--model", str(run), "--n-boot", "50", "--json", str(both)]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "whole-image baseline" in evaluated.output
    payload = json.loads(both.read_text())
    assert {"detector", "hexanet", "baseline"} <= set(payload)
    assert "map50" in payload["detector"] and "auc" in payload["baseline"]

    every = tmp_path / "every.json"
    whole = runner.invoke(
        app,
        ["eval", str(cohort), "--model", str(run), "--split", "all", "--n-boot", "50", "--json", str(every)],
    )
    assert whole.exit_code == 0, whole.output
    counts = json.loads(every.read_text())["hexanet"]
    assert counts["n_normal"] + counts["n_abnormal"] == 24  # every case, not one split
    unknown = runner.invoke(app, ["eval", str(cohort), "--model", str(run), "--split", "nosuch"])
    assert unknown.exit_code == 2 and "no cases in split 'nosuch'" in unknown.output
    assert unknown.exception is None or isinstance(unknown.exception, SystemExit)


def test_cross_validation_can_fine_tune_every_fold_from_a_run(tiny_run, tiny_hexanet: Path, tmp_path: Path):
    cohort, _, _ = tiny_run
    record = json.loads((tiny_hexanet / "classifier.json").read_text())
    cv_file = tmp_path / "cv.json"
    args = ["classify", "cv", str(cohort), "--like", str(tiny_hexanet), "--kind", "hexanet", "--folds", "2"]
    cv = runner.invoke(app, [*args, "--init", str(tiny_hexanet), "--n-boot", "20", "--json", str(cv_file)])
    assert cv.exit_code == 0, cv.output
    result = json.loads(cv_file.read_text())
    start = result["initialised_from"]["hexanet"]
    assert start["file"] == "classifier.pt" and len(start["sha256"]) == 64
    assert result["detector_sha256"] == record["detector_sha256"]  # behind the run's own stage 1
    assert result["config"]["epochs"] == record["config"]["epochs"]
    assert sum(f["n"] for f in result["hexanet"]["per_fold"]) == 24
    mixed = runner.invoke(app, [*args, "--kind", "whole-image", "--init", str(tiny_hexanet)])
    assert mixed.exit_code == 2 and "cannot start a whole-image run" in mixed.output


def test_support_reads_the_surer_half_of_the_needed_regions() -> None:
    from neurosono.classify.domain import domain_rule, indeterminate_reason, stage1_support

    regions = ["csp", "thalami", "lateral_ventricle", "cerebellum"]
    planes = {"tv": ["csp", "thalami", "lateral_ventricle"], "tc": ["csp", "thalami", "cerebellum"]}
    box = (0.0, 0.0, 10.0, 10.0)
    found = [Detection("tv", 0, 0.9, box), Detection("tv", 1, 0.7, box), Detection("tc", 3, 0.2, box)]
    # All four needed: the surer half is 0.9 and 0.7 (a missing region counts 0, in the lower half).
    assert stage1_support(found, regions, planes, ["tv", "tc"]) == pytest.approx(0.8)
    # TC alone needs csp, thalami and the cerebellum (not the ventricle): the surer two of them.
    tc_only = [d for d in found if d.plane == "tc"]
    assert stage1_support(tc_only, regions, planes, ["tc"]) == pytest.approx(0.2 / 2)
    # A cerebellum "seen" in TV does not belong there and gives no support.
    assert stage1_support([Detection("tv", 3, 0.9, box)], regions, planes, ["tv", "tc"]) == 0.0
    rule = domain_rule([0.2, 0.6, 0.7, 0.8, 0.9] * 10, share=0.005)  # 50 cases: none may fall below
    assert rule["min_support"] == pytest.approx(0.2 / 2)  # below the lowest, halfway to zero
    assert rule["validation_share_flagged"] == 0.0
    rule = domain_rule([0.1] + [0.8] * 199, share=0.005)  # one case of 200 may fall below
    assert rule["min_support"] == pytest.approx(0.45) and rule["validation_share_flagged"] == 0.005
    assert indeterminate_reason(0.5, rule) is None
    assert "indeterminate" in indeterminate_reason(0.3, rule)
    assert indeterminate_reason(0.0, None) is None  # a model without the rule always answers


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_run_and_refuses_other_inputs(
    tiny_run, tiny_hexanet: Path, tmp_path: Path
) -> None:
    from neurosono.classify.kinds import load_classifier
    from neurosono.core.checkpoints import file_sha256

    cohort, detector_run, _ = tiny_run
    args = ["classify", "train", str(cohort), "--detector", str(detector_run), "--epochs", "1"]
    # A learning rate too small to move the weights: the run must end where it started.
    tuned = tmp_path / "tuned"
    result = runner.invoke(app, [*args, "--out", str(tuned), "--init", str(tiny_hexanet), "--lr", "1e-12"])
    assert result.exit_code == 0, result.output
    record = json.loads((tuned / "classifier.json").read_text())
    assert record["initialised_from"]["sha256"] == file_sha256(tiny_hexanet / "classifier.pt")
    for folder in ("", "baseline"):
        start, end = load_classifier(tiny_hexanet / folder), load_classifier(tuned / folder)
        for name, weights in start.model.state_dict().items():
            if weights.is_floating_point() and "running" not in name:
                assert torch.allclose(weights, end.model.state_dict()[name], atol=1e-6), (folder, name)
    # Other inputs than the starting model's: refused, naming the setting.
    refused = runner.invoke(
        app, [*args, "--out", str(tmp_path / "x"), "--init", str(tiny_hexanet), "--crop-scale", "head"]
    )
    assert refused.exit_code == 2 and "crop_scale 'box'" in refused.output
    assert not (tmp_path / "x").exists()


def test_calibration_chooses_the_thresholds_again_through_another_stage_1(
    tiny_run, tiny_hexanet: Path, tmp_path: Path
) -> None:
    from neurosono.classify.calibrate import calibrate_classifier
    from neurosono.classify.kinds import load_classifier
    from neurosono.models import DEFAULT_DETECTOR

    cohort, detector_run, _ = tiny_run
    trained = json.loads((tiny_hexanet / "classifier.json").read_text())
    # Behind the detector it was trained with, on its own validation split, the two rules
    # give back the thresholds training chose.
    same = calibrate_classifier(tiny_hexanet, cohort, tmp_path / "same", detector_run, progress=False)
    assert same["threshold"] == pytest.approx(trained["threshold"], abs=1e-5)
    assert same["min_support"] == pytest.approx(trained["indeterminate"]["min_support"], abs=1e-4)
    # Behind another detector they move, the weights do not, and the new run says from what.
    result = runner.invoke(
        app,
        ["classify", "calibrate", str(tiny_hexanet), str(cohort), "--out", str(tmp_path / "cal"),
         "--detector", str(DEFAULT_DETECTOR)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "support threshold" in result.output and "->" in result.output
    record = json.loads((tmp_path / "cal" / "classifier.json").read_text())
    shipped_sha = record["calibration"]["detector_sha256"]
    assert record["detector_sha256"] == shipped_sha != trained["detector_sha256"]
    assert record["calibration"]["from"]["threshold"] == trained["threshold"]
    assert record["calibration"]["dataset"]["split"] == "val"
    assert (record["threshold"], record["indeterminate"]["min_support"]) != (
        trained["threshold"],
        trained["indeterminate"]["min_support"],
    )
    before, after = load_classifier(tiny_hexanet), load_classifier(tmp_path / "cal")
    assert after.threshold == record["threshold"]
    assert after.meta["indeterminate"]["min_support"] == record["indeterminate"]["min_support"]
    for name, tensor in before.model.state_dict().items():
        assert torch.equal(tensor, after.model.state_dict()[name])
    assert (tmp_path / "cal" / "baseline" / "baseline.pt").is_file()
    assert "**Calibrated** behind the detector" in (tmp_path / "cal" / "MODEL_CARD.md").read_text()
    # `classify eval` on the new run reads the detector it was calibrated behind
    evaluated = runner.invoke(
        app, ["classify", "eval", str(cohort), "--model", str(tmp_path / "cal"), "--split", "val",
              "--json", str(tmp_path / "m.json")],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "m.json").read_text())["detector_sha256"] == shipped_sha
    # never on the test split, never over a folder, never a classifier without stage 1
    for args, message in (
        (["--split", "test", "--out", str(tmp_path / "t")], "never chosen on the test split"),
        (["--out", str(tmp_path / "cal")], "already exists"),
    ):
        refused = runner.invoke(app, ["classify", "calibrate", str(tiny_hexanet), str(cohort), *args])
        assert refused.exit_code != 0 and message in refused.output
    refused = runner.invoke(
        app,
        ["classify", "calibrate", str(tiny_hexanet / "baseline"), str(cohort), "--out", str(tmp_path / "b")],
    )
    assert refused.exit_code != 0 and "not a HexaNet run folder" in refused.output
