"""Gestational age as an optional case-level input: parsing, HexaNet, training, prediction, ONNX."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neurosono import Pipeline
from neurosono.classify.config import ClassifyTrainConfig
from neurosono.classify.fit import fit_binary, predict_scores
from neurosono.classify.gestation import ga_batch, ga_scalars, parse_ga
from neurosono.classify.networks import HexaNet, drop_one_region_attribution
from neurosono.cli import app
from neurosono.core.metrics import point_metrics
from neurosono.data.format import Dataset
from neurosono.pipeline.stage2 import DropOneHexaNet, check_drop_one

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "weeks"),
    [("21.4", 21.4), ("21+3", 21 + 3 / 7), ("21w3d", 21 + 3 / 7), (" 20 + 0 ", 20.0), (22, 22.0)],
)
def test_ga_is_read_as_weeks_or_weeks_plus_days(text, weeks: float) -> None:
    assert parse_ga(text) == pytest.approx(weeks)


@pytest.mark.parametrize(
    ("text", "message"),
    [("abc", "is not weeks"), ("21+8", "is not weeks"), ("4", "outside 10-45"), ("nan", "outside")],
)
def test_bad_ga_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ga(text)


def test_unknown_ga_is_zeros_and_known_is_flag_and_scaled_weeks() -> None:
    assert parse_ga("") is None and parse_ga(None) is None
    assert ga_scalars(None).tolist() == [0.0, 0.0]
    assert ga_scalars(20.0).tolist() == [1.0, 1.0]


def test_hexanet_with_ga_forward_missing_ga_and_attribution() -> None:
    torch.manual_seed(0)
    model = HexaNet(6, n_case_scalars=2).eval()
    crops, scalars = torch.randn(3, 6, 1, 64, 64), torch.rand(3, 6, 6)
    crops[:, 0], scalars[:, 0] = 0, 0  # CSP not found
    unknown = torch.zeros(3, 2)
    assert torch.equal(model(crops, scalars), model(crops, scalars, unknown))  # None means unknown
    with pytest.raises(ValueError, match="case scalars"):
        model(crops, scalars, torch.zeros(3, 5))
    ages = torch.tensor([[1.0, 0.95], [1.0, 1.1], [1.0, 1.2]])
    attribution = drop_one_region_attribution(model, crops, scalars, ages)
    # The age belongs to no region: dropping an absent region changes nothing, age or not.
    assert torch.allclose(attribution[:, 0], torch.zeros(3), atol=1e-6)
    # The one-pass drop-one wrapper (both runtimes) equals HexaNet's own passes with the age.
    wrapper = DropOneHexaNet(model).eval()
    assert check_drop_one(wrapper) < 1e-4
    logits, drop = wrapper(crops, scalars, ages)
    with torch.no_grad():
        p = torch.sigmoid(model(crops, scalars, ages))
    assert torch.allclose(torch.sigmoid(logits), p, atol=1e-5)
    assert torch.allclose(p[:, None] - torch.sigmoid(drop), attribution, atol=1e-5)


def test_regions_of_a_ga_model_carry_their_size_for_age() -> None:
    from neurosono.classify.regions import N_SIZE_FOR_AGE, region_inputs
    from neurosono.detect.predict import Detection

    regions, planes = ["csp", "cerebellum"], {"tc": ["csp", "cerebellum"]}
    image = {"tc": np.full((200, 200), 80, np.uint8)}
    detections = [Detection("tc", 1, 0.9, (50, 60, 150, 100))]  # 100 x 40 px, at 0.2 mm: 20 x 8 mm
    _, plain, _ = region_inputs(image, detections, regions, planes, {"tc": 0.2})
    _, scalars, _ = region_inputs(
        image, detections, regions, planes, {"tc": 0.2}, size_for_age=True, ga_weeks=20
    )
    assert plain.shape == (2, 6) and scalars.shape == (2, 6 + N_SIZE_FOR_AGE)
    assert np.allclose(scalars[:, :6], plain)  # the six numbers do not change
    assert np.allclose(scalars[1, 6:], [20 / 20, 8 / 20]) and not scalars[0].any()  # CSP not found
    for spacing, ga in (({"tc": 0.2}, None), ({"tc": None}, 20.0)):  # age or spacing unknown
        _, unknown, _ = region_inputs(
            image, detections, regions, planes, spacing, size_for_age=True, ga_weeks=ga
        )
        assert not unknown[:, 6:].any()


@dataclass
class _Case:
    label: int
    crops: np.ndarray
    scalars: np.ndarray
    ga_weeks: float | None


def _cases(n: int, rng: np.random.Generator) -> list[_Case]:
    """Abnormal = the fifth region (a cerebellum) more than 2 mm shorter than the age in weeks.

    Sizes and ages both span 16-30, independently, so the size alone says little: only the
    size against the age does. The crops are empty: the decision can only come from the numbers.
    """
    out = []
    for _ in range(n):
        ga, size_mm = rng.uniform(16, 30, 2)
        scalars = np.tile([1.0, 0.9, 1.0, 1.0, 0.3, 0.3], (6, 1)).astype(np.float32)
        scalars[4, 2:4] = size_mm / 20
        label = int(size_mm < ga - 2)
        out.append(_Case(label, np.zeros((6, 1, 16, 16), np.float32), scalars, float(ga)))
    return out


def _batches(withhold: bool):
    def batches(items, train, rng):
        crops = torch.from_numpy(np.stack([i.crops for i in items]))
        scalars = torch.from_numpy(np.stack([i.scalars for i in items]))
        ages = torch.zeros(len(items), 2) if withhold else ga_batch(items, train, rng, 0.3)
        labels = torch.tensor([i.label for i in items], dtype=torch.float32)
        return (crops, scalars, ages), labels

    return batches


@pytest.mark.slow
def test_hexanet_learns_a_size_for_age_finding_only_with_the_age() -> None:
    rng = np.random.default_rng(0)
    train, val, test = _cases(150, rng), _cases(45, rng), _cases(90, rng)
    torch.manual_seed(0)
    model = HexaNet(6, widths=(8, 16, 32), n_case_scalars=2)
    config = ClassifyTrainConfig(epochs=20, batch=16, lr=1e-2, patience=20)
    fit_binary(model, train, val, _batches(False), config, False, "test")
    labels = np.array([i.label for i in test])
    with_age = point_metrics(labels, predict_scores(model, test, _batches(False)), 0.5)["auc"]
    without = point_metrics(labels, predict_scores(model, test, _batches(True)), 0.5)["auc"]
    assert with_age > 0.95, with_age
    assert without < with_age - 0.1, (with_age, without)


# ---------------------------------------------------------------- a tiny GA model, end to end


@pytest.fixture(scope="module")
def ga_run(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cohort, detector_run, _ = tiny_run
    run = tmp_path_factory.mktemp("ga") / "run"
    args = ["classify", "train", str(cohort), "--detector", str(detector_run), "--out", str(run)]
    result = runner.invoke(app, [*args, "--epochs", "2", "--ga"])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def ga_model(ga_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder: the shipped detector (it finds regions on these phantoms) and the GA HexaNet."""
    from neurosono.models import PHANTOM_DIR

    model = tmp_path_factory.mktemp("ga-model") / "phantom-ga"
    (model / "hexanet").mkdir(parents=True)
    for name in ("detector.pt", "detector.json"):
        shutil.copy(PHANTOM_DIR / name, model)
    shutil.copy(ga_run / "classifier.pt", model / "hexanet")
    return model


