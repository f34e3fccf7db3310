"""The neurosono dataset format, written down once.

A dataset is a folder::

    DATASET/
      dataset.yaml        name, source, licence, region names in class-id order, planes
      cases.csv           one row per case (see CASE_COLUMNS)
      images/...          image files, referenced from cases.csv by relative path
      labels/...          YOLO box files parallel to images/ (ultralytics convention):
                          images/a/b.png  ->  labels/a/b.txt
      masks/...           optional head masks (filled skull ellipse, white on black, the
                          image's size), named by a case's ``tv_head_mask`` column

A YOLO label line is ``class_id cx cy w h`` with coordinates normalised to the
image size. A missing labels file means "not annotated" (allowed only when
``dataset.yaml`` says ``unlabelled_images: allowed``); an empty labels file means
"annotated, no region visible".
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from neurosono.core.atomic import atomic_write_text
from neurosono.core.images import IMAGE_EXTENSIONS
from neurosono.models import HEAD_REGION

FORMAT_VERSION = 1
DEFAULT_REGIONS: tuple[str, ...] = (
    "csp",
    "thalami",
    "lateral_ventricle",
    "sylvian_fissure",
    "cerebellum",
    "cisterna_magna",
)
# The standard axial planes: transventricular, transcerebellar and transthalamic. The
# pipeline's decision reads TV and TC; TT images (the plane most often saved) may sit beside
# them, for the detector.
PLANES: tuple[str, ...] = ("tv", "tc", "tt")
# Which default regions an annotator is asked to box in which plane (ISUOG basic
# CNS examination): CSP and thalami are seen in every plane.
DEFAULT_PLANE_REGIONS: dict[str, tuple[str, ...]] = {
    "tv": ("csp", "thalami", "lateral_ventricle", "sylvian_fissure"),
    "tc": ("csp", "thalami", "cerebellum", "cisterna_magna"),
    "tt": ("csp", "thalami"),
}
PLANE_DESCRIPTIONS = {
    "tv": "transventricular axial plane",
    "tc": "transcerebellar axial plane",
    "tt": "transthalamic axial plane",
}
LABELS: tuple[str, ...] = ("normal", "abnormal")
# The column naming a case's head mask (masks/...): the outer border of the skull, filled.
HEAD_MASK_COLUMN = "tv_head_mask"
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES: tuple[str, ...] = IMAGE_EXTENSIONS  # what the one image reader reads

# Required columns of cases.csv, in the order they are written.
CASE_COLUMNS: tuple[str, ...] = (
    "case_id",
    "label",
    "finding",
    "ga_weeks",
    "center",
    "split",
    "tv_image",
    "tc_image",
)
# Optional columns with a meaning; any other column is kept as a measurement or note.
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "source_group",
    "fold",
    "pixel_spacing_mm",
    "tv_pixel_spacing_mm",
    "tc_pixel_spacing_mm",
    "tt_image",
    "tt_pixel_spacing_mm",
)


class DatasetFormatError(ValueError):
    """A dataset file does not follow the format; the message names the file."""


class PlaneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    regions: list[str] = Field(default_factory=list)


class DatasetSpec(BaseModel):
    """Schema of ``dataset.yaml``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str
    description: str = ""
    source: str
    licence: str
    regions: list[str] = Field(min_length=1)
    planes: dict[str, PlaneSpec]
    # "required": every referenced image must have a labels file.
    # "allowed": images without labels are classification-only (public sets).
    unlabelled_images: str = "required"

    @field_validator("regions")
    @classmethod
    def _unique_regions(cls, regions: list[str]) -> list[str]:
        if len(set(regions)) != len(regions):
            raise ValueError(f"region names must be unique, got {regions}")
        for name in regions:
            if not name or not name.replace("_", "").isalnum():
                raise ValueError(f"region name {name!r} must be letters, digits and '_'")
        return regions

    @field_validator("unlabelled_images")
    @classmethod
    def _unlabelled_values(cls, value: str) -> str:
        if value not in ("required", "allowed"):
            raise ValueError("unlabelled_images must be 'required' or 'allowed'")
        return value

    @model_validator(mode="after")
    def _planes_known(self) -> DatasetSpec:
        unknown = set(self.planes) - set(PLANES)
        if unknown:
            raise ValueError(f"unknown plane(s) {sorted(unknown)}; planes are {list(PLANES)}")
        for plane, spec in self.planes.items():
            missing = set(spec.regions) - set(self.regions)
            if missing:
                raise ValueError(f"plane {plane!r} lists regions not in 'regions': {sorted(missing)}")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported (expected {FORMAT_VERSION})"
            )
        return self

    def region_id(self, name: str) -> int:
        return self.regions.index(name)

    def plane_region_ids(self, plane: str) -> list[int]:
        return [self.region_id(r) for r in self.planes[plane].regions] if plane in self.planes else []


