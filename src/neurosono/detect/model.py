"""The stage-1 detector file: what neurosono saves and the only thing it loads.

A detector is saved as plain tensors and lists (``torch.load(weights_only=True)``
can read it), never as a pickled ultralytics object, so loading a detector can
not run code from the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from neurosono.core.checkpoints import ModelFileError, file_sha256, load_payload, save_payload
from neurosono.detect.env import configure_ultralytics

FORMAT = "neurosono-detector-v1"
WEIGHTS_NAME = "detector.pt"


class DetectorFileError(ModelFileError):
    """A detector file is missing, not neurosono's, or does not fit the data."""


class RegionMismatchError(DetectorFileError):
    pass


@dataclass
class Detector:
    """A loaded YOLO detector with its region names and planes."""

    yolo: object  # ultralytics.YOLO
    regions: list[str]
    planes: dict[str, list[str]]
    imgsz: int
    path: Path | None = None
    sha256: str = ""
    record: dict = field(default_factory=dict)
    # An image darker than this (mean grey of its non-zero pixels) has its grey range
    # stretched before detection (None: never); see ``detect.predict.detector_input``.
    dark_below: float | None = None

    def check_regions(self, dataset_regions: list[str], where: str) -> None:
        if list(dataset_regions) != list(self.regions):
            raise RegionMismatchError(
                f"{where}: the dataset's regions {list(dataset_regions)} do not match the detector's "
                f"{self.regions} (same names in the same class-id order are required)"
            )


def save_detector(
    path: Path, model: torch.nn.Module, regions: list[str], planes: dict[str, list[str]], imgsz: int
) -> None:
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "yaml": _plain(model.yaml),
        "state_dict": state,
        "regions": list(regions),
        "planes": {k: list(v) for k, v in planes.items()},
        "imgsz": int(imgsz),
    }
    save_payload(path, payload)


def _plain(value):
    """The model yaml as plain lists/dicts/str/numbers (loadable with weights_only)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_detector(path: str | Path) -> Detector:
    """Load a detector file written by :func:`save_detector` (or a run folder holding one)."""
    path, payload = load_payload(path, WEIGHTS_NAME, FORMAT, "detector", DetectorFileError)
    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    regions = list(payload["regions"])
    model = DetectionModel(cfg=payload["yaml"], nc=len(regions), verbose=False)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    )
    model.names = dict(enumerate(regions))
    model.eval()
    yolo = YOLO(model.yaml.get("yaml_file") or "yolov5n.yaml", task="detect")
    yolo.model = model
    record = read_record(path)
    return Detector(
        yolo=yolo,
        regions=regions,
        planes={k: list(v) for k, v in payload["planes"].items()},
        imgsz=int(payload["imgsz"]),
        path=path,
        sha256=file_sha256(path),
        record=record,
        dark_below=dark_threshold(record),
    )


def read_record(path: Path) -> dict:
    """The run record (detector.json) beside a detector file; empty when there is none."""
    import json

    record_file = Path(path).parent / "detector.json"
    return json.loads(record_file.read_text()) if record_file.exists() else {}


def dark_threshold(record: dict) -> float | None:
    """The darkness below which a detector's input is stretched, from its run record."""
    value = record.get("input", {}).get("dark_below")
    return None if value is None else float(value)
