"""`neurosono run --quick` end to end on a tiny cohort: both stages, evaluation, report, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neurosono.cli import app

ARGS = ["run", "--quick", "--cases", "30", "--hexanet-epochs", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "demo"
    result = CliRunner().invoke(app, [*ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_quick_run_trains_both_stages_and_writes_a_self_contained_report(quick_run) -> None:
    out, output = quick_run
    record = json.loads((out / "run.json").read_text())
    assert [
        record["stages"][s]["state"] for s in ("cohort", "detector", "hexanet", "evaluation", "report")
    ] == ["done"] * 5
    detector = json.loads((out / "detector" / "detector.json").read_text())
    assert detector["init_from_sha256"]  # fine-tuned from the shipped detector
    from neurosono.core.checkpoints import file_sha256
    from neurosono.models import DEFAULT_HEXANET

    hexanet = json.loads((out / "hexanet" / "classifier.json").read_text())
    shipped = file_sha256(DEFAULT_HEXANET / "classifier.pt")
    assert hexanet["initialised_from"]["sha256"] == shipped  # and HexaNet from the shipped one
    assert hexanet["config"]["lr"] == pytest.approx(1e-4)
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    for key in ("auc", "sensitivity", "specificity", "f1"):
        entry = metrics["hexanet"][key]
        assert set(entry) >= {"value", "ci95", "method"}
    # The shipped detector, fine-tuned for one epoch, still finds the phantom's regions.
    assert "auc" in metrics["baseline"] and metrics["detector"]["map50"]["value"] >= 0.8
    cases = json.loads((out / "evaluation" / "cases.json").read_text())["cases"]
    assert cases and all(len(c["attribution"]) == 6 for c in cases)

    html = (out / "report.html").read_text()
    for heading in (
        "Cohort",
        "Stage 1: region detector",
        "Stage 2: normal vs abnormal",
        "Biometry",
        "Error gallery",
    ):
        assert heading in html
    biometry = json.loads((out / "evaluation" / "biometry.json").read_text())
    assert {"hc_mm", "tcd_mm", "atrium_mm"} <= set(biometry) and biometry["hc_mm"]["n"] > 0
    assert "whole-image baseline" in html and "Ramirez Zegarra" in html
    assert "not for clinical use" in html.lower()
    # Self-contained: every image inline, nothing fetched from elsewhere.
    sources = re.findall(r'src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html
    assert "stage 2 test AUC" in output and "report:" in output


def test_rerun_keeps_finished_stages_and_redoes_what_changed(quick_run) -> None:
    out, _ = quick_run
    first = json.loads((out / "run.json").read_text())
    result = CliRunner().invoke(app, [*ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = json.loads((out / "run.json").read_text())
    assert {s["state"] for s in again["stages"].values()} == {"kept"}
    assert again["stages"]["hexanet"]["key"] == first["stages"]["hexanet"]["key"]

    changed = [a if a != "2" else "3" for a in ARGS]  # HexaNet epochs 2 -> 3
    result = CliRunner().invoke(app, [*changed, "--out", str(out)])
    assert result.exit_code == 0, result.output
    redone = json.loads((out / "run.json").read_text())["stages"]
    assert redone["cohort"]["state"] == redone["detector"]["state"] == "kept"
    assert redone["hexanet"]["state"] == redone["evaluation"]["state"] == "done"
    assert json.loads((out / "hexanet" / "classifier.json").read_text())["config"]["epochs"] == 3


def test_run_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("user data")
    result = CliRunner().invoke(app, ["run", "--quick", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "not a neurosono run" in result.output
    assert (tmp_path / "mine.txt").read_text() == "user data"


@pytest.mark.slow
def test_run_on_a_user_dataset_with_a_one_class_test_split(cohort_copy: Path, tmp_path: Path) -> None:
    """A given dataset is used as split; a report is still written when AUC is undefined."""
    from neurosono.data.format import Dataset
    from neurosono.pipeline.run import RunConfig, run_pipeline

    dataset = Dataset.load(cohort_copy)
    for case in dataset.cases:  # the test split keeps its normal cases only
        if case.split == "test" and case.label == "abnormal":
            case.split = "train"
    dataset.write_cases()
    assert {c.label for c in dataset.split("test")} == {"normal"}

    config = RunConfig(
        cases=30,
        detector_imgsz=128,
        detector_epochs=1,
        detector_batch=4,
        hexanet_epochs=1,
        n_boot=20,
        gallery=2,
    )
    messages: list[str] = []
    record = run_pipeline(tmp_path / "run", cohort_copy, config, progress=False, log=messages.append)
    assert "cohort" not in record["stages"] and record["dataset_dir"] == str(cohort_copy)
    assert not (tmp_path / "run" / "cohort").exists()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "one class only" in html
    assert any("[1/4] detector" in m for m in messages)


@pytest.mark.slow
def test_run_refuses_a_dataset_without_splits(cohort_copy: Path, tmp_path: Path) -> None:
    from neurosono.data.format import Dataset

    dataset = Dataset.load(cohort_copy)
    for case in dataset.cases:
        case.split = "train"
    dataset.write_cases()
    result = CliRunner().invoke(app, ["run", str(cohort_copy), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no cases in split(s) ['val', 'test']" in " ".join(result.output.split())