def default_spec(
    name: str,
    source: str,
    licence: str,
    description: str = "",
    head: bool = False,
    planes: tuple[str, ...] = ("tv", "tc"),
) -> DatasetSpec:
    """The default taxonomy; ``head`` adds the ``fetal_head`` region (the skull's outer
    ellipse, boxed in every plane) after the six brain regions."""
    extra = (HEAD_REGION,) if head else ()
    return DatasetSpec(
        name=name,
        description=description,
        source=source,
        licence=licence,
        regions=[*DEFAULT_REGIONS, *extra],
        planes={
            plane: PlaneSpec(
                description=PLANE_DESCRIPTIONS[plane], regions=[*DEFAULT_PLANE_REGIONS[plane], *extra]
            )
            for plane in planes
        },
    )


@dataclass
class Case:
    """One row of cases.csv. Image paths are relative to the dataset root ('' = absent)."""

    case_id: str
    label: str
    finding: str = ""
    ga_weeks: float | None = None
    center: str = ""
    split: str = ""
    tv_image: str = ""
    tc_image: str = ""
    source_group: str = ""
    fold: str = ""
    pixel_spacing_mm: float | None = None
    tv_pixel_spacing_mm: float | None = None
    tc_pixel_spacing_mm: float | None = None
    tt_image: str = ""
    tt_pixel_spacing_mm: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # Line in cases.csv this case was read from (for messages); not written back.
    source_line: int | None = field(default=None, compare=False, repr=False)

    @property
    def group(self) -> str:
        """The unit that must never be split across train/val/test."""
        return self.source_group or self.case_id

    def image(self, plane: str) -> str:
        return getattr(self, f"{plane}_image")

    def spacing_mm(self, plane: str) -> float | None:
        per_image = getattr(self, f"{plane}_pixel_spacing_mm")
        return per_image if per_image is not None else self.pixel_spacing_mm

    def images(self) -> Iterator[tuple[str, str]]:
        """(plane, relative path) for each image the case has."""
        for plane in PLANES:
            path = self.image(plane)
            if path:
                yield plane, path


@dataclass(frozen=True)
class Box:
    """A YOLO box: class id and centre/size normalised to the image (0..1)."""

    class_id: int
    cx: float
    cy: float
    w: float
    h: float

    def to_xyxy(self, width: int, height: int) -> tuple[float, float, float, float]:
        return (
            (self.cx - self.w / 2) * width,
            (self.cy - self.h / 2) * height,
            (self.cx + self.w / 2) * width,
            (self.cy + self.h / 2) * height,
        )

    @classmethod
    def from_xyxy(
        cls, class_id: int, x0: float, y0: float, x1: float, y1: float, width: int, height: int
    ) -> Box:
        return cls(
            class_id,
            (x0 + x1) / 2 / width,
            (y0 + y1) / 2 / height,
            (x1 - x0) / width,
            (y1 - y0) / height,
        )

    def to_line(self) -> str:
        return f"{self.class_id} {self.cx:.6f} {self.cy:.6f} {self.w:.6f} {self.h:.6f}"


