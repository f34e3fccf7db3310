"""neurosono predict and the Pipeline API on PNG and DICOM, bad inputs, batch resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from neurosono import Pipeline
from neurosono.classify.regions import brain_regions
from neurosono.cli import app
from neurosono.data.format import Dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tiny_run, tiny_hexanet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as shipped: detector.pt + detector.json + hexanet/classifier.pt.

    The detector is the shipped one, which finds the regions on these phantoms, so the
    box and size assertions below are about real detections; HexaNet is the tiny one.
    """
    from neurosono.models import PHANTOM_DIR

    detector_run = PHANTOM_DIR
    folder = tmp_path_factory.mktemp("model")
    run = tiny_hexanet
    model = folder / "phantom"
    (model / "hexanet").mkdir(parents=True)
    shutil.copy(detector_run / "detector.pt", model)
    shutil.copy(detector_run / "detector.json", model)
    shutil.copy(run / "classifier.pt", model / "hexanet")
    return model


def test_python_api_and_json_agree(tiny_run, model_dir: Path, tmp_path: Path) -> None:
    cohort, _, _ = tiny_run
    case = Dataset.load(cohort).cases[0]
    tv, tc = cohort / case.tv_image, cohort / case.tc_image
    result = Pipeline.load(model_dir).predict(tv, tc)
    assert 0 <= result.p_abnormal <= 1 and result.decision in ("normal", "abnormal")
    # Stage 2's regions: the dataset's brain regions; the fetal head is only the head's size.
    assert [r.region for r in result.regions] == brain_regions(Dataset.load(cohort).spec.regions)
    assert result.model["notice"] == "trained on synthetic phantoms; not for clinical use"
    assert len(result.model["detector_sha256"]) == 64
    # this folder pairs the shipped detector with a HexaNet trained behind the tiny one
    stale = [w for w in result.warnings if "classify calibrate" in w]
    assert len(stale) == 1 and result.model["detector_sha256"][:12] in stale[0]
    out = tmp_path / "r.json"
    cli = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(model_dir),
            "--tv",
            str(tv),
            "--tc",
            str(tc),
            "--json",
            str(out),
            "--overlay",
            str(tmp_path / "ov"),
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert json.loads(out.read_text()) == result.to_dict()
    assert "not for clinical use" in cli.output
    assert len(list((tmp_path / "ov").glob("*_overlay.png"))) == 2
    # A PNG carries no spacing: sizes in mm appear only when the spacing is given.
    assert all(r.size_mm is None for r in result.regions)
    spaced = Pipeline.load(model_dir).predict(tv, tc, spacing_mm={"tv": 0.2, "tc": 0.25})
    assert {r.plane for r in spaced.regions if r.found} == {"tv", "tc"}
    for region in spaced.regions:
        if region.found:
            factor = 0.2 if region.plane == "tv" else 0.25
            assert region.size_mm[0] == pytest.approx((region.box[2] - region.box[0]) * factor, abs=0.06)


def test_dicom_input_gives_sizes_in_mm(tiny_run, model_dir: Path, tmp_path: Path) -> None:
    from test_images import _dicom

    cohort, _, _ = tiny_run
    case = Dataset.load(cohort).cases[1]
    pixels = np.asarray(Image.open(cohort / case.tc_image).convert("L"))
    dicom = _dicom(tmp_path / "tc.dcm", pixels, spacing=0.5)
    result = Pipeline.load(model_dir).predict(tv=cohort / case.tv_image, tc=dicom)
    assert result.inputs["tc"]["kind"] == "dicom" and result.inputs["tc"]["pixel_spacing_mm"] == 0.5
    assert any(r.found and r.plane == "tc" for r in result.regions)
    for region in result.regions:
        if region.found and region.plane == "tc":
            width_px = region.box[2] - region.box[0]
            assert region.size_mm[0] == pytest.approx(width_px * 0.5, abs=0.06)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_text("hello"), "not an image file"),
        (lambda p: Image.new("L", (1, 1)).save(p), "too small"),
        (lambda p: None, "does not exist"),
    ],
)
def test_bad_input_is_a_message_and_exit_2(model_dir: Path, tmp_path: Path, make, expected: str) -> None:
    path = tmp_path / "bad.png"
    make(path)
    result = runner.invoke(app, ["predict", "--model", str(model_dir), "--tv", str(path)])
    assert result.exit_code == 2
    assert expected in result.output and "bad.png" in result.output
    assert "Traceback" not in result.output


def test_unwritable_overlay_folder_is_exit_3(tiny_run, model_dir: Path, tmp_path: Path) -> None:
    cohort, _, _ = tiny_run
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    tv = cohort / Dataset.load(cohort).cases[0].tv_image
    result = runner.invoke(
        app, ["predict", "--model", str(model_dir), "--tv", str(tv), "--overlay", str(blocker / "sub")]
    )
    assert result.exit_code == 3 and "overlay folder" in result.output


