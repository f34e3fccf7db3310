"""The brain structures' sizes: the atrium (Vp), TCD, cisterna magna and CSP width.

Each is measured inside stage 1's box of its region: the box is made a square window
(its longer side times ``WINDOW_MARGIN``), resampled to ``CROP_PX`` pixels, and a small
CNN (:class:`StructureNet`, one output per structure) reads from it the structure's size
as a share of the window's side. The size in mm is that share times the window's side
in pixels times the pixel spacing, so the network never needs to know the scale and a
missing spacing leaves the size absent. A structure whose region is not found, or whose
plane is missing, is absent with that reason: never a guessed number.

Windows are measured at the box's own orientation: the network sees rotated and flipped
windows in training, so the head's angle in the image does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

CROP_PX = 96
WINDOW_MARGIN = 1.3
FORMAT = "neurosono-structures-1"
MIN_CONFIDENCE = 0.25  # a region's box must reach this stage-1 confidence to be measured in


@dataclass(frozen=True)
class StructureSpec:
    measurement: str  # the cases.csv column and result key
    region: str  # stage 1's region it is measured in
    planes: tuple[str, ...]  # planes it is measured on, in order of preference
    what: str  # what the calliper measures, for docs and records
    label: str  # its short name on overlays and in the console


STRUCTURES = (
    StructureSpec(
        "atrium_mm",
        "lateral_ventricle",
        ("tv",),
        "the atrium of the lateral ventricle (Vp), inner to inner, at the glomus of the choroid plexus",
        "Vp",
    ),
    StructureSpec(
        "tcd_mm",
        "cerebellum",
        ("tc",),
        "transverse cerebellar diameter, outer to outer across the hemispheres",
        "TCD",
    ),
    StructureSpec(
        "cisterna_magna_mm",
        "cisterna_magna",
        ("tc",),
        "cisterna magna depth, from the vermis to the inner occipital bone",
        "CM",
    ),
    StructureSpec(
        "csp_width_mm", "csp", ("tv", "tc"), "width of the cavum septi pellucidi, wall to wall", "CSP"
    ),
)
STRUCTURE_NAMES = tuple(s.measurement for s in STRUCTURES)
STRUCTURE_LABELS = {s.measurement: s.label for s in STRUCTURES}


def window(box: tuple[float, float, float, float]) -> tuple[float, float, float]:
    """(centre x, centre y, side) in pixels of the square window round a box x0, y0, x1, y1."""
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0, 1.0) * WINDOW_MARGIN


def crop(
    image: np.ndarray, cx: float, cy: float, side: float, angle_deg: float = 0.0, flip: bool = False
) -> np.ndarray:
    """The square window (centre, side in pixels, turned by ``angle_deg``) as CROP_PX x CROP_PX grey."""
    from neurosono.core.images import smoothed_region

    scale = CROP_PX / side
    # Only the part of the image a window turned any way can see is read (its half-diagonal
    # round the centre, and a pixel or two for the interpolation): a crop costs its own
    # pixels, not the whole image's.
    reach = side * 0.5 * np.sqrt(2) + 2
    box = (int(cx - reach), int(cy - reach), int(np.ceil(cx + reach)) + 1, int(np.ceil(cy + reach)) + 1)
    source, x0, y0 = smoothed_region(image, *box, 0.5 / scale if scale < 0.8 else 0.0)
    if source.size == 0:
        return np.zeros((CROP_PX, CROP_PX), np.float32)
    matrix = cv2.getRotationMatrix2D((cx - x0, cy - y0), angle_deg, scale)
    matrix[:, 2] += (CROP_PX / 2 - (cx - x0), CROP_PX / 2 - (cy - y0))
    out = cv2.warpAffine(source, matrix, (CROP_PX, CROP_PX), flags=cv2.INTER_LINEAR)
    return out[:, ::-1] if flip else out


def standardise_crop(window_pixels: np.ndarray) -> np.ndarray:
    x = window_pixels.astype(np.float32) / 255.0
    return (x - float(x.mean())) / max(float(x.std()), 1e-3)


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class StructureNet(nn.Module):
    """Four 2x poolings to a 6 x 6 grid, kept whole (a size needs to know where the edges are),
    then one share-of-the-window output per structure."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 64), n_out: int = len(STRUCTURES)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            layers += [_conv(cin, w), *([_conv(w, w)] if i else []), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        grid = CROP_PX // 2 ** len(widths)
        self.out = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(cin * grid * grid, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, n_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.features(x)))


