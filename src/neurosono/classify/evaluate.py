"""Evaluate HexaNet on a split: the study's metrics with CIs, breakdowns, plots, predictions."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from neurosono.classify.model import drop_one_region_attribution
from neurosono.classify.train import (
    CaseInputs,
    gather_cases,
    input_config,
    load_classifier,
    make_batch,
    uses_ga,
)
from neurosono.data.atomic import atomic_write_bytes, atomic_write_text
from neurosono.data.format import Dataset
from neurosono.detect.model import Detector
from neurosono.evaluate.metrics import classification_metrics, wilson_interval


@torch.no_grad()
def score_cases(
    model, meta: dict, items: list[CaseInputs], batch: int = 32, withhold_ga: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """P(abnormal) and drop-one-region attributions [N, R] for each case.

    ``withhold_ga``: a gestational-age model decides as if no case had a GA.
    """
    rng = np.random.default_rng(0)
    config = input_config(meta)
    scores, attributions = [], []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        inputs, _ = make_batch(chunk, meta["regions"], meta["planes"], False, rng, config, withhold_ga)
        scores.append(torch.sigmoid(model(*inputs)).numpy())
        attributions.append(drop_one_region_attribution(model, *inputs).numpy())
    return np.concatenate(scores), np.concatenate(attributions)


def ga_use(meta: dict, items: list[CaseInputs], withhold_ga: bool) -> str:
    """How the gestational age entered an evaluation, for its record."""
    if not uses_ga(meta):
        return "not an input of this model"
    if withhold_ga:
        return "withheld (the model decided without it)"
    known = sum(i.ga_weeks is not None for i in items)
    return f"given from cases.csv for {known} of {len(items)} cases"


def breakdown(items: list[CaseInputs], predicted: np.ndarray, key: str) -> dict:
    """Per centre or per finding: counts of correct decisions, with Wilson intervals."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[getattr(item.case, key) or "(none)"].append(index)
    out = {}
    for name, idx in sorted(groups.items()):
        labels = np.array([items[i].label for i in idx])
        correct = int((predicted[idx] == labels).sum())
        lo, hi = wilson_interval(correct, len(idx))
        out[name] = {
            "n": len(idx),
            "n_abnormal": int(labels.sum()),
            "correct": f"{correct} of {len(idx)}",
            "accuracy": round(correct / len(idx), 4),
            "ci95_wilson": [round(lo, 4), round(hi, 4)],
        }
    return out


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def write_plots(labels: np.ndarray, scores: np.ndarray, threshold: float, out_dir: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {roc_auc_score(labels, scores):.3f}")
    op_tpr = (scores[labels == 1] >= threshold).mean()
    op_fpr = (scores[labels == 0] >= threshold).mean()
    ax.plot([op_fpr], [op_tpr], "o", color="crimson", label=f"threshold {threshold:.2f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right")
    atomic_write_bytes(out_dir / "roc.png", _png(fig))
    plt.close(fig)
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=min(10, max(2, len(labels) // 5)))
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot(prob_pred, prob_true, "o-", label="HexaNet")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.set(xlabel="predicted P(abnormal)", ylabel="observed share abnormal", title="reliability")
    ax.legend(loc="upper left")
    atomic_write_bytes(out_dir / "reliability.png", _png(fig))
    plt.close(fig)


def evaluate_classifier(
    run: str | Path,
    dataset: Dataset,
    detector: Detector,
    split: str | None = "test",
    n_boot: int = 1000,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: bool = False,
    items: list[CaseInputs] | None = None,
    scored: tuple[np.ndarray, np.ndarray] | None = None,
    withhold_ga: bool = False,
) -> dict:
    """``items``: the split's cases already gathered with this detector (saves a second detector pass);
    ``scored``: their scores and attributions from :func:`score_cases`, if the caller has them;
    ``withhold_ga``: a gestational-age model is evaluated as if no GA were known."""
    model, meta = load_classifier(run)
    detector.check_regions(meta["regions"], str(run))
    detector.check_regions(dataset.spec.regions, str(dataset.root / "dataset.yaml"))
    cases = [c for c in dataset.cases if split is None or c.split == split]
    if not cases:
        raise ValueError(f"{dataset.root}: no cases in split {split!r}")
    if items is None:
        items = gather_cases(dataset, detector, cases, progress)
    labels = np.array([i.label for i in items])
    scores, attributions = (
        scored if scored is not None else score_cases(model, meta, items, withhold_ga=withhold_ga)
    )
    threshold = float(meta["threshold"])
    predicted = (scores >= threshold).astype(int)
    if 0 < labels.sum() < len(labels):
        metrics = classification_metrics(labels, scores, threshold, n_boot, seed)
    else:
        metrics = {"note": "this split holds one class only: AUC and paired metrics are undefined"}
    metrics.update(
        {
            "threshold": threshold,
            "threshold_rule": meta["threshold_rule"],
            "gestational_age": ga_use(meta, items, withhold_ga),
            "n_normal": int((labels == 0).sum()),
            "n_abnormal": int(labels.sum()),
            "split": split,
            "dataset": dataset.spec.name,
            "per_center": breakdown(items, predicted, "center"),
            "per_finding": breakdown(items, predicted, "finding"),
            "detector_sha256": detector.sha256,
            "detector_matches_training": detector.sha256 == meta.get("detector_sha256"),
        }
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(
            [
                "case_id",
                "label",
                "finding",
                "center",
                "p_abnormal",
                "predicted",
                *[f"attribution_{r}" for r in meta["regions"]],
            ]
        )
        for item, score, pred, attr in zip(items, scores, predicted, attributions, strict=True):
            writer.writerow(
                [
                    item.case.case_id,
                    item.case.label,
                    item.case.finding,
                    item.case.center,
                    f"{score:.4f}",
                    "abnormal" if pred else "normal",
                    *[f"{a:+.4f}" for a in attr],
                ]
            )
        atomic_write_text(out_dir / "predictions.csv", rows.getvalue())
        if 0 < labels.sum() < len(labels):
            write_plots(labels, scores, threshold, out_dir, f"HexaNet, {split or 'all'} split")
    return metrics