def test_ga_training_records_the_input_and_evaluation_says_how_it_was_used(
    tiny_run, ga_run: Path, tmp_path: Path
) -> None:
    cohort, _, _ = tiny_run
    ages = [c.ga_weeks for c in Dataset.load(cohort).cases if c.split == "train"]
    record = json.loads((ga_run / "classifier.json").read_text())
    assert record["case_inputs"] == ["ga_weeks"] and record["config"]["gestational_age"] is True
    assert record["ga_weeks_range"] == [round(min(ages), 2), round(max(ages), 2)]
    assert "gestational age" in (ga_run / "MODEL_CARD.md").read_text()
    assert json.loads((ga_run / "baseline" / "baseline.json").read_text())["case_inputs"] == ["ga_weeks"]
    runs = {}
    for name, extra in (("given", []), ("withheld", ["--withhold-ga"])):
        out = tmp_path / name
        args = ["classify", "eval", str(cohort), "--model", str(ga_run), "--split", "all", "--out", str(out)]
        result = runner.invoke(app, [*args, "--n-boot", "50", *extra])
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((out / "metrics.json").read_text())
        runs[name]["rows"] = list(csv.DictReader((out / "predictions.csv").open()))
    assert runs["given"]["gestational_age"] == "given from cases.csv for 24 of 24 cases"
    assert runs["withheld"]["gestational_age"].startswith("withheld")
    given = [float(r["p_abnormal"]) for r in runs["given"]["rows"]]
    withheld = [float(r["p_abnormal"]) for r in runs["withheld"]["rows"]]
    assert given != withheld  # the age reaches the decision
    both = runner.invoke(
        app, ["eval", str(cohort), "--model", str(ga_run), "--n-boot", "50", "--withhold-ga"]
    )
    assert both.exit_code == 0 and "gestational age: withheld" in both.output


