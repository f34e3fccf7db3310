"""Evaluate the shipped real-image models on any dataset folder.

The models live in one folder (default: ``neurosono/models/real``):

* ``head_detector.pt``: one-region (``fetal_head``) YOLOv5 detector;
* ``classifier.pt``: the single-image normal/abnormal classifier
  (:mod:`neurosono.classify.kinds`).

:func:`evaluate_real` measures what the dataset can measure:

* ``detector``: mAP@0.5 (and the rest of :func:`evaluate_detector`) when the
  dataset's regions are ``[fetal_head]`` and it has box files;
* ``classifier``: AUC, sensitivity, specificity, F1, ... with CIs when the cases
  carry both labels. Each value is ``{"value", "ci95", "method"}``, as in every
  neurosono metrics.json.

``task="auto"`` evaluates the detector on datasets with head boxes and the
classifier on datasets without boxes (classification sets): head-box sets such
as HC18 carry no abnormality labels (HC18 imports as all normal), so their
labels are not a classification reference unless asked for with ``task="both"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurosono.data.format import Dataset
from neurosono.models import REAL_CLASSIFIER, REAL_DIR, REAL_HEAD_DETECTOR

HEAD_DETECTOR = REAL_HEAD_DETECTOR.name
CLASSIFIER = REAL_CLASSIFIER.name
TASKS = ("auto", "detection", "classification", "both")


def _has_boxes(dataset: Dataset, cases) -> bool:
    return any(dataset.label_path(rel).exists() for c in cases for _, rel in c.images())


def _cases(dataset: Dataset, split: str | None):
    cases = dataset.cases if split is None else dataset.split(split)
    if not cases:
        raise ValueError(f"{dataset.root}: no cases in split {split!r} (use split 'all' for every case)")
    return cases


def plan(dataset: Dataset, split: str | None, task: str) -> tuple[bool, bool]:
    """(evaluate detection, evaluate classification) for this dataset and task."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    cases = _cases(dataset, split)
    head_regions = dataset.spec.regions == ["fetal_head"]
    boxes = head_regions and _has_boxes(dataset, cases)
    labels = {c.label for c in cases}
    both_labels = labels >= {"normal", "abnormal"}
    if task == "detection":
        if not boxes:
            raise ValueError(f"{dataset.root}: no fetal_head boxes to evaluate a head detector on")
        return True, False
    if task == "classification":
        if not both_labels:
            raise ValueError(f"{dataset.root}: classification needs both normal and abnormal cases")
        return False, True
    if task == "both":
        return boxes, both_labels
    detection = boxes
    classification = both_labels and not _has_boxes(dataset, cases)
    if not (detection or classification):
        raise ValueError(
            f"{dataset.root}: nothing to evaluate (no fetal_head boxes, and no normal+abnormal "
            "classification cases without boxes); see --task"
        )
    return detection, classification


def evaluate_real(
    dataset: Dataset,
    model_dir: str | Path = REAL_DIR,
    split: str | None = None,
    task: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """What the dataset can measure of a real-image model folder (head detector, classifier)."""
    from neurosono.classify.kinds import load_classifier
    from neurosono.core.metrics import classification_metrics
    from neurosono.detect.evaluate import evaluate_detector
    from neurosono.detect.model import load_detector
    from neurosono.evaluate.classifier import gather_for, score

    model_dir = Path(model_dir)
    detection, classification = plan(dataset, split, task)
    result: dict = {"dataset": str(dataset.root), "split": split or "all", "models": str(model_dir)}
    if detection:
        detector = load_detector(model_dir / HEAD_DETECTOR)
        result["detector"] = evaluate_detector(detector, dataset, split, n_boot=n_boot, seed=seed)
    if classification:
        classifier = load_classifier(model_dir / CLASSIFIER)
        cases = [c for c in _cases(dataset, split) if c.label in ("normal", "abnormal")]
        items = gather_for(classifier, dataset, cases, None, progress)
        scores, _ = score(classifier, items)
        labels = np.array([i.label for i in items])
        metrics = classification_metrics(
            labels, scores, classifier.threshold, n_boot, seed, [i.case.group for i in items]
        )
        metrics["classifier_kind"] = classifier.kind
        metrics["n_groups"] = len({c.group for c in cases})
        if classifier.needs_head_detector:
            metrics["n_no_head"] = int(sum(i.head is None for i in items))
        metrics["predictions"] = [
            {"case_id": i.case.case_id, "label": int(i.label), "score": round(float(s), 6)}
            for i, s in zip(items, scores, strict=True)
        ]
        result["classifier"] = metrics
    return result


__all__ = ["REAL_DIR", "TASKS", "evaluate_real", "plan"]