def save_structure_model(path, model: StructureNet, meta: dict) -> None:
    from neurosono.core.checkpoints import save_payload

    save_payload(
        path,
        {"format": FORMAT, "state_dict": model.state_dict(), "structures": list(STRUCTURE_NAMES), **meta},
    )


def load_structure_model(path) -> tuple[StructureNet, dict]:
    from neurosono.core.checkpoints import ModelFileError, load_payload

    _, payload = load_payload(path, "structures.pt", FORMAT, "structure model")
    if list(payload["structures"]) != list(STRUCTURE_NAMES):
        raise ModelFileError(
            f"{path}: structure model for {payload['structures']}, expected {list(STRUCTURE_NAMES)}"
        )
    model = StructureNet()
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, {k: v for k, v in payload.items() if k not in ("state_dict", "format")}


@dataclass
class StructureBox:
    plane: str
    box: tuple[float, float, float, float]
    confidence: float


@dataclass
class StructureMeasurement:
    values: dict[str, float]
    absent: dict[str, str]
    boxes: dict[str, StructureBox]  # the box each value was measured in

    def to_dict(self) -> dict:
        return {
            "values": dict(self.values),
            "absent": dict(self.absent),
            "boxes": {
                m: {
                    "plane": b.plane,
                    "box": [round(v, 1) for v in b.box],
                    "confidence": round(b.confidence, 4),
                }
                for m, b in self.boxes.items()
            },
        }


def best_boxes(detections, region_names: list[str]) -> dict[tuple[str, str], StructureBox]:
    """Each (plane, region)'s most confident stage-1 box at or above MIN_CONFIDENCE."""
    best: dict[tuple[str, str], StructureBox] = {}
    for d in detections:
        if d.confidence < MIN_CONFIDENCE or d.class_id >= len(region_names):
            continue
        key = (d.plane, region_names[d.class_id])
        if key not in best or d.confidence > best[key].confidence:
            best[key] = StructureBox(d.plane, tuple(float(v) for v in d.box), float(d.confidence))
    return best


@torch.no_grad()
def measure_structures(
    model: StructureNet,
    images: dict[str, tuple[np.ndarray, float | None]],
    detections,
    region_names: list[str],
) -> StructureMeasurement:
    """Every structure's size from the plane images (grey pixels, spacing in mm or None) and
    stage 1's detections on them; absent ones say why."""
    model.eval()
    found = best_boxes(detections, region_names)
    values: dict[str, float] = {}
    absent: dict[str, str] = {}
    chosen: dict[str, StructureBox] = {}
    crops, jobs = [], []
    for index, spec in enumerate(STRUCTURES):
        if spec.region not in region_names:
            absent[spec.measurement] = f"the detector has no {spec.region} region"
            continue
        planes = [p for p in spec.planes if p in images]
        if not planes:
            absent[spec.measurement] = f"no {' or '.join(p.upper() for p in spec.planes)} image"
            continue
        spaced = [p for p in planes if images[p][1]]
        if not spaced:
            absent[spec.measurement] = f"no pixel spacing for the {planes[0].upper()} image"
            continue
        boxes = [found[(p, spec.region)] for p in spaced if (p, spec.region) in found]
        if not boxes:
            absent[spec.measurement] = (
                f"{spec.region} not found on the {' or '.join(p.upper() for p in spaced)} image"
            )
            continue
        box = boxes[0]
        cx, cy, side = window(box.box)
        crops.append(standardise_crop(crop(images[box.plane][0], cx, cy, side)))
        jobs.append((index, spec, box, side * images[box.plane][1]))
    if crops:
        shares = model(torch.from_numpy(np.stack(crops)[:, None])).numpy()
        for row, (index, spec, box, side_mm) in enumerate(jobs):
            values[spec.measurement] = round(float(shares[row, index]) * side_mm, 2)
            chosen[spec.measurement] = box
    return StructureMeasurement(values, absent, chosen)
