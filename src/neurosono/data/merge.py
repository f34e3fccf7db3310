"""Merge datasets that share one region list into a single dataset.

``neurosono data merge A B ... --out OUT``. Each input keeps its identity:

* case ids and source groups are prefixed with the input's dataset name
  (``fhead_Patient00709``), so two inputs can never share a group and a later
  group-aware split never divides a source;
* images go to ``images/<name>/...`` with their labels parallel under
  ``labels/<name>/...``;
* pixel spacing and every extra column are kept; a ``dataset`` column names
  the input each case came from;
* ``split`` and ``fold`` are cleared: a merged set is split afresh
  (``neurosono data split``), never by assignments made for another set;
* with ``max_side``, larger images are shrunk (aspect kept) so that training
  does not decode big files again and again; normalised boxes are unchanged and
  the pixel spacing is scaled to match.

The inputs must list the same regions in the same order (the class ids must
mean the same thing); the result passes ``neurosono data check``.

``neurosono data dedupe DATASET --out OUT`` keeps one case per source image
(:func:`one_image_per_source`): Roboflow exports hold several augmented copies
of each source image (``_aug_N`` and a hash in the name); evaluating on all of
them counts one image many times. The copy kept is the un-augmented one when
present, else the first by case id; splits, groups and every column are kept.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from neurosono.core.atomic import staged_directory
from neurosono.core.images import image_size, read_image
from neurosono.data.format import (
    HEAD_MASK_COLUMN,
    Case,
    Dataset,
    DatasetFormatError,
    DatasetSpec,
    PlaneSpec,
    label_path_for,
)


class MergeError(DatasetFormatError):
    """The inputs cannot be merged; the message names the inputs."""


def _prefix(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    if not clean:
        raise MergeError(f"dataset name {name!r} gives an empty prefix")
    return clean


def _copy_image(source: Path, target: Path, max_side: int | None) -> float:
    """Copy (or shrink) an image; returns the factor pixel spacing is multiplied by."""
    if max_side is None:
        shutil.copy2(source, target)
        return 1.0
    from PIL import Image

    width, height = image_size(source)
    if max(width, height) <= max_side:
        shutil.copy2(source, target)
        return 1.0
    loaded = read_image(source)
    image = Image.fromarray(loaded.colour if loaded.colour is not None else loaded.pixels)
    scale = max_side / max(width, height)
    small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)
    small.save(target, quality=95) if target.suffix.lower() in (".jpg", ".jpeg") else small.save(target)
    return max(width, height) / max_side


def _copy_mask(source: Path, target: Path, size: tuple[int, int]) -> None:
    """Copy a head mask, resized (nearest neighbour) to its image's new ``size`` (w, h)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if image_size(source) == size:
        shutil.copy2(source, target)
        return
    from PIL import Image

    with Image.open(source) as mask:
        mask.convert("L").resize(size, Image.NEAREST).save(target)


def _copy_files(staging: Path, copies: list, masks: list, max_side: int | None) -> None:
    """Images (shrunk to ``max_side``, their spacing scaled), labels, and head masks at their
    image's new size."""
    for source, rel, case, plane in copies:
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if case is None:
            shutil.copy2(source, target)
            continue
        factor = _copy_image(source, target, max_side)
        if factor != 1.0:
            spacing = case.spacing_mm(plane)
            if spacing is not None:
                setattr(case, f"{plane}_pixel_spacing_mm", round(spacing * factor, 8))
    for source, rel, image_rel in masks:
        _copy_mask(source, staging / rel, image_size(staging / image_rel))


