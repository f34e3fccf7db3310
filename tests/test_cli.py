from __future__ import annotations

import json
import os
import subprocess
import sys
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


def _run_cli(*args: str, columns: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    return subprocess.run([sys.executable, "-m", "neurosono", *args], capture_output=True, text=True, env=env)


def test_an_error_is_one_line_at_any_terminal_width(tmp_path: Path) -> None:
    """Scripts grep errors: one line naming the file and the problem, however narrow the terminal."""
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6)
    deep.mkdir(parents=True)
    bad = deep / "bad_tv.png"
    bad.write_text("hello")
    result = _run_cli("predict", "--tv", str(bad), columns=40)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert str(bad) in errors[0] and "not an image file" in errors[0]
    # A usage error (a value that is not one of the choices) is one line too.
    usage = _run_cli(
        "classify", "train", str(deep), "--out", str(deep / "x"), "--crop-scale", "w", columns=40
    )
    assert usage.returncode == 2
    lines = [line for line in usage.stderr.splitlines() if "crop-scale" in line]
    assert len(lines) == 1 and "'w' is not one of 'box', 'head', 'age'" in lines[0], usage.stderr


def test_older_spellings_still_work(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    assert runner.invoke(app, ["synth", "--out", str(cohort), "--cases", "3", "--size", "96"]).exit_code == 0
    old = runner.invoke(app, ["data", "export-coco", str(cohort), "--out", str(tmp_path / "coco.json")])
    assert old.exit_code == 0 and (tmp_path / "coco.json").exists()
    sheet = runner.invoke(app, ["data", "preview", str(cohort), "--out", str(tmp_path / "sheet.png")])
    assert sheet.exit_code == 0 and (tmp_path / "sheet.png").exists()
    # The hidden spellings stay out of --help.
    commands = [
        line.split()[0]
        for line in runner.invoke(app, ["--help"]).output.split("Commands:")[-1].splitlines()
        if line.startswith("  ")
    ]
    assert "eval" in commands and "evaluate" not in commands and "real" not in commands


def test_command_reference_is_current() -> None:
    from neurosono.cli.reference import render

    reference = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert reference.read_text() == render(), "docs/cli.md is stale: run 'make docs'"
