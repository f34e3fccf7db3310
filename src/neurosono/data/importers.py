"""Importers: public data sets into the neurosono dataset format (single-image cases).

``neurosono data import FORMAT SRC OUT`` with FORMAT one of:

* ``roboflow-classification``: a folder of images with ``labels.csv``
  (``filename, finding, label[, source_group, plane, machine]``) or Roboflow's
  ``_classes.csv`` (``filename`` then one 0/1 column per class).
* ``yolo``: ``images/``, ``labels/`` and a class-names yaml (``classes.yaml``,
  ``data.yaml``). When the class names are ``normal``/``abnormal`` (as in the
  fetal-head set), the class is the case's label and the box becomes the
  single region ``fetal_head``; otherwise the class names become the regions.
* ``hc18``: HC18 images, filled head-ellipse masks and ``pixel_size_and_hc.csv``;
  each mask becomes a ``fetal_head`` box, the pixel spacing and the reference HC
  are kept. HC18 has no abnormality labels: its cases are imported as ``normal``.

Each importer keeps a ``source_group`` (the patient or source image, so that
augmented copies never straddle a split), copies the images, writes the format
atomically, and the result passes ``neurosono data check``. The plane is kept in
a ``source_plane`` column; single images go in the ``tc_image`` slot when the
source says transcerebellar and in ``tv_image`` otherwise.
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import yaml

from neurosono.core.atomic import staged_directory
from neurosono.core.images import read_grey
from neurosono.data.format import (
    HEAD_MASK_COLUMN,
    IMAGE_SUFFIXES,
    Box,
    Case,
    Dataset,
    DatasetFormatError,
    DatasetSpec,
    PlaneSpec,
    default_spec,
    labels_text,
    parse_label_line,
)
from neurosono.models import HEAD_REGION

FORMATS = ("roboflow-classification", "yolo", "hc18")


class SourceFormatError(DatasetFormatError):
    """The source folder does not follow its format; the message names file and line."""


def source_group_from_name(filename: str) -> str:
    """The source a Roboflow export file came from: its patient, or its case number.

    'Copy-of-anold-chiari-malformation-16e_aug_0_png_jpg.rf.<hash>.jpg' -> 'anold-chiari-malformation-16'
    'Patient00709_Plane3_1_of_3_aug_2_png_jpg.rf.<hash>.jpg'            -> 'Patient00709'
    """
    stem = Path(filename).name.split(".rf.")[0]
    stem = re.sub(r"^Copy-of-", "", stem)
    stem = re.sub(r"(_png|_jpg|_jpeg)+$", "", stem)
    stem = re.sub(r"_aug_\d+$", "", stem)
    patient = re.match(r"^(Patient\d+)", stem)
    if patient:
        return patient.group(1)
    numbered = re.match(r"^(.*?-\d+)[a-z]?(?:[-_].*)?$", stem)
    return numbered.group(1) if numbered else Path(stem).stem


def source_image_from_name(filename: str) -> str:
    """The source image a Roboflow export file was made from (augmentation and hash removed).

    'Copy-of-anold-chiari-malformation-16e_aug_3_png_jpg.rf.<hash>.jpg' -> 'anold-chiari-malformation-16e'
    'Patient00709_Plane3_1_of_3_png.rf.<hash>.jpg'                      -> 'Patient00709_Plane3_1_of_3'
    A name without Roboflow's marks is its own source: '000_HC.png' -> '000_HC'.
    """
    stem = Path(filename).name.split(".rf.")[0]
    stem = re.sub(r"^Copy-of-", "", stem)
    stem = re.sub(r"(_png|_jpg|_jpeg)+$", "", stem)
    stem = re.sub(r"_aug_\d+$", "", stem)
    return Path(stem).stem if Path(stem).suffix.lower() in IMAGE_SUFFIXES else stem


def _slot(plane: str) -> str:
    return "tc" if "cerebell" in plane.lower() else "tv"


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = []
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise SourceFormatError(
                        f"{path}:{reader.line_num}: wrong number of fields for the header {header}"
                    )
                rows.append((reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()}))
    except UnicodeDecodeError:
        raise SourceFormatError(f"{path}: not a text CSV file") from None
    return header, rows


def _find_images(src: Path) -> Path:
    return src / "images" if (src / "images").is_dir() else src


def _write(
    out: Path, spec: DatasetSpec, cases: list[Case], labels: dict[str, list[Box]] | None = None
) -> Dataset:
    with staged_directory(out) as staging:
        (staging / "images").mkdir()
        (staging / "labels").mkdir()
        for case in cases:
            for _, rel in case.images():
                source = Path(case.extra.pop("_source_path"))
                shutil.copy2(source, staging / rel)
                mask = case.extra.pop("_mask_source", "")
                if mask:
                    (staging / "masks").mkdir(exist_ok=True)
                    shutil.copy2(mask, staging / case.extra[HEAD_MASK_COLUMN])
                if labels is not None and rel in labels:
                    (staging / "labels" / (Path(rel).stem + ".txt")).write_text(labels_text(labels[rel]))
        dataset = Dataset(staging, spec, cases)
        dataset.write_spec()
        dataset.write_cases()
    return Dataset.load(out)


def import_roboflow_classification(src: str | Path, out: str | Path, name: str | None = None) -> Dataset:
    src = Path(src)
    images = _find_images(src)
    labels_csv = src / "labels.csv"
    classes_csv = next((p for p in (src / "_classes.csv", images / "_classes.csv") if p.exists()), None)
    cases: list[Case] = []
    if labels_csv.exists():
        header, rows = _read_csv(labels_csv)
        missing = {"filename", "finding"} - set(header)
        if missing:
            raise SourceFormatError(f"{labels_csv}:1: missing column(s) {sorted(missing)}")
        for line, row in rows:
            label = row.get("label") or ("normal" if row["finding"].lower() == "normal" else "abnormal")
            if label not in ("normal", "abnormal"):
                raise SourceFormatError(f"{labels_csv}:{line}: label {label!r} is not normal/abnormal")
            cases.append(
                _single_case(
                    images,
                    row["filename"],
                    label,
                    row["finding"],
                    row.get("source_group", ""),
                    row.get("plane", ""),
                    row.get("machine", ""),
                    f"{labels_csv}:{line}",
                )
            )
    elif classes_csv is not None:
        header, rows = _read_csv(classes_csv)
        if not header or header[0].lower() != "filename" or len(header) < 2:
            raise SourceFormatError(f"{classes_csv}:1: expected 'filename' then one column per class")
        classes = header[1:]
        for line, row in rows:
            hot = [c for c in classes if row[c] not in ("0", "")]
            if len(hot) != 1 or row[hot[0]] != "1":
                raise SourceFormatError(
                    f"{classes_csv}:{line}: expected exactly one class marked 1, got {hot}"
                )
            finding = hot[0]
            label = "normal" if finding.lower() == "normal" else "abnormal"
            cases.append(
                _single_case(images, row[header[0]], label, finding, "", "", "", f"{classes_csv}:{line}")
            )
    else:
        raise SourceFormatError(f"{src}: neither labels.csv nor _classes.csv found")
    spec = default_spec(
        name=name or src.name,
        source=f"imported from {src.name} (roboflow-classification)",
        licence=_licence(src),
        description="Single-image cases imported by neurosono; no region boxes.",
    )
    spec.unlabelled_images = "allowed"
    return _write(Path(out), spec, _unique(cases))


def _single_case(
    images: Path, filename: str, label: str, finding: str, group: str, plane: str, machine: str, where: str
) -> Case:
    source = images / filename
    if not source.is_file():
        raise SourceFormatError(f"{where}: image {filename} not found in {images}")
    rel = f"images/{source.name}"
    slot = _slot(plane)
    case = Case(
        case_id=Path(filename).stem.split(".rf.")[0] + "_" + Path(filename).stem.split(".rf.")[-1][:8],
        label=label,
        finding=finding,
        source_group=group or source_group_from_name(filename),
        extra={"source_plane": plane, "machine": machine, "_source_path": str(source)},
    )
    setattr(case, f"{slot}_image", rel)
    return case


def _unique(cases: list[Case]) -> list[Case]:
    seen: dict[str, int] = {}
    for case in cases:
        count = seen.get(case.case_id, 0)
        seen[case.case_id] = count + 1
        if count:
            case.case_id = f"{case.case_id}_{count}"
    return cases


def _licence(src: Path) -> str:
    for readme in (src / "README.dataset.txt", src / "README.md"):
        if readme.exists():
            match = re.search(r"Licen[cs]e:\s*(.+)", readme.read_text(errors="ignore"))
            if match:
                return match.group(1).strip()
    return "see the source's README"


def import_yolo(src: str | Path, out: str | Path, name: str | None = None) -> Dataset:
    src = Path(src)
    images, label_dir = src / "images", src / "labels"
    names_file = next((p for p in (src / "classes.yaml", src / "data.yaml") if p.exists()), None)
    if names_file is None or not images.is_dir() or not label_dir.is_dir():
        raise SourceFormatError(
            f"{src}: a yolo source needs images/, labels/ and classes.yaml (or data.yaml)"
        )
    raw = yaml.safe_load(names_file.read_text()) or {}
    names = raw.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise SourceFormatError(f"{names_file}: no 'names' list or mapping")
    head_mode = set(names) <= {"normal", "abnormal"}
    regions = [HEAD_REGION] if head_mode else list(names)
    cases, boxes = [], {}
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label_file = label_dir / (image.stem + ".txt")
        found: list[Box] = []
        label = "normal"
        if label_file.exists():
            for number, line in enumerate(label_file.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    box = parse_label_line(line)
                except ValueError as exc:
                    raise SourceFormatError(f"{label_file}:{number}: {exc}") from None
                if not 0 <= box.class_id < len(names):
                    raise SourceFormatError(
                        f"{label_file}:{number}: unknown class id {box.class_id} ({names_file.name} has "
                        f"{len(names)} classes)"
                    )
                if head_mode:
                    label = (
                        "abnormal" if names[box.class_id] == "abnormal" or label == "abnormal" else "normal"
                    )
                    box = Box(0, box.cx, box.cy, box.w, box.h)
                found.append(box)
        rel = f"images/{image.name}"
        case = Case(
            case_id=image.stem.split(".rf.")[0] + "_" + image.stem.split(".rf.")[-1][:8],
            label=label,
            finding=label if head_mode else "",
            source_group=source_group_from_name(image.name),
            tv_image=rel,
            extra={"_source_path": str(image)},
        )
        cases.append(case)
        boxes[rel] = found
    spec = DatasetSpec(
        name=name or src.name,
        description="Single-image cases imported by neurosono from YOLO labels.",
        source=f"imported from {src.name} (yolo)",
        licence=_licence(src),
        regions=regions,
        planes={"tv": PlaneSpec(description="single image (plane as in the source)", regions=regions)},
    )
    return _write(Path(out), spec, _unique(cases), boxes)


def import_hc18(src: str | Path, out: str | Path, name: str | None = None) -> Dataset:
    src = Path(src)
    table = src / "pixel_size_and_hc.csv"
    if not table.exists():
        raise SourceFormatError(f"{src}: pixel_size_and_hc.csv not found")
    header, rows = _read_csv(table)
    if len(header) < 3 or header[0] != "filename":
        raise SourceFormatError(f"{table}:1: expected 'filename, pixel size(mm), head circumference (mm)'")
    cases, boxes = [], {}
    for line, row in rows:
        filename = row["filename"]
        image = src / "images" / filename
        mask = src / "masks" / filename.replace(".png", "_Mask.png")
        if not image.is_file():
            raise SourceFormatError(f"{table}:{line}: image {filename} not found in {src / 'images'}")
        if not mask.is_file():
            raise SourceFormatError(f"{table}:{line}: mask {mask.name} not found in {src / 'masks'}")
        try:
            spacing, hc = float(row[header[1]]), float(row[header[2]])
        except ValueError:
            raise SourceFormatError(f"{table}:{line}: pixel size or HC is not a number") from None
        pixels = read_grey(mask) > 127
        ys, xs = np.nonzero(pixels)
        if not len(xs):
            raise SourceFormatError(f"{mask}: the mask is empty")
        height, width = pixels.shape
        rel = f"images/{filename}"
        boxes[rel] = [Box.from_xyxy(0, xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, width, height)]
        stem = Path(filename).stem
        cases.append(
            Case(
                case_id=f"hc18_{stem}",
                label="normal",
                finding="normal",
                source_group="hc18_" + re.match(r"(\d+)", stem).group(1) if re.match(r"\d+", stem) else stem,
                tv_image=rel,
                pixel_spacing_mm=spacing,
                extra={
                    "hc_mm": f"{hc:g}",
                    HEAD_MASK_COLUMN: f"masks/{mask.name}",
                    "_source_path": str(image),
                    "_mask_source": str(mask),
                },
            )
        )
    spec = DatasetSpec(
        name=name or "hc18",
        description=(
            "HC18 (van den Heuvel et al., PLoS ONE 2018): the sonographers' head masks "
            "(masks/, the filled HC ellipse), head boxes from them, and the reference HC in mm. "
            "No abnormality labels."
        ),
        source="HC18 grand challenge training set (Zenodo, doi 10.5281/zenodo.1327317)",
        licence="CC BY 4.0",
        regions=[HEAD_REGION],
        planes={"tv": PlaneSpec(description="transthalamic head-circumference plane", regions=[HEAD_REGION])},
    )
    return _write(Path(out), spec, cases, boxes)


def import_dataset(fmt: str, src: str | Path, out: str | Path, name: str | None = None) -> Dataset:
    """Import ``src`` (a public set in format ``fmt``, one of FORMATS) as a new dataset ``out``."""
    if fmt not in IMPORTERS:
        raise DatasetFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not Path(src).is_dir():
        raise DatasetFormatError(f"{src}: source folder does not exist")
    return IMPORTERS[fmt](src, out, name)


IMPORTERS = {
    "roboflow-classification": import_roboflow_classification,
    "yolo": import_yolo,
    "hc18": import_hc18,
}

__all__ = [
    "FORMATS",
    "IMPORTERS",
    "SourceFormatError",
    "import_dataset",
    "source_group_from_name",
    "source_image_from_name",
]
