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

The cisterna magna has a second way in. An enlarged one (a Dandy-Walker cyst) and an
obliterated one (Chiari II) are where stage 1 finds no ``cisterna_magna`` box most often,
yet its depth, from the vermis to the inner occipital bone, is still there to measure. So
where the TC image has no such box but has the cerebellum's, the network reads the depth
in the posterior-fossa window: the cerebellum's box widened ``FOSSA_WINDOW_MARGIN`` times,
which reaches the occipital bone behind even a large cyst. It also says whether that
stretch of midline is in the image at all (a sector edge cuts it off in many scans); where
it is not, the depth is absent with that reason. That window's pixels are coarse (about
0.65 mm at mid-gestation), too coarse to tell an obliterated cisterna (under 2 mm) from a
small normal one, so a depth read there under ``FOSSA_FINE_BELOW`` is read again in a
window ``FOSSA_FINE_MARGIN`` times the cerebellum's box, which still holds the vermis and
the bone behind a small cisterna, at pixels about 1.9 times finer.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from neurosono.classify.domain import stage1_support
from neurosono.classify.inputs import DETECTION_CONF
from neurosono.measure.hints import CSP_MIN_CONFIDENCE

CROP_PX = 96
WINDOW_MARGIN = 1.3
FOSSA_WINDOW_MARGIN = 3.0  # the posterior-fossa window: the cerebellum box's longer side times this
FOSSA_REGION = "cerebellum"
FOSSA_MEASUREMENT = "cisterna_magna_mm"
FOSSA_MIN_IN_VIEW = 0.5  # the network's P(the midline behind the vermis is in the image) to measure
FOSSA_FINE_MARGIN = 1.6  # the finer posterior-fossa window: the cerebellum box's longer side times this
FOSSA_FINE_BELOW = 4.0  # mm: a posterior-fossa depth under this is read again in the finer window
FOSSA_FINE_TRAIN_BELOW = 6.0  # mm: depths the finer window is trained on (room for the first read's error)
FORMAT = "neurosono-structures-1"  # the four region-window outputs only
FORMAT_FOSSA = "neurosono-structures-2"  # and the posterior-fossa windows' depth and in-view outputs
MIN_CONFIDENCE = 0.25  # a region's box must reach this stage-1 confidence to be measured in
# The CSP is measured from the confidence at which its hint counts it as seen.
REGION_MIN_CONFIDENCE = {"csp": CSP_MIN_CONFIDENCE}
# The posterior-fossa window is read round a less sure cerebellum box too, from the
# confidence the pipeline keeps stage 1's candidates at (0.05): the obliterated cisterna of
# Chiari II comes with a small, low "banana" cerebellum that stage 1 is often unsure of, yet
# the in-view output still guards the read.
FOSSA_FALLBACK_CONFIDENCE = DETECTION_CONF
# ... on an image stage 1 otherwise knows: the two surest of the TC plane's brain regions
# average at least this (the shipped HexaNet answers from a support of 0.773, measured the same way
# over both planes). On real scans, where stage 1's boxes mean little, no candidate is read.
FOSSA_FALLBACK_MIN_SUPPORT = 0.7
FOSSA_SUPPORT_REGIONS = ("csp", "thalami", "cerebellum", "cisterna_magna")


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
# The network's outputs past the four structures' shares: the cisterna magna's depth as a
# share of the posterior-fossa window, and P(that depth is in the image).
FOSSA_DEPTH, FOSSA_IN_VIEW = len(STRUCTURES), len(STRUCTURES) + 1
OUTPUTS = (*STRUCTURE_NAMES, "cisterna_magna_mm_fossa_window", "cisterna_magna_in_view")


def window(
    box: tuple[float, float, float, float], margin: float = WINDOW_MARGIN
) -> tuple[float, float, float]:
    """(centre x, centre y, side) in pixels of the square window round a box x0, y0, x1, y1."""
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0, 1.0) * margin


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

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 64), n_out: int = len(OUTPUTS)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            layers += [_conv(cin, w), *([_conv(w, w)] if i else []), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        grid = CROP_PX // 2 ** len(widths)
        self.n_out = n_out
        self.out = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(cin * grid * grid, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, n_out),
        )

    @property
    def reads_fossa(self) -> bool:
        """Whether it has the posterior-fossa window's outputs."""
        return self.n_out > FOSSA_DEPTH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.features(x)))


def save_structure_model(path, model: StructureNet, meta: dict) -> None:
    from neurosono.core.checkpoints import save_payload

    fossa = model.reads_fossa
    save_payload(
        path,
        {
            "format": FORMAT_FOSSA if fossa else FORMAT,
            "state_dict": model.state_dict(),
            "structures": list(STRUCTURE_NAMES),
            "outputs": list(OUTPUTS[: model.n_out]),
            **meta,
        },
    )


def load_structure_model(path) -> tuple[StructureNet, dict]:
    from neurosono.core.checkpoints import ModelFileError, load_payload

    _, payload = load_payload(path, "structures.pt", (FORMAT, FORMAT_FOSSA), "structure model")
    if list(payload["structures"]) != list(STRUCTURE_NAMES):
        raise ModelFileError(
            f"{path}: structure model for {payload['structures']}, expected {list(STRUCTURE_NAMES)}"
        )
    model = StructureNet(n_out=len(OUTPUTS) if payload["format"] == FORMAT_FOSSA else len(STRUCTURES))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, {k: v for k, v in payload.items() if k not in ("state_dict", "format")}


