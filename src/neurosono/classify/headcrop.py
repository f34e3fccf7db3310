"""Single-image classifiers for public sets that hold one image per case.

Two kinds, trained by the same loop as HexaNet (:func:`fit_binary`: class-weighted
loss, early stopping on validation AUC, threshold chosen on validation):

* ``head-crop`` (anatomy-aware, two stages): a one-region head detector finds the
  fetal head, the most confident box is cropped square with a margin, resized to
  ``SIZE`` and standardised, and a Mini-ResNet with a linear head gives
  P(abnormal). When the detector finds no head, the whole image is used (and the
  case is counted in ``n_no_head``).
* ``whole-image``: the whole-image baseline (:class:`WholeImageNet`) with the one
  image in both of its plane channels, so which plane slot an image was imported
  into can never carry information.

Python::

    from neurosono.classify.headcrop import gather_images, train_single_image, load_single_image
    run = train_single_image("fbau", "out", kind="head-crop", head_detector="models/real/head_detector.pt")
    model = load_single_image(run)
    scores = model.scores(gather_images(Dataset.load("other"), cases, model.detector))
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neurosono.checkpoints import load_payload, save_payload
from neurosono.classify.model import MiniResNet, count_parameters
from neurosono.classify.regions import crop_box, load_grey
from neurosono.classify.train import ClassifyTrainConfig, _scores, fit_binary, threshold_rule
from neurosono.data.atomic import atomic_write_text, staged_directory
from neurosono.data.format import Case, Dataset
from neurosono.detect.evaluate import predict_paths
from neurosono.detect.model import Detector, load_detector
from neurosono.evaluate.metrics import choose_threshold, classification_metrics
from neurosono.progress import track

KINDS = ("head-crop", "whole-image")
FORMAT = "neurosono-single-image-v1"
WEIGHTS_NAME = "classifier.pt"
SIZE = 96  # head crop side in pixels
MARGIN = 0.08  # context round the head box, as a fraction of its size
HEAD_CONF = 0.05  # lowest head confidence accepted as a box


@dataclass
class ImageItem:
    """One single-image case, loaded once: the grey image and its best head box."""

    case: Case
    label: int
    image: np.ndarray
    head: tuple[float, float, float, float] | None = None
    head_conf: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def images(self) -> dict[str, np.ndarray]:
        # The whole-image baseline reads two plane channels: give it the one image in both.
        return {"tv": self.image, "tc": self.image}


def case_image(case: Case) -> str:
    """The one image of a single-image case (TV slot first)."""
    rel = case.tv_image or case.tc_image
    if not rel:
        raise ValueError(f"case {case.case_id} has no image")
    return rel


def gather_images(
    dataset: Dataset, cases: list[Case], head_detector: Detector | None = None, progress: bool = False
) -> list[ImageItem]:
    """Load each case's image and, with a head detector, its most confident head box."""
    items = [
        ImageItem(c, int(c.label == "abnormal"), load_grey(dataset.image_path(case_image(c)))) for c in cases
    ]
    if head_detector is None:
        return items
    paths = [dataset.image_path(case_image(c)) for c in cases]
    batch = 16
    predictions = []
    for start in track(
        range(0, len(paths), batch), "finding heads", total=-(-len(paths) // batch), enabled=progress
    ):
        predictions.extend(predict_paths(head_detector, paths[start : start + batch], conf=HEAD_CONF))
    for item, (_, scores, boxes) in zip(items, predictions, strict=True):
        if len(scores):
            best = int(np.argmax(scores))
            item.head = tuple(float(v) for v in boxes[best])
            item.head_conf = float(scores[best])
    return items


class HeadCropNet(nn.Module):
    """Mini-ResNet on the head crop, then a linear layer: the logit of P(abnormal)."""

    def __init__(self, stem_stride: int = 2) -> None:
        super().__init__()
        self.backbone = MiniResNet(in_channels=1, stem_stride=stem_stride)
        self.head = nn.Linear(self.backbone.out_features, 1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(crops)).squeeze(1)


def head_crop(item: ImageItem, jitter: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    height, width = item.image.shape
    box = item.head or (0.0, 0.0, float(width), float(height))
    return crop_box(item.image, box, SIZE, MARGIN, jitter, rng)


def head_crop_batches(items: list[ImageItem], train: bool, rng: np.random.Generator, jitter: float = 0.05):
    crops = np.stack([head_crop(i, jitter if train else 0.0, rng if train else None) for i in items])
    if train:
        flip = rng.random(len(items)) < 0.5
        crops[flip] = crops[flip, :, ::-1]
        crops = crops + rng.normal(0, 0.1, crops.shape).astype(np.float32)
    labels = torch.tensor([i.label for i in items], dtype=torch.float32)
    return (torch.from_numpy(np.ascontiguousarray(crops[:, None])),), labels


def _model_and_batches(kind: str, stem_stride: int = 2):
    if kind == "head-crop":
        return HeadCropNet(stem_stride), head_crop_batches
    if kind == "whole-image":
        from neurosono.classify.baseline import WholeImageNet, batches_for

        return WholeImageNet(stem_stride), batches_for(with_ga=False)
    raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


@dataclass
class FittedSingle:
    kind: str
    model: nn.Module
    threshold: float
    best: dict
    history: list[dict]
    val_scores: np.ndarray


def fit_single_image(
    kind: str,
    train_items: list[ImageItem],
    val_items: list[ImageItem],
    config: ClassifyTrainConfig,
    progress: bool = False,
) -> FittedSingle:
    """Train one single-image classifier; its threshold is chosen on ``val_items``."""
    model, batches = _model_and_batches(kind)
    best, history = fit_binary(model, train_items, val_items, batches, config, progress, f"training {kind}")
    val_scores = _scores(model, val_items, batches)
    threshold = choose_threshold(
        np.array([i.label for i in val_items]), val_scores, config.target_sensitivity
    )
    return FittedSingle(kind, model, threshold, best, history, val_scores)


def single_image_scores(kind: str, model: nn.Module, items: list[ImageItem]) -> np.ndarray:
    _, batches = _model_and_batches(kind)
    return _scores(model, items, batches)


@dataclass
class SingleImageClassifier:
    """A loaded single-image classifier (with its head detector for ``head-crop``)."""

    kind: str
    model: nn.Module
    threshold: float
    meta: dict
    detector: Detector | None = None

    def items(self, dataset: Dataset, cases: list[Case], progress: bool = False) -> list[ImageItem]:
        return gather_images(dataset, cases, self.detector if self.kind == "head-crop" else None, progress)

    def scores(self, items: list[ImageItem]) -> np.ndarray:
        return single_image_scores(self.kind, self.model, items)


def save_single_image(path: Path, fitted: FittedSingle, meta: dict) -> None:
    save_payload(
        path,
        {
            "format": FORMAT,
            "kind": fitted.kind,
            "state_dict": fitted.model.state_dict(),
            "threshold": float(fitted.threshold),
            "crop_size": SIZE,
            "margin": MARGIN,
            "stem_stride": fitted.model.backbone.stem[0].stride[0],
            **meta,
        },
    )


def load_single_image(path: str | Path, head_detector: str | Path | None = None) -> SingleImageClassifier:
    """Load ``classifier.pt`` (or a folder holding it). A ``head-crop`` model also loads its
    head detector: ``head_detector`` if given, else ``head_detector.pt`` beside it."""
    file, payload = load_payload(path, WEIGHTS_NAME, FORMAT, "single-image classifier")
    kind = payload["kind"]
    # Files written before the stride-2 stem carry no stem_stride: their stems had stride 1.
    model, _ = _model_and_batches(kind, int(payload.get("stem_stride", 1)))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    detector = None
    if kind == "head-crop":
        detector = load_detector(head_detector or file.parent / "head_detector.pt")
        expected = payload.get("head_detector_sha256")
        if head_detector is None and expected and detector.sha256 != expected:
            raise ValueError(
                f"{detector.path}: not the head detector this classifier was trained with "
                f"(SHA-256 {detector.sha256[:12]}..., expected {expected[:12]}...)"
            )
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return SingleImageClassifier(kind, model, float(payload["threshold"]), meta, detector)


def train_single_image(
    dataset_path: str | Path,
    out: str | Path,
    kind: str = "head-crop",
    head_detector: str | Path | None = None,
    config: ClassifyTrainConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train on the dataset's train split, early-stop and choose the threshold on val.

    The run folder holds ``classifier.pt``, ``classifier.json`` (config, history,
    validation metrics, dataset hash) and, for ``head-crop``, a copy of the head
    detector as ``head_detector.pt`` so the folder is self-contained.
    """
    import shutil

    from neurosono.detect.env import configure_ultralytics
    from neurosono.detect.train import dataset_hash, package_versions

    configure_ultralytics()  # package_versions imports ultralytics: keep its settings out of $HOME

    config = config or ClassifyTrainConfig()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    dataset = Dataset.load(dataset_path)
    detector = None
    if kind == "head-crop":
        if head_detector is None:
            raise ValueError("a head-crop classifier needs a head detector")
        detector = load_detector(head_detector)
    train_items = gather_images(dataset, dataset.split("train"), detector, progress)
    val_items = gather_images(dataset, dataset.split("val"), detector, progress)
    for name, items in (("train", train_items), ("val", val_items)):
        if len({i.label for i in items}) < 2:
            raise ValueError(f"{dataset.root}: the {name} split needs both normal and abnormal cases")
    started = time.perf_counter()
    fitted = fit_single_image(kind, train_items, val_items, config, progress)
    val_labels = np.array([i.label for i in val_items])
    val_metrics = classification_metrics(val_labels, fitted.val_scores, fitted.threshold, 1000, config.seed)
    with staged_directory(out) as run:
        meta = {
            "threshold_rule": threshold_rule(config),
            "head_detector_sha256": detector.sha256 if detector else None,
        }
        save_single_image(run / WEIGHTS_NAME, fitted, meta)
        if detector is not None:
            shutil.copy2(detector.path, run / "head_detector.pt")
            record_file = Path(detector.path).parent / "detector.json"
            if record_file.exists():
                shutil.copy2(record_file, run / "head_detector.json")
        record = {
            "kind": f"neurosono single-image classifier ({kind})",
            "classifier_kind": kind,
            "threshold": fitted.threshold,
            **meta,
            "crop_size": SIZE,
            "margin": MARGIN,
            "stem_stride": fitted.model.backbone.stem[0].stride[0],
            "config": asdict(config),
            "parameters": count_parameters(fitted.model),
            "best_epoch": fitted.best["epoch"],
            "history": fitted.history,
            "train_seconds": round(time.perf_counter() - started, 1),
            "n_no_head": sum(i.head is None for i in train_items + val_items) if detector else None,
            "dataset": {
                "name": dataset.spec.name,
                "source": dataset.spec.source,
                "licence": dataset.spec.licence,
                "sha256_train_val": dataset_hash(dataset, ("train", "val")),
                "n_train_cases": len(train_items),
                "n_val_cases": len(val_items),
                "n_train_groups": len({i.case.group for i in train_items}),
                "n_val_groups": len({i.case.group for i in val_items}),
            },
            "versions": package_versions(),
            "val_metrics": val_metrics,
        }
        atomic_write_text(run / "classifier.json", json.dumps(record, indent=2))
    return Path(out)


__all__ = [
    "KINDS",
    "HeadCropNet",
    "ImageItem",
    "SingleImageClassifier",
    "fit_single_image",
    "gather_images",
    "load_single_image",
    "single_image_scores",
    "train_single_image",
]
