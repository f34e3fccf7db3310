from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from neurosono.cli import app

runner = CliRunner()


def test_synth_check_split_export_preview(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(
        app, ["synth", str(cohort), "--cases", "8", "--seed", "2", "--size", "96", "--preview", str(sheet)]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 8 cases (3 abnormal, 5 normal)" in result.output
    with Image.open(sheet) as image:
        assert image.width > 400 and image.height > 200

    assert runner.invoke(app, ["data", "check", str(cohort)]).exit_code == 0

    # The cohort already has a holdout split: replacing it needs --overwrite, and keeps a backup.
    refused = runner.invoke(app, ["data", "split", str(cohort), "--seed", "4"])
    assert refused.exit_code == 3 and "--overwrite" in refused.output
    done = runner.invoke(app, ["data", "split", str(cohort), "--seed", "4", "--overwrite"])
    assert done.exit_code == 0, done.output
    assert len(list(cohort.glob("cases.csv.*.bak"))) == 1
    kfold = runner.invoke(app, ["data", "split", str(cohort), "--scheme", "kfold", "--folds", "2"])
    assert kfold.exit_code == 0, kfold.output
    assert runner.invoke(app, ["data", "check", str(cohort)]).exit_code == 0

    coco = tmp_path / "coco.json"
    exported = runner.invoke(app, ["data", "export-coco", str(cohort), "--json", str(coco)])
    assert exported.exit_code == 0, exported.output
    assert len(json.loads(coco.read_text())["images"]) == 16


def test_synth_refuses_existing_output_and_bad_arguments(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    result = runner.invoke(app, ["synth", str(taken), "--cases", "2", "--size", "64"])
    assert result.exit_code == 3 and "already exists" in result.output
    bad = runner.invoke(app, ["synth", str(tmp_path / "new"), "--abnormal-fraction", "1.5"])
    assert bad.exit_code == 2 and "abnormal-fraction" in bad.output
    missing = runner.invoke(app, ["data", "split", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "nowhere" in missing.output
