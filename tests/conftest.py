"""Shared fixtures: a tiny phantom cohort, generated once per test session."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from neurosono.detect.env import configure_ultralytics
from neurosono.phantom.cohort import CohortConfig, generate_cohort

# As every neurosono entry point does before ultralytics is imported (some tests import its
# modules directly): offline, settings in the cache folder, PIL's opener left alone.
configure_ultralytics()

SHARED = Path(__file__).resolve().parents[2] / "shared"
# Tests that train a model (or use one trained for the session) are 'slow': `make test-fast` skips them.
SLOW_FIXTURES = {
    "tiny_run",
    "tiny_hexanet",
    "quick_run",
    "age_run",
    "ga_run",
    "ga_model",
    "export",
    "pipelines",
    "head_run",
    "structure_run",
    "int8_export",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 cases at 128 px, 3 centres: valid, split, with every file the format has. The
    closer framing: heads a third of 128 px wide are too small for few-epoch training."""
    root = tmp_path_factory.mktemp("cohort") / "tiny"
    generate_cohort(root, CohortConfig(cases=12, seed=5, centers=3, size=128, wide_zoom=False), workers=1)
    return root


@pytest.fixture
def cohort_copy(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A private copy a test may break."""
    dest = tmp_path / "copy"
    shutil.copytree(tiny_cohort, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A detector trained on 24 cases at 128 px for 8 epochs, with every network call made to fail.

    Returns (cohort, run folder, network attempts).
    """
    from neurosono.detect.train import DetectTrainConfig, train_detector

    root = tmp_path_factory.mktemp("detect")
    generate_cohort(root / "cohort", CohortConfig(cases=24, seed=3, size=128, wide_zoom=False), workers=2)
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in tests")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setattr(socket, "create_connection", refuse)
        train_detector(
            root / "cohort",
            root / "run",
            DetectTrainConfig(imgsz=128, epochs=8, batch=4, close_mosaic=0, warmup_epochs=0),
            progress=False,
        )
    return root / "cohort", root / "run", attempts


@pytest.fixture(scope="session")
def tiny_hexanet(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HexaNet (and its baseline) trained for 2 epochs on the tiny detector's regions, via the CLI."""
    from typer.testing import CliRunner

    from neurosono.cli import app

    cohort, detector_run, _ = tiny_run
    run = tmp_path_factory.mktemp("hexanet") / "run"
    result = CliRunner().invoke(
        app,
        [
            "classify",
            "train",
            str(cohort),
            "--detector",
            str(detector_run),
            "--out",
            str(run),
            "--epochs",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    return run