def test_predict_with_and_without_ga(tiny_run, tiny_hexanet: Path, ga_model: Path, tmp_path: Path) -> None:
    cohort, _, _ = tiny_run
    case = Dataset.load(cohort).cases[0]
    tv, tc = cohort / case.tv_image, cohort / case.tc_image
    pipeline = Pipeline.load(ga_model)
    assert pipeline.uses_ga
    young, old = pipeline.predict(tv, tc, ga_weeks=19.5), pipeline.predict(tv, tc, ga_weeks=23.5)
    assert young.p_abnormal != old.p_abnormal and young.ga_weeks == 19.5
    assert not [w for w in young.warnings if "gestational" in w]
    unknown = pipeline.predict(tv, tc)
    assert unknown.ga_weeks is None and any("gestational age not given" in w for w in unknown.warnings)
    late = pipeline.predict(tv, tc, ga_weeks=34)
    assert any("outside" in w and "trained on" in w for w in late.warnings)
    # A model without the input says it ignored the age.
    plain = tmp_path / "plain"
    shutil.copytree(ga_model, plain)
    shutil.copy(tiny_hexanet / "classifier.pt", plain / "hexanet")
    assert any(
        "does not use the gestational age" in w
        for w in Pipeline.load(plain).predict(tv, tc, ga_weeks=21).warnings
    )

    out = tmp_path / "r.json"
    args = ["predict", "--model", str(ga_model), "--tv", str(tv), "--tc", str(tc)]
    result = runner.invoke(app, [*args, "--ga-weeks", "21+3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "gestational age 21.4 weeks" in result.output
    assert json.loads(out.read_text()) == pipeline.predict(tv, tc, ga_weeks=21 + 3 / 7).to_dict()
    bad = runner.invoke(app, [*args, "--ga-weeks", "twenty"])
    assert bad.exit_code == 2 and "--ga-weeks" in bad.output and "twenty" in bad.output


def test_batch_takes_the_ga_from_cases_csv(tiny_run, ga_model: Path, tmp_path: Path) -> None:
    cohort, _, _ = tiny_run
    cases = Dataset.load(cohort).cases[:3]
    table = tmp_path / "cases.csv"
    shutil.copytree(cohort / "images", tmp_path / "images")
    with (cohort / "cases.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    keep = {c.case_id for c in cases}
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["case_id"] in keep)
    results = tmp_path / "results.csv"
    args = ["predict", "--model", str(ga_model), "--batch", str(table), "--csv", str(results)]
    assert runner.invoke(app, [*args, "--ga-weeks", "21"]).exit_code == 2  # one age for many cases
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    pipeline = Pipeline.load(ga_model)
    got = {r["case_id"]: r for r in csv.DictReader(results.open())}
    for case in cases:
        spacing = {plane: case.spacing_mm(plane) for plane in ("tv", "tc")}
        expected = pipeline.predict(
            cohort / case.tv_image, cohort / case.tc_image, spacing_mm=spacing, ga_weeks=case.ga_weeks
        )
        assert got[case.case_id]["ga_weeks"] == f"{case.ga_weeks:g}"
        assert got[case.case_id]["p_abnormal"] == f"{expected.p_abnormal:.4f}"
    # A results file from another version (other columns) is not appended to.
    old = tmp_path / "old.csv"
    old.write_text("case_id,tv_image,tc_image,p_abnormal,decision,threshold,warnings,error\n")
    refused = runner.invoke(
        app, ["predict", "--model", str(ga_model), "--batch", str(table), "--csv", str(old)]
    )
    assert refused.exit_code == 2 and "give a new results file" in " ".join(refused.output.split())


def test_onnx_export_of_a_ga_model_matches_torch(tiny_run, ga_model: Path, tmp_path: Path) -> None:
    from neurosono.pipeline.export import export_onnx
    from neurosono.pipeline.onnx_files import read_manifest

    cohort, _, _ = tiny_run
    export_onnx(ga_model, tmp_path / "export")
    manifest = read_manifest(tmp_path / "export")
    assert manifest["case_inputs"] == ["ga_weeks"] and manifest["hexanet"]["n_case_scalars"] == 2
    assert manifest["hexanet"]["inputs"]["case_scalars"] == ["batch", 2]
    torch_pipeline, onnx_pipeline = (
        Pipeline.load(ga_model),
        Pipeline.load(tmp_path / "export", runtime="onnx"),
    )
    case = Dataset.load(cohort).cases[1]
    for ga in (None, 20.5):
        a = torch_pipeline.predict(cohort / case.tv_image, cohort / case.tc_image, ga_weeks=ga)
        b = onnx_pipeline.predict(cohort / case.tv_image, cohort / case.tc_image, ga_weeks=ga)
        assert abs(a.p_abnormal - b.p_abnormal) < 2e-3 and a.warnings == b.warnings
        assert [r.attribution for r in a.regions] == pytest.approx(
            [r.attribution for r in b.regions], abs=2e-3
        )
