"""Both stages on one split: detector mAP, HexaNet's metrics, and the whole-image baseline beside it.

The one two-stage evaluation: ``neurosono eval`` and the main job (``neurosono run``) call it.
The detector runs once per image and its regions serve HexaNet and the baseline alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neurosono.classify.hexanet import HexaNetClassifier
from neurosono.classify.kinds import BASELINE_NAME, load_classifier
from neurosono.classify.regions import select_regions
from neurosono.classify.train import case_supports, training_detector
from neurosono.core.atomic import atomic_write_text
from neurosono.core.metrics import classification_metrics, proportion_with_ci
from neurosono.data.format import Dataset
from neurosono.detect.evaluate import evaluate_detector
from neurosono.detect.model import load_detector
from neurosono.detect.predict import OPERATING_CONF, Detection
from neurosono.evaluate.classifier import (
    evaluate_classifier,
    gather_for,
    score,
    split_cases,
    write_evaluation,
)
from neurosono.models import DEFAULT_DETECTOR, DEFAULT_HEXANET


def load_hexanet(run: str | Path) -> HexaNetClassifier:
    classifier = load_classifier(run)
    if not isinstance(classifier, HexaNetClassifier):
        raise ValueError(f"{run}: a {classifier.kind} classifier, not a HexaNet run")
    return classifier


def evaluate_two_stage(
    dataset: Dataset,
    run: str | Path | None = None,
    split: str | None = "test",
    detector: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    withhold_ga: bool = False,
    out_dir: Path | None = None,
    progress: bool = False,
) -> dict:
    """``{"detector", "hexanet"[, "baseline"]}`` metrics for one split (None: every case).

    ``run``: a HexaNet run folder (default: the shipped one), its baseline in ``baseline/``;
    ``detector``: default the one the run was trained with, else the shipped one. With
    ``out_dir``, also writes metrics.json, predictions.csv, the plots and each case's details
    (cases.json, for the report).
    """
    run = Path(run) if run else DEFAULT_HEXANET
    hexanet = load_hexanet(run)
    det = load_detector(detector or training_detector(run) or DEFAULT_DETECTOR)
    cases = split_cases(dataset, split)
    items = gather_for(hexanet, dataset, cases, det, progress, with_truth=out_dir is not None)
    scores, attributions = score(hexanet, items, withhold_ga)
    result = {
        "detector": evaluate_detector(det, dataset, split, n_boot=n_boot, seed=seed),
        "hexanet": evaluate_classifier(
            hexanet,
            dataset,
            split,
            det,
            n_boot,
            seed,
            items=items,
            scored=(scores, attributions),
            withhold_ga=withhold_ga,
        ),
    }
    supports = case_supports(items, hexanet.regions, hexanet.planes)
    result["hexanet"]["indeterminate"] = indeterminate_share(
        supports, hexanet.meta.get("indeterminate"), [i.case.group for i in items], n_boot, seed
    )
    labels = np.array([i.label for i in items])
    baseline_scores = None
    if (run / "baseline" / BASELINE_NAME).exists() and 0 < labels.sum() < len(labels):
        baseline = load_classifier(run / "baseline")
        baseline_scores = baseline.scores(items, withhold_ga)
        result["baseline"] = classification_metrics(
            labels, baseline_scores, baseline.threshold, n_boot, seed, [i.case.group for i in items]
        )
    if out_dir is not None:
        predicted = (scores >= hexanet.threshold).astype(int)
        write_evaluation(out_dir, result["hexanet"], items, scores, predicted, attributions, hexanet)
        atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(result, indent=2))
        details = case_details(items, hexanet, scores, attributions, baseline_scores, supports)
        atomic_write_text(Path(out_dir) / "cases.json", json.dumps(details, indent=2))
    return result


def indeterminate_share(
    supports: list[float], rule: dict | None, groups: list[str], n_boot: int, seed: int
) -> dict | None:
    """Share of cases the model would not answer (``classify/domain.py``); None without a rule.

    The metrics beside it score every case: they are what the model gives when made to answer.
    """
    if rule is None:
        return None
    flagged = [s < rule["min_support"] for s in supports]
    return {"min_support": rule["min_support"], **proportion_with_ci(flagged, groups, n_boot, seed)}


def case_details(
    items, hexanet: HexaNetClassifier, scores, attributions, baseline_scores, supports=None
) -> dict:
    """Each case's scores, attributions, chosen regions, detections and truth (what the report draws)."""
    cases = []
    for index, item in enumerate(items):
        chosen = select_regions(item.detections, hexanet.regions, hexanet.planes)
        cases.append(
            {
                "case_id": item.case.case_id,
                "label": item.case.label,
                "finding": item.case.finding,
                "center": item.case.center,
                "images": dict(item.case.images()),
                "p_abnormal": float(scores[index]),
                "p_baseline": float(baseline_scores[index]) if baseline_scores is not None else None,
                "attribution": [float(a) for a in attributions[index]],
                "support": None if supports is None else round(supports[index], 4),
                "chosen": [
                    None if d is None else {"plane": d.plane, "confidence": d.confidence, "box": d.box}
                    for d in chosen
                ],
                "detections": top_detections(item.detections),
                "truth": [{"plane": d.plane, "class_id": d.class_id, "box": d.box} for d in item.truth],
            }
        )
    return {"regions": hexanet.regions, "threshold": hexanet.threshold, "cases": cases}


def top_detections(detections: list[Detection], min_confidence: float = OPERATING_CONF) -> list[dict]:
    """The surest detection of each region in each plane (what a reader wants drawn)."""
    best: dict = {}
    for d in detections:
        key = (d.plane, d.class_id)
        if d.confidence >= min_confidence and (key not in best or d.confidence > best[key].confidence):
            best[key] = d
    return [
        {"plane": d.plane, "class_id": d.class_id, "confidence": d.confidence, "box": d.box}
        for d in best.values()
    ]
