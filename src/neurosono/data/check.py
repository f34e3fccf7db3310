"""``neurosono data check``: validate a dataset folder and list every problem with its file.

Nothing is modified. Errors make the dataset unusable for training or evaluation;
warnings are worth a look but do not fail the check.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from neurosono.core.images import ImageReadError, read_image
from neurosono.core.progress import track
from neurosono.data.format import (
    IMAGE_SUFFIXES,
    LABELS,
    PLANES,
    SPLITS,
    Case,
    Dataset,
    DatasetFormatError,
    DatasetSpec,
    LabelLineError,
    label_path_for,
    load_cases,
    load_spec,
    parse_label_line,
)

# A box may poke this far outside the image (in normalised units) from rounding alone.
EDGE_TOLERANCE = 1e-3
MIN_BOX_PIXELS = 1.0


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{self.severity.upper():7s} {where}: {self.message}"


@dataclass
class CheckReport:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    n_cases: int = 0
    n_images: int = 0
    n_boxes: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.problems.append(Problem("error", str(path), message, line))

    def warn(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.problems.append(Problem("warning", str(path), message, line))

    def to_dict(self) -> dict:
        """The report as ``data check --json`` writes it."""
        return {
            "dataset": str(self.root),
            "ok": self.ok,
            "n_cases": self.n_cases,
            "n_images": self.n_images,
            "n_boxes": self.n_boxes,
            "problems": [p.__dict__ for p in self.problems],
        }


def check_dataset(root: str | Path, progress: bool = False, workers: int = 2) -> CheckReport:
    """Validate everything in a dataset folder; never raises for a bad dataset."""
    root = Path(root)
    report = CheckReport(root)
    if not root.is_dir():
        report.error(root, "not a dataset folder (does not exist or is not a folder)")
        return report
    spec: DatasetSpec | None = None
    try:
        spec = load_spec(root / "dataset.yaml")
    except DatasetFormatError as exc:
        report.error(root / "dataset.yaml", _strip_prefix(str(exc), root / "dataset.yaml"))
    try:
        cases = load_cases(root / "cases.csv")
    except DatasetFormatError as exc:
        report.error(root / "cases.csv", _strip_prefix(str(exc), root / "cases.csv"))
        return report
    report.n_cases = len(cases)
    _check_cases(root, cases, report)
    if spec is not None:
        _check_images(Dataset(root, spec, cases), report, progress, workers)
    return report


def _strip_prefix(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _check_cases(root: Path, cases: list[Case], report: CheckReport) -> None:
    csv_path = root / "cases.csv"
    rows_by_id: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        line = case.source_line
        if not case.case_id:
            report.error(csv_path, "empty case_id", line)
        rows_by_id[case.case_id].append(case)
        if case.label not in LABELS:
            report.error(
                csv_path, f"case {case.case_id}: label {case.label!r} is not 'normal' or 'abnormal'", line
            )
        elif case.finding == "normal" and case.label == "abnormal":
            report.warn(csv_path, f"case {case.case_id}: finding 'normal' but label 'abnormal'", line)
        if case.split and case.split not in SPLITS:
            report.error(csv_path, f"case {case.case_id}: split {case.split!r} is not one of {SPLITS}", line)
        if not case.tv_image and not case.tc_image:
            report.error(csv_path, f"case {case.case_id}: has neither a tv_image nor a tc_image", line)
        if case.ga_weeks is not None and not 10 <= case.ga_weeks <= 45:
            report.warn(csv_path, f"case {case.case_id}: ga_weeks {case.ga_weeks} is implausible", line)
        for plane in PLANES:
            spacing = case.spacing_mm(plane)
            if spacing is not None and not spacing > 0:
                report.error(
                    csv_path, f"case {case.case_id}: {plane} pixel spacing {spacing} must be > 0", line
                )
        for _, rel in case.images():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                report.error(
                    csv_path, f"case {case.case_id}: image path {rel!r} must be inside the dataset", line
                )

    for case_id, rows in rows_by_id.items():
        if len(rows) < 2 or not case_id:
            continue
        lines = ", ".join(str(r.source_line) for r in rows)
        splits = sorted({r.split for r in rows if r.split})
        if len(splits) > 1:
            report.error(csv_path, f"case {case_id} is in two splits ({', '.join(splits)}) on lines {lines}")
        else:
            report.error(csv_path, f"duplicate case id {case_id} on lines {lines}")

    _check_partition(csv_path, cases, report, "split", lambda c: c.split)
    _check_partition(csv_path, cases, report, "fold", lambda c: c.fold)

    users: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        for _, rel in case.images():
            users[rel].append(case)
    for rel, using in users.items():
        ids = sorted({c.case_id for c in using})
        if len(ids) > 1:
            splits = sorted({c.split for c in using if c.split})
            leak = f", across splits {', '.join(splits)}" if len(splits) > 1 else ""
            report.error(csv_path, f"image {rel} is used by several cases ({', '.join(ids)}){leak}")

    if cases and not any(c.split for c in cases):
        report.warn(csv_path, "no case has a split yet; run 'neurosono data split'")


def _check_partition(csv_path: Path, cases: list[Case], report: CheckReport, what: str, key) -> None:
    """A source group must sit entirely in one split (and one fold)."""
    by_group: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        if case.source_group and key(case):
            by_group[case.source_group].add(key(case))
    for group, parts in sorted(by_group.items()):
        if len(parts) > 1:
            report.error(
                csv_path,
                f"source group {group} is split across {what}s {', '.join(sorted(parts))}: "
                "images of one source must stay together",
            )


def _check_images(dataset: Dataset, report: CheckReport, progress: bool, workers: int) -> None:
    planes_of: dict[str, set[str]] = defaultdict(set)
    for case in dataset.cases:
        for plane, rel in case.images():
            planes_of[rel].add(plane)
    images = sorted(planes_of)
    report.n_images = len(images)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda rel: (rel, _image_size(dataset.image_path(rel))), images)
        for rel, (size, problem) in track(results, "checking images", total=len(images), enabled=progress):
            path = dataset.image_path(rel)
            if problem:
                report.error(path, problem)
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                report.warn(path, f"unusual image suffix {path.suffix!r}")
            _check_labels(dataset, rel, size, planes_of[rel], report)

    referenced = {label_path_for(rel) for rel in images}
    labels_root = dataset.root / "labels"
    if labels_root.is_dir():
        for label_file in sorted(labels_root.rglob("*.txt")):
            rel = str(label_file.relative_to(dataset.root))
            if rel not in referenced:
                report.warn(label_file, "labels file has no image in cases.csv")


def _image_size(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) after a full decode by the one image reader, or a problem description."""
    if not path.exists():
        return None, "missing image (listed in cases.csv but not on disk)"
    try:
        return read_image(path).size, None
    except ImageReadError as exc:
        return None, str(exc).removeprefix(f"{path}: ")