def merge_datasets(
    inputs: list[str | Path], out: str | Path, name: str | None = None, max_side: int | None = None
) -> Dataset:
    """Merge ``inputs`` (dataset folders) into a new dataset folder ``out``."""
    if len(inputs) < 2:
        raise MergeError("merge needs at least two datasets")
    datasets = [Dataset.load(path) for path in inputs]
    first = datasets[0]
    for other in datasets[1:]:
        if other.spec.regions != first.spec.regions:
            raise MergeError(
                f"{first.root} has regions {first.spec.regions} but {other.root} has "
                f"{other.spec.regions}; merged datasets must share one region list"
            )
    prefixes = [_prefix(ds.spec.name) for ds in datasets]
    if len(set(prefixes)) != len(prefixes):
        raise MergeError(f"dataset names must differ to keep groups apart, got {prefixes}")

    planes: dict[str, PlaneSpec] = {}
    for ds in datasets:
        for plane, spec in ds.spec.planes.items():
            merged = planes.setdefault(plane, PlaneSpec(description=spec.description, regions=[]))
            merged.regions = [r for r in first.spec.regions if r in set(merged.regions) | set(spec.regions)]
    spec = DatasetSpec(
        name=name or "+".join(ds.spec.name for ds in datasets),
        description="Merged by neurosono from: "
        + "; ".join(f"{ds.spec.name} ({ds.spec.description})" for ds in datasets),
        source="; ".join(f"{ds.spec.name}: {ds.spec.source}" for ds in datasets),
        licence="; ".join(sorted({ds.spec.licence for ds in datasets})),
        regions=list(first.spec.regions),
        planes=planes,
        unlabelled_images="allowed"
        if any(ds.spec.unlabelled_images == "allowed" for ds in datasets)
        else "required",
    )

    if max_side is not None and max_side < 32:
        raise MergeError(f"max_side must be at least 32 pixels, got {max_side}")
    cases: list[Case] = []
    copies: list[tuple[Path, str, Case | None, str]] = []
    masks: list[tuple[Path, str, str]] = []  # (mask, its new path, its image's new path)
    for ds, prefix in zip(datasets, prefixes, strict=True):
        for case in ds.cases:
            moved = dataclasses.replace(
                case,
                case_id=f"{prefix}_{case.case_id}",
                source_group=f"{prefix}_{case.group}",
                split="",
                fold="",
                extra={**case.extra, "dataset": ds.spec.name},
                source_line=None,
            )
            for plane, rel in case.images():
                inner = Path(rel).relative_to("images") if rel.startswith("images/") else Path(rel)
                new_rel = str(Path("images") / prefix / inner)
                setattr(moved, f"{plane}_image", new_rel)
                copies.append((ds.image_path(rel), new_rel, moved, plane))
                label = ds.label_path(rel)
                if label.exists():
                    copies.append((label, label_path_for(new_rel), None, ""))
            mask = case.extra.get(HEAD_MASK_COLUMN, "")
            if mask:
                inner = Path(mask).relative_to("masks") if mask.startswith("masks/") else Path(mask)
                moved.extra[HEAD_MASK_COLUMN] = str(Path("masks") / prefix / inner)
                masks.append((ds.root / mask, moved.extra[HEAD_MASK_COLUMN], moved.tv_image))
            cases.append(moved)

    with staged_directory(out) as staging:
        _copy_files(staging, copies, masks, max_side)
        dataset = Dataset(staging, spec, cases)
        dataset.write_spec()
        dataset.write_cases()
    return Dataset.load(out)


def one_image_per_source(dataset_path: str | Path, out: str | Path) -> tuple[Dataset, int]:
    """Copy ``dataset_path`` to ``out`` keeping one case per source image; returns (dataset, dropped)."""
    from neurosono.data.importers import source_image_from_name

    dataset = Dataset.load(dataset_path)
    chosen: dict[tuple[str, ...], Case] = {}

    def rank(case: Case) -> tuple[bool, str]:
        names = [Path(rel).name for _, rel in case.images()]
        return (any("_aug_" in n for n in names), case.case_id)

    for case in sorted(dataset.cases, key=rank):
        key = (case.group, *sorted(source_image_from_name(Path(rel).name) for _, rel in case.images()))
        chosen.setdefault(key, case)
    kept_ids = {c.case_id for c in chosen.values()}
    kept = [c for c in dataset.cases if c.case_id in kept_ids]
    with staged_directory(out) as staging:
        for case in kept:
            for _, rel in case.images():
                for source, target in (
                    (dataset.image_path(rel), staging / rel),
                    (dataset.label_path(rel), staging / label_path_for(rel)),
                ):
                    if source.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(source, target)
        spec = dataset.spec.model_copy(
            update={"description": (dataset.spec.description + " One image per source image.").strip()}
        )
        Dataset(staging, spec, kept).write_spec()
        Dataset(staging, spec, kept).write_cases()
    return Dataset.load(out), len(dataset.cases) - len(kept)


__all__ = ["MergeError", "merge_datasets", "one_image_per_source"]