def test_batch_resumes_and_survives_a_bad_file(tiny_run, model_dir: Path, tmp_path: Path) -> None:
    cohort, _, _ = tiny_run
    folder = tmp_path / "scans"
    folder.mkdir()
    for case in Dataset.load(cohort).cases[:4]:
        for plane in ("tv", "tc"):
            shutil.copy(cohort / case.image(plane), folder / f"{case.case_id}_{plane}.png")
    (folder / "broken_tv.png").write_text("not an image")
    results = tmp_path / "results.csv"
    # An interrupted earlier run: the first two cases are done.
    first = runner.invoke(
        app, ["predict", "--model", str(model_dir), "--batch", str(folder), "--csv", str(results)]
    )
    assert first.exit_code == 4 and "broken" in first.output  # finished, one case failed
    rows = list(csv.DictReader(results.open()))
    assert len(rows) == 5 and sum(bool(r["error"]) for r in rows) == 1
    answered = [r for r in rows if not r["error"]]
    assert all(0 <= float(r["support"]) <= 1 and r["decision"] for r in answered)
    kept = [r for r in rows if r["case_id"] in sorted(r["case_id"] for r in rows if not r["error"])[:2]]
    with results.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    again = runner.invoke(
        app, ["predict", "--model", str(model_dir), "--batch", str(folder), "--csv", str(results)]
    )
    assert again.exit_code == 4
    rows = list(csv.DictReader(results.open()))
    done = [r["case_id"] for r in rows if not r["error"]]
    assert sorted(done) == sorted(set(done)) and len(done) == 4  # the two done cases were not redone


def test_an_image_far_outside_the_domain_is_indeterminate(tiny_run, model_dir: Path, tmp_path: Path) -> None:
    """The rule chosen on validation cases (here with the shipped detector) answers phantoms and
    gives 'indeterminate', with its reason, on an image that is no fetal brain plane at all."""
    import torch

    from neurosono.classify.domain import domain_rule
    from neurosono.classify.inputs import gather_cases
    from neurosono.classify.train import case_supports
    from neurosono.detect.model import load_detector

    cohort, _, _ = tiny_run
    dataset = Dataset.load(cohort)
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    weights = model / "hexanet" / "classifier.pt"
    payload = torch.load(weights, weights_only=True)
    assert payload["indeterminate"]["n_validation_cases"] == len(dataset.split("val"))  # set by training
    detector = load_detector(model / "detector.pt")
    items = gather_cases(dataset, dataset.split("val"), detector)
    payload["indeterminate"] = domain_rule(case_supports(items, payload["regions"], payload["planes"]))
    torch.save(payload, weights)
    pipeline = Pipeline.load(model)
    case = dataset.split("test")[0]
    answered = pipeline.predict(cohort / case.tv_image, cohort / case.tc_image)
    assert answered.decision in ("normal", "abnormal") and answered.reason is None
    assert answered.support >= answered.min_support > 0
    rng = np.random.default_rng(0)
    for name, pixels in (
        ("noise", rng.integers(0, 256, (240, 320), dtype=np.uint8)),
        ("gradient", np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))),
    ):
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        result = pipeline.predict(tmp_path / f"{name}.png", tmp_path / f"{name}.png")
        assert result.decision == "indeterminate", (name, result.support, result.min_support)
        assert result.reason and result.warnings[0] == result.reason
        assert json.loads(result.to_json())["decision"] == "indeterminate"
    cli = runner.invoke(app, ["predict", "--model", str(model), "--tv", str(tmp_path / "noise.png")])
    assert cli.exit_code == 0 and "indeterminate" in cli.output


def test_a_dark_image_is_seen_stretched_and_the_result_says_so(
    tiny_run, model_dir: Path, tmp_path: Path
) -> None:
    from neurosono.detect.predict import darkness

    cohort, _, _ = tiny_run
    case = Dataset.load(cohort).cases[0]
    tv, tc = cohort / case.tv_image, cohort / case.tc_image
    pipeline = Pipeline.load(model_dir)
    dark_below = pipeline.detector.dark_below
    grey = np.asarray(Image.open(tv).convert("L"))
    dim = (grey.astype(np.float32) * (0.5 * dark_below / darkness(grey))).astype(np.uint8)
    dark = tmp_path / "dark_tv.png"
    Image.fromarray(dim).save(dark)
    assert darkness(dark) < dark_below <= darkness(tc)
    result = pipeline.predict(dark, tc)
    assert result.inputs["tv"]["stage1_stretched"] is True
    assert result.inputs["tc"]["stage1_stretched"] is False
    cli = runner.invoke(app, ["predict", "--model", str(model_dir), "--tv", str(dark), "--tc", str(tc)])
    assert cli.exit_code == 0, cli.output
    assert "stage 1 saw the TV image with its grey range stretched" in " ".join(cli.output.split())