def _check_labels(
    dataset: Dataset, rel: str, size: tuple[int, int], planes: set[str], report: CheckReport
) -> None:
    spec = dataset.spec
    label_file = dataset.label_path(rel)
    if not label_file.exists():
        if spec.unlabelled_images == "required":
            report.error(
                label_file,
                f"no labels file for image {rel} (dataset.yaml says unlabelled_images: required)",
            )
        return
    try:
        text = label_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        report.error(label_file, f"unreadable labels file: {exc}")
        return
    width, height = size
    expected = {r for plane in planes if plane in spec.planes for r in spec.planes[plane].regions}
    seen: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            box = parse_label_line(line)
        except ValueError as exc:
            report.error(label_file, f"malformed line: {exc}", number)
            continue
        report.n_boxes += 1
        if not 0 <= box.class_id < len(spec.regions):
            report.error(
                label_file,
                f"unknown class id {box.class_id} (dataset.yaml has {len(spec.regions)} regions: "
                f"0..{len(spec.regions) - 1})",
                number,
            )
            continue
        region = spec.regions[box.class_id]
        if box.w * width < MIN_BOX_PIXELS or box.h * height < MIN_BOX_PIXELS:
            report.error(label_file, f"{region} box has zero area ({box.w:g} x {box.h:g})", number)
            continue
        x0, y0, x1, y1 = box.cx - box.w / 2, box.cy - box.h / 2, box.cx + box.w / 2, box.cy + box.h / 2
        if min(x0, y0) < -EDGE_TOLERANCE or max(x1, y1) > 1 + EDGE_TOLERANCE:
            report.error(
                label_file,
                f"{region} box lies outside the image (x {x0:.3f}..{x1:.3f}, y {y0:.3f}..{y1:.3f})",
                number,
            )
        if expected and region not in expected:
            report.warn(
                label_file,
                f"region {region} is not expected in plane {'/'.join(sorted(planes))}",
                number,
            )
        if box.class_id in seen:
            report.warn(label_file, f"second {region} box (first on line {seen[box.class_id]})", number)
        seen.setdefault(box.class_id, number)


__all__ = ["CheckReport", "LabelLineError", "Problem", "check_dataset"]
