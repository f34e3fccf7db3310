"""Every `data check` failure on a deliberately broken copy of a valid cohort."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from neurosono.cli import app
from neurosono.data.check import check_dataset


def _rows(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (root / "cases.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _write_rows(root: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with (root / "cases.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _first_tv(root: Path) -> str:
    return _rows(root)[1][0]["tv_image"]


def _label_of(root: Path, rel: str) -> Path:
    return root / rel.replace("images/", "labels/").replace(".png", ".txt")


def missing_image(root: Path) -> str:
    rel = _first_tv(root)
    (root / rel).unlink()
    return Path(rel).name


def not_an_image(root: Path) -> str:
    rel = _first_tv(root)
    (root / rel).write_text("this is a text file, not a PNG")
    return Path(rel).name


def truncated_image(root: Path) -> str:
    rel = _first_tv(root)
    data = (root / rel).read_bytes()
    (root / rel).write_bytes(data[: len(data) // 2])
    return Path(rel).name


def _append_label_line(line: str) -> Callable[[Path], str]:
    def mutate(root: Path) -> str:
        label = _label_of(root, _first_tv(root))
        label.write_text(label.read_text() + line + "\n")
        return f"{label.name}:{len(label.read_text().splitlines())}"

    return mutate


def _edit_rows(edit: Callable[[list[dict[str, str]]], None]) -> Callable[[Path], str]:
    def mutate(root: Path) -> str:
        header, rows = _rows(root)
        edit(rows)
        _write_rows(root, header, rows)
        return "cases.csv"

    return mutate


def _duplicate_same_split(rows: list[dict[str, str]]) -> None:
    rows.append(dict(rows[0]))


def _duplicate_other_split(rows: list[dict[str, str]]) -> None:
    copy = dict(rows[0])
    copy["split"] = "test" if rows[0]["split"] != "test" else "train"
    rows.append(copy)


def _group_across_splits(rows: list[dict[str, str]]) -> None:
    a = next(r for r in rows if r["split"] == "train")
    b = next(r for r in rows if r["split"] != "train")
    b["source_group"] = a["source_group"] = "patient-7"


def _bad_label(rows: list[dict[str, str]]) -> None:
    rows[1]["label"] = "maybe"


def missing_labels_file(root: Path) -> str:
    label = _label_of(root, _first_tv(root))
    label.unlink()
    return label.name


BREAKAGES = {
    "missing image": (missing_image, "missing image"),
    "unreadable image": (not_an_image, "not an image file"),
    "truncated image": (truncated_image, "truncated"),
    "box outside image": (_append_label_line("0 0.98 0.5 0.2 0.1"), "outside the image"),
    "zero-area box": (_append_label_line("1 0.5 0.5 0 0.1"), "zero area"),
    "unknown class id": (_append_label_line("9 0.5 0.5 0.1 0.1"), "unknown class id 9"),
    "malformed line": (_append_label_line("0 0.5 0.5"), "malformed line"),
    "duplicate case id": (_edit_rows(_duplicate_same_split), "duplicate case id"),
    "case in two splits": (_edit_rows(_duplicate_other_split), "is in two splits"),
    "group across splits": (_edit_rows(_group_across_splits), "source group patient-7 is split across"),
    "bad label": (_edit_rows(_bad_label), "label 'maybe'"),
    "image without labels": (missing_labels_file, "no labels file"),
}


def test_valid_cohort_has_no_problems(tiny_cohort: Path) -> None:
    report = check_dataset(tiny_cohort)
    assert report.ok, [str(p) for p in report.problems]
    assert report.n_images == 24 and report.n_boxes > 60


@pytest.mark.parametrize("name", list(BREAKAGES))
def test_each_breakage_is_reported_with_its_file(cohort_copy: Path, name: str) -> None:
    mutate, expected = BREAKAGES[name]
    where = mutate(cohort_copy)
    report = check_dataset(cohort_copy)
    assert not report.ok
    messages = [str(p) for p in report.errors]
    hits = [m for m in messages if expected in m]
    assert hits, f"{name}: expected {expected!r} in {messages}"
    assert any(where in m for m in hits), f"{name}: no message names {where}: {hits}"


def test_unlabelled_images_allowed_when_dataset_says_so(cohort_copy: Path) -> None:
    missing_labels_file(cohort_copy)
    spec = yaml.safe_load((cohort_copy / "dataset.yaml").read_text())
    spec["unlabelled_images"] = "allowed"
    (cohort_copy / "dataset.yaml").write_text(yaml.safe_dump(spec))
    assert check_dataset(cohort_copy).ok


def test_bad_dataset_yaml_is_reported(cohort_copy: Path) -> None:
    (cohort_copy / "dataset.yaml").write_text("name: x\nregions: [a, a]\n")
    report = check_dataset(cohort_copy)
    assert any("dataset.yaml" in str(p) and "unique" in str(p) for p in report.errors)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_cli_exits_non_zero_and_modifies_nothing(cohort_copy: Path) -> None:
    _append_label_line("7 0.5 0.5 0.1 0.1")(cohort_copy)
    tc = cohort_copy / _rows(cohort_copy)[1][0]["tc_image"]
    tc.write_bytes(tc.read_bytes()[:200])
    before = _tree_digest(cohort_copy)
    result = CliRunner().invoke(app, ["data", "check", str(cohort_copy)])
    assert result.exit_code == 1
    assert "unknown class id 7" in result.output and "truncated" in result.output
    assert _tree_digest(cohort_copy) == before
