"""The whole-image classifier: the study's core claim is that anatomy-aware beats this.

One Mini-ResNet reads both planes at once (TV and TC resized to ``SIZE`` and stacked as two
channels; a missing plane is zeros; a single-image case has its one image in both). When
HexaNet takes the gestational age, so does the whole-image baseline trained beside it
(beside its image embedding), so the comparison stays like for like.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from neurosono.classify.base import Classifier, seeded
from neurosono.classify.config import ClassifyTrainConfig, uses_ga
from neurosono.classify.gestation import CASE_INPUT, N_GA_SCALARS, ga_batch
from neurosono.classify.inputs import CaseInputs
from neurosono.classify.networks import WholeImageNet, count_parameters, stem_stride_of

SIZE = 128
FORMAT = "neurosono-whole-image-v2"  # v2: Mini-ResNet with a stride-2 stem
LEGACY_FORMAT = "neurosono-single-image-v1"  # single-image runs written before the kinds shared a format


def whole_images(item: CaseInputs) -> np.ndarray:
    planes = []
    for plane in ("tv", "tc"):
        image = item.images.get(plane)
        if image is None:
            planes.append(np.zeros((SIZE, SIZE), np.float32))
            continue
        small = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
        planes.append((small - small.mean()) / (small.std() + 1e-3))
    return np.stack(planes)


class WholeImageClassifier(Classifier):
    kind = "whole-image"
    title = "whole-image baseline"
    formats = (FORMAT, LEGACY_FORMAT)

    @classmethod
    def create(
        cls, config: ClassifyTrainConfig, regions: list[str], planes: dict[str, list[str]]
    ) -> Classifier:
        seeded(config.seed)
        model = WholeImageNet(stem_stride=2, n_case_scalars=N_GA_SCALARS if config.gestational_age else 0)
        meta = {"case_inputs": [CASE_INPUT] if config.gestational_age else [], "stem_stride": 2}
        return cls(model, 0.5, meta, config)

    def batches(
        self, items: list[CaseInputs], train: bool, rng: np.random.Generator, withhold_ga: bool = False
    ):
        images = np.stack([whole_images(i) for i in items])
        if train:
            flip = rng.random(len(items)) < 0.5
            images[flip] = images[flip, :, :, ::-1]
            images = images + rng.normal(0, 0.1, images.shape).astype(np.float32)
        inputs: tuple[torch.Tensor, ...] = (torch.from_numpy(np.ascontiguousarray(images)),)
        if self.uses_ga:
            inputs += (ga_batch(items, train, rng, self.config.ga_dropout, withhold_ga),)
        return inputs, torch.tensor([i.label for i in items], dtype=torch.float32)

    @classmethod
    def from_payload(cls, payload: dict) -> Classifier:
        meta = {k: v for k, v in payload.items() if k not in ("state_dict", "format")}
        # Files written before the stride-2 stem carry no stem_stride: their stems had stride 1
        # (the two-plane baseline's format tag is v2 only with the stride-2 stem).
        stride = int(meta.get("stem_stride", 2 if payload["format"] == FORMAT else 1))
        model = WholeImageNet(stem_stride=stride, n_case_scalars=N_GA_SCALARS if uses_ga(meta) else 0)
        model.load_state_dict(payload["state_dict"])
        config = ClassifyTrainConfig(gestational_age=uses_ga(meta))
        return cls(model.eval(), float(meta["threshold"]), meta, config)

    def card(self, record: dict) -> str:
        ds, auc = record["dataset"], record["val_metrics"]["auc"]
        inputs = (
            "both planes stacked as two channels"
            if not record.get("single_image")
            else ("the case's one image in both of its plane channels")
        )
        age = " and the case's gestational age" if uses_ga(record) else ""
        return f"""# Stage-2 classifier: whole-image Mini-ResNet

**For:** a normal/abnormal decision from whole images ({inputs}, {SIZE} px){age}; the
comparison the anatomy-aware models have to beat.

**Trained on:** {ds["name"]} ({ds["source"]}), {ds["n_train_cases"]} training and
{ds["n_val_cases"]} validation cases; dataset hash `{ds["sha256_train_val"][:16]}...`.
{count_parameters(self.model):,} parameters, stride-{stem_stride_of(self.model)} stem; best epoch
{record["best_epoch"]}; seed {record["config"]["seed"]}; {record["train_seconds"]:.0f} s.

**Threshold:** {record["threshold"]:.4f}, {record["threshold_rule"]}.

**Validation split:** AUC {auc["value"]:.3f} (95% CI {auc["ci95"][0]:.3f}-{auc["ci95"][1]:.3f},
{auc["method"]}). Early stopping and the threshold used this split.

**Limits:** a whole image also shows the machine, its annotations and the sector's shape: a
classifier can learn the image's source instead of the anatomy. Not for clinical use.
"""
