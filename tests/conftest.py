"""Shared fixtures: a tiny phantom cohort, generated once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from neurosono.phantom.cohort import CohortConfig, generate_cohort

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 cases at 128 px, 3 centres: valid, split, with every file the format has."""
    root = tmp_path_factory.mktemp("cohort") / "tiny"
    generate_cohort(root, CohortConfig(cases=12, seed=5, centers=3, size=128), workers=1)
    return root


@pytest.fixture
def cohort_copy(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A private copy a test may break."""
    dest = tmp_path / "copy"
    shutil.copytree(tiny_cohort, dest)
    return dest