class LabelLineError(DatasetFormatError):
    def __init__(self, path: Path, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


def parse_label_line(text: str) -> Box:
    """Parse one YOLO line; raises ValueError with the problem (no file context)."""
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(f"expected 5 fields 'class cx cy w h', got {len(parts)}")
    try:
        class_id = int(parts[0])
    except ValueError:
        raise ValueError(f"class id {parts[0]!r} is not an integer") from None
    try:
        cx, cy, w, h = (float(p) for p in parts[1:])
    except ValueError:
        raise ValueError(f"coordinates {parts[1:]} are not all numbers") from None
    return Box(class_id, cx, cy, w, h)


def read_labels(path: Path) -> list[Box]:
    """Read a YOLO labels file, raising LabelLineError naming file and line."""
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            boxes.append(parse_label_line(line))
        except ValueError as exc:
            raise LabelLineError(path, number, str(exc)) from None
    return boxes


def labels_text(boxes: Iterable[Box]) -> str:
    return "".join(box.to_line() + "\n" for box in boxes)


def label_path_for(image_rel: str) -> str:
    """labels/ path parallel to an images/ path (ultralytics convention)."""
    parts = Path(image_rel).with_suffix(".txt").parts
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts = (*parts[:i], "labels", *parts[i + 1 :])
    else:
        parts = ("labels", *parts)
    return str(Path(*parts))


def _float_or_none(value: str, column: str, where: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise DatasetFormatError(f"{where}: column {column!r} value {value!r} is not a number") from None


def _format_float(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


class Dataset:
    """A dataset folder: its spec, its cases, and paths to its files."""

    def __init__(self, root: Path, spec: DatasetSpec, cases: list[Case]) -> None:
        self.root = Path(root)
        self.spec = spec
        self.cases = cases

    # ---- reading -----------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> Dataset:
        root = Path(root)
        if not root.is_dir():
            raise DatasetFormatError(f"{root}: not a dataset folder (does not exist or is not a folder)")
        return cls(root, load_spec(root / "dataset.yaml"), load_cases(root / "cases.csv"))

    # ---- paths -------------------------------------------------------------------
    def image_path(self, rel: str) -> Path:
        return self.root / rel

    def label_path(self, image_rel: str) -> Path:
        return self.root / label_path_for(image_rel)

    def split(self, name: str) -> list[Case]:
        return [c for c in self.cases if c.split == name]

    # ---- writing -----------------------------------------------------------------
    def write_spec(self) -> None:
        write_spec(self.root / "dataset.yaml", self.spec)

    def write_cases(self, path: Path | None = None) -> None:
        write_cases(path or self.root / "cases.csv", self.cases)


def load_spec(path: Path) -> DatasetSpec:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing (every dataset needs a dataset.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DatasetFormatError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path}: expected a mapping at the top level")
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise DatasetFormatError(f"{path}: {problems}") from None


def write_spec(path: Path, spec: DatasetSpec) -> None:
    atomic_write_text(path, yaml.safe_dump(spec.model_dump(), sort_keys=False))


def load_cases(path: Path) -> list[Case]:
    """Parse cases.csv; structural problems raise DatasetFormatError naming file and line."""
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing (every dataset needs a cases.csv)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in CASE_COLUMNS if c not in header]
        if missing:
            raise DatasetFormatError(f"{path}:1: missing required column(s) {missing}")
        cases = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise DatasetFormatError(f"{where}: more fields than the header has")
            if any(v is None for v in row.values()):
                raise DatasetFormatError(f"{where}: fewer fields than the header has")
            known = set(CASE_COLUMNS) | set(OPTIONAL_COLUMNS)
            cases.append(
                Case(
                    case_id=row["case_id"].strip(),
                    label=row["label"].strip(),
                    finding=row["finding"].strip(),
                    ga_weeks=_float_or_none(row["ga_weeks"], "ga_weeks", where),
                    center=row["center"].strip(),
                    split=row["split"].strip(),
                    tv_image=row["tv_image"].strip(),
                    tc_image=row["tc_image"].strip(),
                    source_group=row.get("source_group", "").strip(),
                    fold=row.get("fold", "").strip(),
                    pixel_spacing_mm=_float_or_none(
                        row.get("pixel_spacing_mm", ""), "pixel_spacing_mm", where
                    ),
                    tv_pixel_spacing_mm=_float_or_none(
                        row.get("tv_pixel_spacing_mm", ""), "tv_pixel_spacing_mm", where
                    ),
                    tc_pixel_spacing_mm=_float_or_none(
                        row.get("tc_pixel_spacing_mm", ""), "tc_pixel_spacing_mm", where
                    ),
                    tt_image=row.get("tt_image", "").strip(),
                    tt_pixel_spacing_mm=_float_or_none(
                        row.get("tt_pixel_spacing_mm", ""), "tt_pixel_spacing_mm", where
                    ),
                    extra={k: v for k, v in row.items() if k not in known},
                    source_line=reader.line_num,
                )
            )
    return cases


def cases_csv_text(cases: list[Case]) -> str:
    """cases.csv contents: required columns, then optional ones in use, then extras."""
    optional = [c for c in OPTIONAL_COLUMNS if any(_case_value(case, c) for case in cases)]
    extras: list[str] = []
    for case in cases:
        extras.extend(k for k in case.extra if k not in extras)
    columns = [*CASE_COLUMNS, *optional, *extras]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for case in cases:
        writer.writerow([_case_value(case, c) for c in columns])
    return buffer.getvalue()


def _case_value(case: Case, column: str) -> str:
    if column in case.extra:
        return case.extra[column]
    value = getattr(case, column, "")
    if isinstance(value, float) or value is None:
        return _format_float(value)
    return str(value)


def write_cases(path: Path, cases: list[Case]) -> None:
    atomic_write_text(path, cases_csv_text(cases))


def dataset_hash(dataset: Dataset, splits: tuple[str, ...]) -> str:
    """SHA-256 over dataset.yaml, and the bytes of every image and labels file in these splits:
    the data a run was trained on, recorded beside its weights."""
    digest = hashlib.sha256((dataset.root / "dataset.yaml").read_bytes())
    for case in sorted(dataset.cases, key=lambda c: c.case_id):
        if case.split not in splits:
            continue
        for plane, rel in case.images():
            digest.update(f"{case.case_id}/{plane}/{case.label}".encode())
            digest.update(dataset.image_path(rel).read_bytes())
            label = dataset.label_path(rel)
            digest.update(label.read_bytes() if label.exists() else b"<no labels>")
    return digest.hexdigest()
