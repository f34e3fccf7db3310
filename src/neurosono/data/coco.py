"""COCO JSON export of a dataset's boxes (for pycocotools / faster-coco-eval and other tools)."""

from __future__ import annotations

import json
from pathlib import Path

from neurosono import __version__
from neurosono.core.images import image_size
from neurosono.data.format import Dataset, read_labels

# COCO category ids start at 1; neurosono class ids start at 0.
CATEGORY_OFFSET = 1


def to_coco(dataset: Dataset, split: str | None = None) -> dict:
    """The dataset's images and boxes as a COCO detection dict (bbox in pixels, xywh)."""
    images, annotations = [], []
    seen: dict[str, int] = {}
    for case in dataset.cases:
        if split is not None and case.split != split:
            continue
        for plane, rel in case.images():
            if rel in seen:
                continue
            image_id = len(images) + 1
            seen[rel] = image_id
            width, height = image_size(dataset.image_path(rel))
            images.append(
                {
                    "id": image_id,
                    "file_name": rel,
                    "width": width,
                    "height": height,
                    "case_id": case.case_id,
                    "plane": plane,
                }
            )
            label_file = dataset.label_path(rel)
            if not label_file.exists():
                continue
            for box in read_labels(label_file):
                x0, y0, x1, y1 = box.to_xyxy(width, height)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": box.class_id + CATEGORY_OFFSET,
                        "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                        "area": round((x1 - x0) * (y1 - y0), 3),
                        "iscrowd": 0,
                    }
                )
    categories = [
        {"id": i + CATEGORY_OFFSET, "name": name, "supercategory": "fetal_brain"}
        for i, name in enumerate(dataset.spec.regions)
    ]
    info = {
        "description": dataset.spec.name,
        "version": f"neurosono {__version__}",
        "contributor": dataset.spec.source,
    }
    return {
        "info": info,
        "licenses": [{"id": 1, "name": dataset.spec.licence}],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def export_coco(dataset: Dataset, out: Path, split: str | None = None) -> dict:
    from neurosono.core.atomic import atomic_write_text

    coco = to_coco(dataset, split)
    atomic_write_text(out, json.dumps(coco, indent=1))
    return coco
