"""The whole pipeline on one new case: TV and TC images in, a decision out.

from neurosono import Pipeline
result = Pipeline.load().predict("tv.png", "tc.dcm")
print(result.p_abnormal, result.decision, result.to_json())
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from neurosono import __version__
from neurosono.checkpoints import ModelFileError
from neurosono.classify.model import drop_one_region_attribution
from neurosono.classify.regions import Detection, region_inputs
from neurosono.classify.train import DETECTION_CONF, load_classifier
from neurosono.data.images import DEFAULT_MAX_PIXELS, LoadedImage, read_image
from neurosono.detect.evaluate import predict_paths
from neurosono.detect.model import file_sha256, load_detector

PHANTOM_NOTICE = "trained on synthetic phantoms; not for clinical use"
RESEARCH_NOTICE = "research software; not for clinical use"
# A plane in which the detector sees at most this many regions, none of them surely,
# is probably not a fetal brain plane.
PLANE_MIN_CONFIDENCE = 0.25


@dataclass
class RegionResult:
    region: str
    found: bool
    plane: str | None = None
    box: list[float] | None = None  # x0, y0, x1, y1 in that plane's pixels
    confidence: float = 0.0
    attribution: float = 0.0  # change in P(abnormal) when this region is removed
    size_mm: list[float] | None = None  # box width, height in mm when the spacing is known


@dataclass
class Prediction:
    p_abnormal: float
    decision: str
    threshold: float
    regions: list[RegionResult]
    warnings: list[str]
    model: dict
    inputs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **{"indent": 2, **kwargs})


def default_model_dir() -> Path:
    from neurosono.models import PHANTOM_DIR

    return PHANTOM_DIR


class Pipeline:
    """Detector plus HexaNet, loaded from a model folder (default: the shipped phantom models)."""

    def __init__(self, detector, classifier, meta: dict, model_info: dict) -> None:
        self.detector = detector
        self.classifier = classifier
        self.meta = meta
        self.model_info = model_info

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> Pipeline:
        """A folder holding ``detector.pt`` and ``hexanet/classifier.pt`` (or ``classifier.pt``)."""
        folder = Path(model_dir) if model_dir else default_model_dir()
        detector = load_detector(folder / "detector.pt")
        classifier_file = next(
            (p for p in (folder / "hexanet" / "classifier.pt", folder / "classifier.pt") if p.exists()), None
        )
        if classifier_file is None:
            raise ModelFileError(f"{folder}: no HexaNet (hexanet/classifier.pt) in this model folder")
        classifier, meta = load_classifier(classifier_file)
        detector.check_regions(meta["regions"], str(classifier_file))
        trained_on = detector.record.get("dataset", {}).get("name", "")
        notice = PHANTOM_NOTICE if "phantom" in trained_on.lower() else RESEARCH_NOTICE
        info = {
            "name": folder.name,
            "neurosono_version": __version__,
            "detector_sha256": detector.sha256,
            "classifier_sha256": file_sha256(classifier_file),
            "trained_on": trained_on,
            "notice": notice,
        }
        return cls(detector, classifier, meta, info)

    def predict(
        self,
        tv: str | Path | None = None,
        tc: str | Path | None = None,
        frame: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        spacing_mm: dict[str, float | None] | None = None,
    ) -> Prediction:
        """``spacing_mm`` (per plane) is used where the file itself carries no pixel spacing."""
        if tv is None and tc is None:
            raise ValueError("give at least one image (tv or tc)")
        images: dict[str, LoadedImage] = {}
        for plane, path in (("tv", tv), ("tc", tc)):
            if path is not None:
                images[plane] = read_image(path, frame=frame, max_pixels=max_pixels)
                if images[plane].spacing_mm is None and spacing_mm and spacing_mm.get(plane):
                    images[plane].spacing_mm = float(spacing_mm[plane])
        return self.predict_loaded(images)

    def predict_loaded(self, images: dict[str, LoadedImage]) -> Prediction:
        regions, planes = self.meta["regions"], self.meta["planes"]
        outputs = predict_paths(self.detector, [im.bgr() for im in images.values()], conf=DETECTION_CONF)
        detections = [
            Detection(plane, int(c), float(s), tuple(float(v) for v in b))
            for plane, (classes, scores, boxes) in zip(images, outputs, strict=True)
            for c, s, b in zip(classes, scores, boxes, strict=True)
        ]
        spacing = {plane: im.spacing_mm for plane, im in images.items()}
        crops, scalars, chosen = region_inputs(
            {p: im.pixels for p, im in images.items()}, detections, regions, planes, spacing
        )
        crops_t = torch.from_numpy(crops[None, :, None].copy())
        scalars_t = torch.from_numpy(scalars[None])
        with torch.no_grad():
            p = float(torch.sigmoid(self.classifier(crops_t, scalars_t))[0])
        attribution = drop_one_region_attribution(self.classifier, crops_t, scalars_t)[0].numpy()
        threshold = float(self.meta["threshold"])
        results = []
        for r, (name, det) in enumerate(zip(regions, chosen, strict=True)):
            if det is None:
                results.append(RegionResult(name, False, attribution=round(float(attribution[r]), 4)))
                continue
            width, height = det.box[2] - det.box[0], det.box[3] - det.box[1]
            mm = spacing.get(det.plane)
            results.append(
                RegionResult(
                    name,
                    True,
                    det.plane,
                    [round(v, 1) for v in det.box],
                    round(det.confidence, 4),
                    round(float(attribution[r]), 4),
                    [round(width * mm, 2), round(height * mm, 2)] if mm else None,
                )
            )
        return Prediction(
            p_abnormal=round(p, 4),
            decision="abnormal" if p >= threshold else "normal",
            threshold=round(threshold, 4),
            regions=results,
            warnings=plane_warnings(detections, images, regions, planes, results),
            model=self.model_info,
            inputs={
                plane: {
                    "path": str(im.path),
                    "kind": im.kind,
                    "pixel_spacing_mm": im.spacing_mm,
                    "size": list(im.pixels.shape[::-1]),
                }
                for plane, im in images.items()
            },
        )


def plane_warnings(
    detections: list[Detection],
    images: dict[str, LoadedImage],
    regions: list[str],
    planes: dict[str, list[str]],
    results: list[RegionResult],
) -> list[str]:
    warnings = [f"region not found: {r.region}" for r in results if not r.found]
    for plane in images:
        mine = [d for d in detections if d.plane == plane]
        if not mine or max(d.confidence for d in mine) < PLANE_MIN_CONFIDENCE:
            warnings.append(
                f"{plane.upper()} image is unlikely to be a fetal brain plane (no region found surely)"
            )
    if {"tv", "tc"} <= set(images) and {"tv", "tc"} <= set(planes):
        # Regions proper to one plane seen more surely in the other image: planes swapped?
        def score(plane: str, image_plane: str) -> float:
            own = set(planes[plane]) - set(planes["tc" if plane == "tv" else "tv"])
            ids = {regions.index(r) for r in own}
            return float(
                np.sum([d.confidence for d in detections if d.plane == image_plane and d.class_id in ids])
            )

        if score("tv", "tc") > score("tv", "tv") and score("tc", "tv") > score("tc", "tc"):
            warnings.append("the TV and TC images may be swapped (each shows the other plane's regions)")
    return warnings
