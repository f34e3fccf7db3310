"""Training in two CPU processes (torchrun, gloo) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neurosono.phantom.cohort import CohortConfig, generate_cohort

SCRIPT = Path(__file__).parent / "scripts" / "fit_synthetic.py"
AUC_TOLERANCE = 0.03  # two processes against one, on the synthetic task (its best AUC is about 0.88)


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_train_one_model_as_well_as_one_process(tmp_path: Path) -> None:
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir()
    double.mkdir()
    subprocess.run([sys.executable, str(SCRIPT), str(single)], check=True, timeout=300)
    done = _torchrun(str(SCRIPT), str(double), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-8000:]
    one = json.loads((single / "rank0.json").read_text())
    ranks = [json.loads((double / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert one["world_size"] == 1 and all(r["world_size"] == 2 for r in ranks)
    # DDP kept the two processes' models identical, batch-norm statistics included
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["epochs_run"] == ranks[1]["epochs_run"]
    assert ranks[0]["best_val_auc"] == pytest.approx(one["best_val_auc"], abs=AUC_TOLERANCE)
    assert one["best_val_auc"] > 0.8  # the task is learnt, not a coin toss


@pytest.mark.slow
def test_classify_train_under_torchrun_writes_one_complete_run(tmp_path: Path) -> None:
    generate_cohort(tmp_path / "cohort", CohortConfig(cases=40, seed=21, size=256), workers=2)
    args = [
        "-m",
        "neurosono",
        "classify",
        "train",
        "cohort",
        "--out",
        "run",
        "--epochs",
        "2",
        "--no-baseline",
    ]
    done = _torchrun(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-8000:]
    record = json.loads((tmp_path / "run" / "classifier.json").read_text())
    assert record["distributed"] == {"world_size": 2, "backend": "gloo", "batch_per_process": 8}
    assert len(record["history"]) == 2 and 0 <= record["val_metrics"]["auc"]["value"] <= 1
    assert done.stdout.count("run: run ") == 1  # one process reports
    from neurosono.classify.kinds import load_classifier

    assert load_classifier(tmp_path / "run").kind == "hexanet"


def test_detect_train_names_a_missing_gpu(tiny_cohort: Path, tmp_path: Path) -> None:
    import torch
    from typer.testing import CliRunner

    from neurosono.cli import app

    base = ["detect", "train", str(tiny_cohort), "--out", str(tmp_path / "run"), "--epochs", "1"]
    wrong = CliRunner().invoke(app, [*base, "--device", "gpu"])
    assert wrong.exit_code == 2 and "--device must be cpu or CUDA indices" in wrong.output
    have = torch.cuda.device_count()
    missing = CliRunner().invoke(app, [*base, "--device", f"0,{have}"])
    assert (
        missing.exit_code == 2
        and f"this machine has {have} CUDA device(s); no device {have}" in missing.output
    )
    assert not (tmp_path / "run").exists()
