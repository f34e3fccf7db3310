"""Evaluate a stage-2 classifier of any kind on a split: the study's metrics with CIs,
per-centre and per-finding breakdowns, predictions and plots."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from neurosono.classify.base import Classifier
from neurosono.classify.hexanet import HexaNetClassifier
from neurosono.classify.inputs import CaseInputs, gather_cases
from neurosono.classify.regions import check_stage2_regions
from neurosono.core.atomic import atomic_write_bytes, atomic_write_text
from neurosono.core.metrics import classification_metrics, wilson_interval
from neurosono.data.format import Dataset
from neurosono.detect.model import Detector


def split_cases(dataset: Dataset, split: str | None):
    """The cases of a split (None: every case); an empty split is an error naming it."""
    cases = [c for c in dataset.cases if split is None or c.split == split]
    if not cases:
        raise ValueError(f"{dataset.root}: no cases in split {split!r} (use split 'all' for every case)")
    return cases


def gather_for(
    classifier: Classifier,
    dataset: Dataset,
    cases,
    detector: Detector | None,
    progress: bool = False,
    with_truth: bool = False,
) -> list[CaseInputs]:
    """The cases' inputs as this classifier reads them (its detectors run once per image)."""
    if classifier.needs_detector and detector is None:
        raise ValueError("a HexaNet evaluation needs the six-region detector")
    if isinstance(classifier, HexaNetClassifier):
        check_stage2_regions(detector.regions, classifier.regions, str(classifier.file or "the classifier"))
    heads = getattr(classifier, "head_detector", None)
    return gather_cases(
        dataset, cases, detector if classifier.needs_detector else None, heads, with_truth, progress
    )


def score(classifier: Classifier, items: list[CaseInputs], withhold_ga: bool = False):
    """(P(abnormal) [N], attributions [N, R] or None): HexaNet explains itself region by region."""
    if isinstance(classifier, HexaNetClassifier):
        return classifier.scores_and_attributions(items, withhold_ga)
    return classifier.scores(items, withhold_ga), None


def ga_use(classifier: Classifier, items: list[CaseInputs], withhold_ga: bool) -> str:
    """How the gestational age entered an evaluation, for its record."""
    if not classifier.uses_ga:
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


def evaluate_classifier(
    classifier: Classifier,
    dataset: Dataset,
    split: str | None = "test",
    detector: Detector | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: bool = False,
    items: list[CaseInputs] | None = None,
    scored: tuple[np.ndarray, np.ndarray | None] | None = None,
    withhold_ga: bool = False,
) -> dict:
    """metrics.json content for one split (None: every case).

    ``items``: the split's cases already gathered for this classifier (saves a second detector
    pass); ``scored``: their :func:`score`, if the caller has it; ``withhold_ga``: a
    gestational-age model is evaluated as if no case's age were known.
    """
    if items is None:
        items = gather_for(classifier, dataset, split_cases(dataset, split), detector, progress)
    labels = np.array([i.label for i in items])
    scores, attributions = scored if scored is not None else score(classifier, items, withhold_ga)
    threshold = classifier.threshold
    predicted = (scores >= threshold).astype(int)
    if 0 < labels.sum() < len(labels):
        metrics = classification_metrics(
            labels, scores, threshold, n_boot, seed, [i.case.group for i in items]
        )
    else:
        metrics = {"note": "this split holds one class only: AUC and paired metrics are undefined"}
    metrics.update(
        {
            "classifier_kind": classifier.kind,
            "threshold": threshold,
            "threshold_rule": classifier.meta.get("threshold_rule", ""),
            "gestational_age": ga_use(classifier, items, withhold_ga),
            "n_normal": int((labels == 0).sum()),
            "n_abnormal": int(labels.sum()),
            "n_groups": len({i.case.group for i in items}),
            "split": split,
            "dataset": dataset.spec.name,
            "per_center": breakdown(items, predicted, "center"),
            "per_finding": breakdown(items, predicted, "finding"),
        }
    )
    if classifier.needs_detector and detector is not None:
        metrics["detector_sha256"] = detector.sha256
        metrics["detector_matches_training"] = detector.sha256 == classifier.meta.get("detector_sha256")
    if classifier.needs_head_detector:
        metrics["n_no_head"] = int(sum(i.head is None for i in items))
    metrics["predictions"] = [
        {"case_id": i.case.case_id, "label": int(i.label), "score": round(float(s), 6)}
        for i, s in zip(items, scores, strict=True)
    ]
    if out_dir is not None:
        write_evaluation(out_dir, metrics, items, scores, predicted, attributions, classifier)
    return metrics


def write_evaluation(
    out_dir, metrics, items, scores, predicted, attributions, classifier: Classifier
) -> None:
    """metrics.json, predictions.csv (with the attributions where there are) and the plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    regions = classifier.regions if isinstance(classifier, HexaNetClassifier) else []
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    header = ["case_id", "label", "finding", "center", "p_abnormal", "predicted"]
    writer.writerow(header + [f"attribution_{r}" for r in regions if attributions is not None])
    for k, item in enumerate(items):
        attribution = [f"{a:+.4f}" for a in attributions[k]] if attributions is not None else []
        writer.writerow(
            [
                item.case.case_id,
                item.case.label,
                item.case.finding,
                item.case.center,
                f"{scores[k]:.4f}",
                "abnormal" if predicted[k] else "normal",
                *attribution,
            ]
        )
    atomic_write_text(out_dir / "predictions.csv", rows.getvalue())
    labels = np.array([i.label for i in items])
    if 0 < labels.sum() < len(labels):
        write_plots(
            labels,
            scores,
            classifier.threshold,
            out_dir,
            f"{classifier.title}, {metrics['split'] or 'all'} split",
        )


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
    ax.plot(prob_pred, prob_true, "o-", label=title.split(",")[0])
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.set(xlabel="predicted P(abnormal)", ylabel="observed share abnormal", title="reliability")
    ax.legend(loc="upper left")
    atomic_write_bytes(out_dir / "reliability.png", _png(fig))
    plt.close(fig)


def evaluate_classifier_run(
    dataset: Dataset,
    model: str | Path | None = None,
    split: str | None = "test",
    detector: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    out_dir: Path | None = None,
    withhold_ga: bool = False,
    progress: bool = True,
) -> dict:
    """:func:`evaluate_classifier` with the models resolved: ``model`` a classifier run or file
    (default: the shipped one for the dataset: the real single-image classifier for a dataset
    of one image per case, else the phantom HexaNet); a HexaNet reads ``detector``, by default
    the one it was trained with, else the shipped one."""
    from neurosono.classify.inputs import is_single_image
    from neurosono.classify.kinds import load_classifier
    from neurosono.classify.train import training_detector
    from neurosono.detect.model import load_detector
    from neurosono.models import DEFAULT_DETECTOR, default_classifier

    cases = split_cases(dataset, split)
    classifier = load_classifier(model or default_classifier(is_single_image(cases)))
    det = None
    if classifier.needs_detector:
        det = load_detector(detector or (training_detector(model) if model else None) or DEFAULT_DETECTOR)
        det.check_regions(dataset.spec.regions, str(dataset.root / "dataset.yaml"))
    items = gather_for(classifier, dataset, cases, det, progress)
    return evaluate_classifier(
        classifier, dataset, split, det, n_boot, seed, out_dir, items=items, withhold_ga=withhold_ga
    )
