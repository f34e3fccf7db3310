"""The head-crop classifier (anatomy-aware, two stages, for single-image sets).

A one-region head detector finds the fetal head; the most confident box is cropped square
with a margin, resized to ``SIZE`` and standardised, and a Mini-ResNet with a linear head
gives P(abnormal). Where the detector finds no head the whole image is used (counted as
``n_no_head``). The run folder keeps a copy of the head detector, checked by SHA-256 when
the classifier is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neurosono.classify.base import Classifier, seeded
from neurosono.classify.config import ClassifyTrainConfig
from neurosono.classify.inputs import CaseInputs
from neurosono.classify.networks import HeadCropNet, count_parameters
from neurosono.classify.regions import crop_box
from neurosono.detect.model import Detector, DetectorFileError, load_detector

FORMAT = "neurosono-head-crop-v1"
LEGACY_FORMAT = "neurosono-single-image-v1"
SIZE = 96  # head crop side in pixels
MARGIN = 0.08  # context round the head box, as a fraction of its size
JITTER = 0.05  # training jitter of the crop's centre and scale
HEAD_DETECTOR_NAME = "head_detector.pt"


def head_crop(item: CaseInputs, jitter: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    height, width = item.image.shape
    box = item.head or (0.0, 0.0, float(width), float(height))
    return crop_box(item.image, box, SIZE, MARGIN, jitter, rng)


class HeadCropClassifier(Classifier):
    kind = "head-crop"
    title = "head crop"
    formats = (FORMAT, LEGACY_FORMAT)
    needs_head_detector = True

    def __init__(self, *args, head_detector: Detector | None = None) -> None:
        super().__init__(*args)
        self.head_detector = head_detector

    @classmethod
    def create(
        cls, config: ClassifyTrainConfig, regions: list[str], planes: dict[str, list[str]]
    ) -> Classifier:
        seeded(config.seed)
        meta = {"crop_size": SIZE, "margin": MARGIN, "stem_stride": 2, "case_inputs": []}
        return cls(HeadCropNet(stem_stride=2), 0.5, meta, config)

    def batches(self, items: list[CaseInputs], train: bool, rng: np.random.Generator):
        crops = np.stack([head_crop(i, JITTER if train else 0.0, rng if train else None) for i in items])
        if train:
            flip = rng.random(len(items)) < 0.5
            crops[flip] = crops[flip, :, ::-1]
            crops = crops + rng.normal(0, 0.1, crops.shape).astype(np.float32)
        labels = torch.tensor([i.label for i in items], dtype=torch.float32)
        return (torch.from_numpy(np.ascontiguousarray(crops[:, None])),), labels

    @classmethod
    def from_payload(cls, payload: dict) -> Classifier:
        meta = {k: v for k, v in payload.items() if k not in ("state_dict", "format")}
        # Files written before the stride-2 stem carry no stem_stride: their stems had stride 1.
        model = HeadCropNet(stem_stride=int(meta.get("stem_stride", 1)))
        model.load_state_dict(payload["state_dict"])
        return cls(model.eval(), float(meta["threshold"]), meta, ClassifyTrainConfig())

    def attach_head_detector(self, beside: Path, head_detector: str | Path | None = None) -> None:
        """Load the head detector: ``head_detector`` if given, else the copy beside the weights,
        which must be the one it was trained with."""
        detector = load_detector(head_detector or beside / HEAD_DETECTOR_NAME)
        expected = self.meta.get("head_detector_sha256")
        if head_detector is None and expected and detector.sha256 != expected:
            raise DetectorFileError(
                f"{detector.path}: not the head detector this classifier was trained with "
                f"(SHA-256 {detector.sha256[:12]}..., expected {expected[:12]}...)"
            )
        self.head_detector = detector

    def card(self, record: dict) -> str:
        ds, auc = record["dataset"], record["val_metrics"]["auc"]
        return f"""# Stage-2 classifier: head crop

**For:** a normal/abnormal decision from the fetal head: the head detector's box (SHA-256
`{(record.get("head_detector_sha256") or "")[:16]}...`), cropped with a {MARGIN:.0%} margin and
resized to {SIZE} px, read by a Mini-ResNet ({count_parameters(self.model):,} parameters).

**Trained on:** {ds["name"]} ({ds["source"]}), {ds["n_train_cases"]} training and
{ds["n_val_cases"]} validation cases; dataset hash `{ds["sha256_train_val"][:16]}...`;
{record.get("n_no_head") or 0} image(s) without a head box (the whole image was used). Best epoch
{record["best_epoch"]}; seed {record["config"]["seed"]}; {record["train_seconds"]:.0f} s.

**Threshold:** {record["threshold"]:.4f}, {record["threshold_rule"]}.

**Validation split:** AUC {auc["value"]:.3f} (95% CI {auc["ci95"][0]:.3f}-{auc["ci95"][1]:.3f},
{auc["method"]}). Early stopping and the threshold used this split.

**Limits:** sees only the head: the brain's anatomy, not the six regions the study reads.
Not for clinical use.
"""
