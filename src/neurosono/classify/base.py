"""The interface every stage-2 classifier kind fills in: fit, score, save, load, card.

A kind (``hexanet``, ``whole-image``, ``head-crop``) is a small subclass that says how its
network is built, how a batch of cases becomes the network's input, and what its file and
model card hold; the training loop, the scoring loop, the run folder and cross-validation
are written once (``fit.py``, ``train.py``, ``crossval.py``) and serve every kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from neurosono.classify.config import ClassifyTrainConfig, threshold_rule, uses_ga
from neurosono.classify.fit import FitResult, fit_binary, predict_scores
from neurosono.classify.inputs import CaseInputs
from neurosono.core.checkpoints import save_payload

WEIGHTS_NAME = "classifier.pt"


class Classifier(ABC):
    """A stage-2 network with its operating threshold and the record of how its inputs are made."""

    kind: ClassVar[str]
    title: ClassVar[str]  # for tables and model cards
    formats: ClassVar[tuple[str, ...]]  # weights-file format tags it reads; the first is the one it writes
    needs_detector: ClassVar[bool] = False  # reads the six-region detector's regions
    needs_head_detector: ClassVar[bool] = False  # reads the head detector's box

    def __init__(self, model: nn.Module, threshold: float, meta: dict, config: ClassifyTrainConfig) -> None:
        self.model = model
        self.threshold = float(threshold)
        self.meta = meta  # what the weights file holds beside the weights
        self.config = config
        self.file: Path | None = None  # the weights file it was loaded from

    # ---- what a kind fills in -----------------------------------------------------------
    @classmethod
    @abstractmethod
    def create(
        cls, config: ClassifyTrainConfig, regions: list[str], planes: dict[str, list[str]]
    ) -> Classifier:
        """A new, untrained classifier (its weights drawn from ``config.seed``)."""

    @abstractmethod
    def batches(self, items: list[CaseInputs], train: bool, rng: np.random.Generator):
        """(network inputs, labels) for a batch; ``train`` adds the augmentation."""

    @classmethod
    @abstractmethod
    def from_payload(cls, payload: dict) -> Classifier:
        """A classifier from the payload of one of its ``formats``."""

    @abstractmethod
    def card(self, record: dict) -> str:
        """MODEL_CARD.md for a training run's record."""

    def prepare(self, train_items: list[CaseInputs]) -> None:  # noqa: B027 - optional hook
        """Learn from the training cases what the inputs need before training (default: nothing)."""

    # ---- shared -------------------------------------------------------------------------
    @property
    def uses_ga(self) -> bool:
        return uses_ga(self.meta)

    def fit(
        self, train_items: list[CaseInputs], val_items: list[CaseInputs], progress: bool = False
    ) -> FitResult:
        """Train on ``train_items``; early stopping and the threshold use ``val_items``."""
        self.prepare(train_items)
        result = fit_binary(
            self.model, train_items, val_items, self.batches, self.config, progress, f"training {self.kind}"
        )
        self.threshold = result.threshold
        self.meta.update(threshold=result.threshold, threshold_rule=threshold_rule(self.config))
        return result

    def scores(self, items: list[CaseInputs], withhold_ga: bool = False) -> np.ndarray:
        """P(abnormal) of each case; ``withhold_ga``: a gestational-age model decides as if no
        case's age were known (a kind that reads the age takes ``withhold_ga`` in its batches)."""
        batches = partial(self.batches, withhold_ga=True) if withhold_ga and self.uses_ga else self.batches
        return predict_scores(self.model, items, batches)

    def save(self, path, **extra) -> None:
        """The weights file: plain tensors and lists, loadable with ``weights_only=True``."""
        payload = {"format": self.formats[0], "state_dict": self.model.state_dict(), **self.meta, **extra}
        payload["threshold"] = self.threshold
        save_payload(path, payload)

    def eval(self) -> Classifier:
        self.model.eval()
        return self


def seeded(seed: int) -> None:
    """Seed torch before a network is built, so that its initial weights follow the run's seed."""
    torch.manual_seed(seed)
