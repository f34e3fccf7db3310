"""The whole-image baseline: the study's core claim is that anatomy-aware beats this.

A Mini-ResNet reads both planes at once (TV and TC resized to ``SIZE`` and stacked
as two channels; a missing plane is zeros) and gives P(abnormal). It is trained by
the same loop as HexaNet (:func:`fit_binary`): same split, epochs, seed, loss
weighting, early stopping and validation-chosen threshold, and the same inputs: when
HexaNet takes the gestational age, so does the baseline (beside its image embedding).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from neurosono.checkpoints import save_payload
from neurosono.classify.gestation import CASE_INPUT, N_GA_SCALARS
from neurosono.classify.model import MiniResNet, count_parameters
from neurosono.classify.train import (
    CaseInputs,
    ClassifyTrainConfig,
    _scores,
    fit_binary,
    ga_batch,
    threshold_rule,
    uses_ga,
)
from neurosono.data.atomic import atomic_write_text, staged_directory
from neurosono.evaluate.metrics import choose_threshold, classification_metrics

SIZE = 128
FORMAT = "neurosono-whole-image-v2"  # v2: Mini-ResNet with a stride-2 stem


class WholeImageNet(nn.Module):
    def __init__(self, stem_stride: int = 2, n_case_scalars: int = 0) -> None:
        super().__init__()
        self.n_case_scalars = n_case_scalars
        self.backbone = MiniResNet(in_channels=2, stem_stride=stem_stride)
        self.head = nn.Linear(self.backbone.out_features + n_case_scalars, 1)

    def forward(self, images: torch.Tensor, case_scalars: torch.Tensor | None = None) -> torch.Tensor:
        features = self.backbone(images)
        if self.n_case_scalars:
            if case_scalars is None:  # unknown
                case_scalars = torch.zeros(images.shape[0], self.n_case_scalars)
            features = torch.cat([features, case_scalars], dim=1)
        return self.head(features).squeeze(1)


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


def batches_for(with_ga: bool, ga_dropout: float = 0.0):
    """``batches(items, train, rng)`` for :func:`fit_binary`: the images, and the GA when asked."""

    def batches(items: list[CaseInputs], train: bool, rng: np.random.Generator):
        images = np.stack([whole_images(i) for i in items])
        if train:
            flip = rng.random(len(items)) < 0.5
            images[flip] = images[flip, :, :, ::-1]
            images = images + rng.normal(0, 0.1, images.shape).astype(np.float32)
        inputs: tuple[torch.Tensor, ...] = (torch.from_numpy(np.ascontiguousarray(images)),)
        if with_ga:
            inputs += (ga_batch(items, train, rng, ga_dropout),)
        return inputs, torch.tensor([i.label for i in items], dtype=torch.float32)

    return batches


def _new_model(with_ga: bool) -> WholeImageNet:
    return WholeImageNet(n_case_scalars=N_GA_SCALARS if with_ga else 0)


def fit_baseline(
    train_items: list[CaseInputs],
    val_items: list[CaseInputs],
    config: ClassifyTrainConfig,
    progress: bool = False,
) -> tuple[WholeImageNet, float, dict, list[dict], np.ndarray]:
    model = _new_model(config.gestational_age)
    batches = batches_for(config.gestational_age, config.ga_dropout)
    best, history = fit_binary(
        model, train_items, val_items, batches, config, progress, "training whole-image baseline"
    )
    val_labels = np.array([i.label for i in val_items])
    val_scores = _scores(model, val_items, batches)
    return (
        model,
        choose_threshold(val_labels, val_scores, config.target_sensitivity),
        best,
        history,
        val_scores,
    )


def train_baseline(
    train_items: list[CaseInputs],
    val_items: list[CaseInputs],
    out: str | Path,
    config: ClassifyTrainConfig,
    progress: bool = True,
) -> Path:
    model, threshold, best, history, val_scores = fit_baseline(train_items, val_items, config, progress)
    val_labels = np.array([i.label for i in val_items])
    case_inputs = [CASE_INPUT] if config.gestational_age else []
    with staged_directory(out) as run:
        save_payload(
            run / "baseline.pt",
            {
                "format": FORMAT,
                "state_dict": model.state_dict(),
                "threshold": threshold,
                "case_inputs": case_inputs,
            },
        )
        record = {
            "kind": "neurosono whole-image baseline run",
            "config": asdict(config),
            "case_inputs": case_inputs,
            "threshold": threshold,
            "threshold_rule": threshold_rule(config),
            "parameters": count_parameters(model),
            "best_epoch": best["epoch"],
            "history": history,
            "val_metrics": classification_metrics(val_labels, val_scores, threshold, 1000, config.seed),
        }
        atomic_write_text(run / "baseline.json", json.dumps(record, indent=2))
    return Path(out)


def load_baseline(path: str | Path) -> tuple[WholeImageNet, float]:
    path = Path(path)
    payload = torch.load(
        path / "baseline.pt" if path.is_dir() else path, map_location="cpu", weights_only=True
    )
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a neurosono whole-image baseline file")
    model = _new_model(uses_ga(payload))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, float(payload["threshold"])


def baseline_scores(model: WholeImageNet, items: list[CaseInputs], withhold_ga: bool = False) -> np.ndarray:
    """P(abnormal) per case; a GA model gets each case's GA unless ``withhold_ga``."""
    return _scores(model, items, batches_for(model.n_case_scalars > 0 and not withhold_ga))