@dataclass
class StructureBox:
    plane: str
    box: tuple[float, float, float, float]
    confidence: float
    region: str = ""  # stage 1's region the box is of
    # "region": the box's own window; "posterior fossa": the cerebellum's wide one; "posterior
    # fossa, fine": the cerebellum's finer one, for a small depth
    window: str = "region"


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
                    "region": b.region,
                    "window": b.window,
                }
                for m, b in self.boxes.items()
            },
        }


def best_boxes(
    detections, region_names: list[str], min_confidence: float = MIN_CONFIDENCE
) -> dict[tuple[str, str], StructureBox]:
    """Each (plane, region)'s most confident stage-1 box at or above ``min_confidence``."""
    best: dict[tuple[str, str], StructureBox] = {}
    for d in detections:
        if d.confidence < min_confidence or d.class_id >= len(region_names):
            continue
        key = (d.plane, region_names[d.class_id])
        if key not in best or d.confidence > best[key].confidence:
            best[key] = StructureBox(d.plane, tuple(float(v) for v in d.box), float(d.confidence), key[1])
    return best


def plane_support(detections, region_names: list[str], plane: str) -> float:
    """How well stage 1 knows ``plane``'s image: the pipeline's support (the mean confidence
    of the surer half of the regions needed, one not found counting 0) over the TC plane's
    brain regions in that image."""
    mine = [d for d in detections if d.plane == plane]
    return stage1_support(mine, region_names, {plane: FOSSA_SUPPORT_REGIONS}, [plane])


def _fossa_box(
    found: dict[tuple[str, str], StructureBox],
    candidates: dict[tuple[str, str], StructureBox],
    supports: dict[str, float],
    plane: str,
) -> StructureBox | None:
    """The cerebellum's box the posterior-fossa window is read round: stage 1's sure one, else
    its best candidate on an image stage 1 otherwise knows."""
    if (plane, FOSSA_REGION) in found:
        return found[(plane, FOSSA_REGION)]
    if supports[plane] >= FOSSA_FALLBACK_MIN_SUPPORT:
        return candidates.get((plane, FOSSA_REGION))
    return None


def _unread_candidate(
    candidates: dict[tuple[str, str], StructureBox], supports: dict[str, float], planes: list[str]
) -> str:
    """Why a cerebellum candidate stage 1 did give was not read behind ('' where it gave none)."""
    for plane in planes:
        candidate = candidates.get((plane, FOSSA_REGION))
        if candidate is not None:
            return (
                f" (a {FOSSA_REGION} candidate at confidence {candidate.confidence:.2f} on an image stage 1 "
                f"is unsure of: support {supports[plane]:.2f}, below {FOSSA_FALLBACK_MIN_SUPPORT})"
            )
    return ""


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
    found = {
        key: box
        for key, box in best_boxes(detections, region_names).items()
        if box.confidence >= REGION_MIN_CONFIDENCE.get(key[1], MIN_CONFIDENCE)
    }
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
        margin, output = WINDOW_MARGIN, index
        fossa = spec.measurement == FOSSA_MEASUREMENT and model.reads_fossa
        if not boxes and fossa:
            # only here are stage 1's less sure boxes and the images' support wanted
            candidates = best_boxes(detections, region_names, FOSSA_FALLBACK_CONFIDENCE)
            supports = {p: plane_support(detections, region_names, p) for p in spaced}
            boxes = [
                StructureBox(b.plane, b.box, b.confidence, b.region, "posterior fossa")
                for b in (_fossa_box(found, candidates, supports, p) for p in spaced)
                if b is not None
            ]
            margin, output = FOSSA_WINDOW_MARGIN, FOSSA_DEPTH
        if not boxes:
            absent[spec.measurement] = (
                f"{spec.region} not found on the {' or '.join(p.upper() for p in spaced)} image"
            )
            if fossa:
                absent[spec.measurement] += _unread_candidate(candidates, supports, spaced)
            continue
        box = boxes[0]
        cx, cy, side = window(box.box, margin)
        crops.append(standardise_crop(crop(images[box.plane][0], cx, cy, side)))
        jobs.append((output, spec, box, side * images[box.plane][1]))
    if crops:
        shares = model(torch.from_numpy(np.stack(crops)[:, None])).numpy()
        for row, (output, spec, box, side_mm) in enumerate(jobs):
            if output == FOSSA_DEPTH and shares[row, FOSSA_IN_VIEW] < FOSSA_MIN_IN_VIEW:
                absent[spec.measurement] = (
                    f"{spec.region} not found on the {box.plane.upper()} image, and the midline "
                    "behind the cerebellum is not in the image"
                )
                continue
            size = float(shares[row, output]) * side_mm
            if output == FOSSA_DEPTH and size < FOSSA_FINE_BELOW:
                size, box = _fine_fossa_depth(model, images[box.plane], box)
            values[spec.measurement] = round(size, 2)
            chosen[spec.measurement] = box
    return StructureMeasurement(values, absent, chosen)


@torch.no_grad()
def _fine_fossa_depth(
    model: StructureNet, image: tuple[np.ndarray, float], box: StructureBox
) -> tuple[float, StructureBox]:
    """A small posterior-fossa depth read again in the cerebellum's finer window (mm, and the
    box marked with the window it was read in)."""
    pixels, spacing = image
    cx, cy, side = window(box.box, FOSSA_FINE_MARGIN)
    x = standardise_crop(crop(pixels, cx, cy, side))
    share = float(model(torch.from_numpy(x[None, None].astype(np.float32))).numpy()[0, FOSSA_DEPTH])
    return share * side * spacing, StructureBox(
        box.plane, box.box, box.confidence, box.region, "posterior fossa, fine"
    )
