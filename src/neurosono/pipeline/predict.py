"""The whole pipeline on one new case: TV and TC images in, a decision out.

from neurosono import Pipeline
result = Pipeline.load().predict("tv.png", "tc.dcm", ga_weeks=21.4)
print(result.p_abnormal, result.decision, result.to_json())
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from neurosono.classify.config import input_config, uses_ga
from neurosono.classify.domain import INDETERMINATE, indeterminate_reason, stage1_support
from neurosono.classify.gestation import ga_scalars
from neurosono.classify.inputs import DETECTION_CONF
from neurosono.classify.regions import head_box_sizes, head_sizes, region_inputs, split_head
from neurosono.core.images import DEFAULT_MAX_PIXELS, LoadedImage, read_image
from neurosono.detect.predict import Detection, detect_planes, seen_stretched
from neurosono.measure.case import biometry_for
from neurosono.pipeline.bundle import default_model_dir, load_biometry_models, load_torch_parts
from neurosono.pipeline.stage2 import drop_one_model, probabilities

RUNTIMES = ("torch", "onnx", "int8", "openvino")
# Stage 2 at inference: (crops [B, R, 1, H, W], scalars [B, R, S], case scalars [B, C])
# -> (logits [B], drop-one logits [B, R]). C is 0 for a model without case-level inputs.
Stage2 = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

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
    inputs: dict = field(default_factory=dict)  # per plane: path, kind, pixel spacing, size
    ga_weeks: float | None = None  # the gestational age given with the case
    # How surely stage 1 saw the regions stage 2 reads (classify/domain.py), and the model's
    # threshold below which the decision is "indeterminate" (None: the model has no such rule).
    support: float | None = None
    min_support: float | None = None
    reason: str | None = None  # why the decision is "indeterminate"
    # Head biometry, centiles and finding hints (measure/biometry.py); None without a head model.
    biometry: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **{"indent": 2, **kwargs})


class TorchStage2:
    """HexaNet and its drop-one attributions in one torch pass (see ``pipeline/stage2.py``)."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        self.model = drop_one_model(classifier)

    def __call__(
        self, crops: np.ndarray, scalars: np.ndarray, case_scalars: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        case = (torch.from_numpy(case_scalars),) if self.model.n_case_scalars else ()
        with torch.no_grad():
            logits, drop = self.model(torch.from_numpy(crops), torch.from_numpy(scalars), *case)
        return logits.numpy(), drop.numpy()


class Pipeline:
    """Detector plus HexaNet, loaded from a model folder (default: the shipped phantom models).

    ``runtime="onnx"`` runs both stages on onnxruntime (``pipeline/onnx_runtime.py``), with the
    same pre- and post-processing as torch; ``"int8"`` runs an int8 export
    (``pipeline/quantize.py``) on onnxruntime; ``"openvino"`` runs an export's files
    compiled by OpenVINO (installed with the dev extras).
    """

    def __init__(
        self, detector, stage2: Stage2, meta: dict, model_info: dict, head_model=None, structure_model=None
    ) -> None:
        self.detector = detector
        self.stage2 = stage2
        self.meta = meta  # HexaNet's record: regions, planes, threshold, how its inputs are made
        self.model_info = model_info
        self.head_model = head_model  # the biometry head model (None: no biometry)
        self.structure_model = structure_model  # Vp, TCD, cisterna magna, CSP width (None: not measured)

    @classmethod
    def load(
        cls,
        model_dir: str | Path | None = None,
        runtime: str = "torch",
        notify: Callable[[str], None] | None = None,
        threads: int | None = None,
        biometry: bool = True,
    ) -> Pipeline:
        """A folder holding ``detector.pt`` and ``hexanet/classifier.pt`` (or ``classifier.pt``).

        With ``runtime="onnx"``: a folder written by ``neurosono export --format onnx``; for
        the shipped models (``model_dir`` None) their export in the cache folder, written
        on first use (``notify``, default stderr, says so). ``threads``: onnxruntime's
        intra-op threads (default: every core); torch keeps ``torch.get_num_threads()``.
        ``biometry``: also measure the head and the structures (the folder's ``head/head.pt``
        and ``structures/structures.pt``, else the shipped models), with centiles and
        finding hints.
        """
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if runtime != "torch":
            from neurosono.pipeline.onnx_runtime import load_onnx_parts

            engine = "openvino" if runtime == "openvino" else "onnxruntime"

            def build_int8(source: Path, folder: Path) -> None:
                from neurosono.pipeline.quantize import export_int8

                export_int8(
                    source, folder, load=lambda d: cls.load(d, runtime="onnx", notify=notify), notify=notify
                )

            onnx = load_onnx_parts(
                model_dir, notify, threads, biometry, engine, int8=runtime == "int8", build_int8=build_int8
            )
            head, structures, info = onnx.head_model, onnx.structure_model, onnx.info
            if biometry and head is None:  # an export without biometry files: torch measures
                head, structures, hashes = load_biometry_models(None)
                info = {**info, **hashes}
            return cls(onnx.detector, onnx.stage2, onnx.meta, info, head, structures)
        head, structures, hashes = load_biometry_models(model_dir) if biometry else (None, None, {})
        parts = load_torch_parts(Path(model_dir) if model_dir else default_model_dir())
        return cls(
            parts.detector,
            TorchStage2(parts.hexanet.model),
            parts.hexanet.meta,
            {**parts.info, **hashes, "runtime": "torch", "precision": "fp32"},
            head,
            structures,
        )

    def predict(
        self,
        tv: str | Path | None = None,
        tc: str | Path | None = None,
        frame: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        spacing_mm: dict[str, float | None] | None = None,
        ga_weeks: float | None = None,
    ) -> Prediction:
        """``spacing_mm`` (per plane) is used where the file itself carries no pixel spacing.

        ``ga_weeks``: the gestational age in weeks (21+3 is 21.43), for models trained with
        it (``uses_ga``); they decide without it too, and say so in the warnings.
        """
        if tv is None and tc is None:
            raise ValueError("give at least one image (tv or tc)")
        images: dict[str, LoadedImage] = {}
        for plane, path in (("tv", tv), ("tc", tc)):
            if path is not None:
                images[plane] = read_image(path, frame=frame, max_pixels=max_pixels)
                if images[plane].spacing_mm is None and spacing_mm and spacing_mm.get(plane):
                    images[plane].spacing_mm = float(spacing_mm[plane])
        return self.predict_loaded(images, ga_weeks)

    @property
    def uses_ga(self) -> bool:
        """Whether this pipeline's HexaNet takes the gestational age."""
        return uses_ga(self.meta)

    def predict_loaded(self, images: dict[str, LoadedImage], ga_weeks: float | None = None) -> Prediction:
        return self.classify(images, self.detect(images), ga_weeks)

    def detect(self, images: dict[str, LoadedImage]) -> list[Detection]:
        """Stage 1: every detection in every image."""
        return detect_planes(self.detector, images, conf=DETECTION_CONF)

    def classify(
        self, images: dict[str, LoadedImage], detections: list[Detection], ga_weeks: float | None = None
    ) -> Prediction:
        """Stage 2: region crops and scalars, HexaNet, drop-one attributions, the prediction."""
        regions, planes = self.meta["regions"], self.meta["planes"]
        biometry = None
        if self.head_model is not None:
            found = biometry_for(
                self.head_model,
                images,
                ga_weeks,
                detections,
                list(self.detector.regions),
                self.structure_model,
            )
            biometry = found.to_dict()
        spacing = {plane: im.spacing_mm for plane, im in images.items()}
        pixels = {p: im.pixels for p, im in images.items()}
        config = input_config(self.meta)
        detections, head_boxes = split_head(detections, self.detector.regions, regions)
        # The skull is fitted only for models that use it (it costs stage 2 a few ms per image);
        # a model that reads the fetal-head box takes the head's size from stage 1 instead.
        head_px = {}
        if config.head_size == "skull":
            head_px = head_sizes(pixels, detections)
        elif config.head_size == "box":
            head_px = head_box_sizes(head_boxes)
        crops, scalars, chosen = region_inputs(
            pixels,
            detections,
            regions,
            planes,
            spacing,
            head_px=head_px,
            ga_weeks=ga_weeks,
            **config.region_options(),
        )
        case = ga_scalars(ga_weeks)[None] if self.uses_ga else np.zeros((1, 0), np.float32)
        logits, drop_logits = self.stage2(crops[None, :, None], scalars[None], case)
        p_all, attribution_all = probabilities(logits, drop_logits)
        p, attribution = float(p_all[0]), attribution_all[0]
        threshold = float(self.meta["threshold"])
        support = stage1_support(detections, regions, planes, images)
        rule = self.meta.get("indeterminate")
        reason = indeterminate_reason(support, rule)
        results = region_results(regions, chosen, attribution, spacing)
        return Prediction(
            p_abnormal=round(p, 4),
            decision=INDETERMINATE if reason else "abnormal" if p >= threshold else "normal",
            threshold=round(threshold, 4),
            regions=results,
            warnings=([reason] if reason else [])
            + plane_warnings(detections, images, regions, planes, results)
            + ga_warnings(self.meta, ga_weeks)
            + stage1_warnings(self.meta, self.model_info),
            model=self.model_info,
            inputs=input_summary(images, self.detector.dark_below),
            ga_weeks=None if ga_weeks is None else round(float(ga_weeks), 3),
            support=round(support, 4),
            min_support=rule["min_support"] if rule else None,
            reason=reason,
            biometry=biometry,
        )


def region_results(
    regions: list[str], chosen: list[Detection | None], attribution: np.ndarray, spacing: dict
) -> list[RegionResult]:
    """Each region's chosen detection (box, confidence, size in mm) and attribution."""
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
    return results


def input_summary(images: dict[str, LoadedImage], dark_below: float | None = None) -> dict:
    """Per plane: the file, its kind, pixel spacing and size (what the prediction was made from),
    and whether stage 1 saw it with its grey range stretched (darker than ``dark_below``)."""
    return {
        plane: {
            "path": str(im.path),
            "kind": im.kind,
            "pixel_spacing_mm": im.spacing_mm,
            "size": list(im.pixels.shape[::-1]),
            "stage1_stretched": seen_stretched(im, dark_below),
        }
        for plane, im in images.items()
    }


def stage1_warnings(meta: dict, model_info: dict) -> list[str]:
    """HexaNet's two thresholds hold behind the detector they were chosen behind; say so when
    the pipeline's detector is another (a model folder assembled by hand, say)."""
    chosen_behind, running = meta.get("detector_sha256"), model_info.get("detector_sha256")
    if not chosen_behind or not running or chosen_behind == running:
        return []
    return [
        f"HexaNet's thresholds were chosen behind another stage-1 detector ({chosen_behind[:12]}, this "
        f"one is {running[:12]}): its decision and support thresholds may not hold; choose them again "
        "with 'neurosono classify calibrate'"
    ]


def ga_warnings(meta: dict, ga_weeks: float | None) -> list[str]:
    """What the user should know about the gestational age this prediction had (or lacked)."""
    if not uses_ga(meta):
        return ["this model does not use the gestational age; it was ignored"] if ga_weeks is not None else []
    if ga_weeks is None:
        return [
            "gestational age not given: the model decided without it (it is less sure of sizes "
            "that depend on age, such as the cerebellum's); give it with --ga-weeks (Python, API: ga_weeks)"
        ]
    span = meta.get("ga_weeks_range")
    if span and not span[0] - 0.5 <= ga_weeks <= span[1] + 0.5:
        return [
            f"gestational age {ga_weeks:.1f} weeks is outside the {span[0]:.1f}-{span[1]:.1f} weeks "
            "the model was trained on"
        ]
    return []


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
