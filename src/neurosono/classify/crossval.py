"""Cross-validation of HexaNet (and the whole-image baseline): k-fold or leave-one-centre-out.

The detector runs once per image. For each fold, the held-out part is the fold;
the rest is divided 80/20 (label-stratified, group-aware) into training and
validation, a fresh model is trained with the run's configuration, and its
threshold is chosen on that validation part. Reported: each fold's metrics,
their mean and standard deviation, and the pooled out-of-fold metrics with CIs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neurosono.classify.train import ClassifyTrainConfig, fit_hexanet, predict_scores
from neurosono.data.format import Dataset
from neurosono.data.split import by_center, holdout, kfold
from neurosono.detect.model import Detector
from neurosono.evaluate.metrics import classification_metrics, point_metrics
from neurosono.progress import track

KEYS = ("auc", "sensitivity", "specificity", "f1", "accuracy", "ppv", "npv")


def _fold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    values = point_metrics(labels, scores, threshold)
    return {k: (round(v, 4) if np.isfinite(v) else None) for k, v in values.items()}


def _summary(folds: list[dict]) -> dict:
    out = {}
    for key in KEYS:
        values = [f[key] for f in folds if f.get(key) is not None]
        if values:
            out[key] = {
                "mean": round(float(np.mean(values)), 4),
                "sd": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else 0.0,
                "n_folds": len(values),
            }
    return out


def cross_validate(
    dataset: Dataset,
    detector: Detector,
    scheme: str,
    config: ClassifyTrainConfig,
    folds: int = 3,
    with_baseline: bool = True,
    n_boot: int = 1000,
    progress: bool = False,
) -> dict:
    from neurosono.classify.baseline import baseline_scores, fit_baseline
    from neurosono.classify.train import gather_cases

    detector.check_regions(dataset.spec.regions, str(dataset.root / "dataset.yaml"))
    # Scaled crops: each fold learns its crop fractions from its own training cases, not
    # those of the run whose configuration it repeats (they saw the held-out fold).
    config = dataclasses.replace(config, crop_fractions=None, age_crop_fractions=None)
    cases = kfold(dataset.cases, config.seed, folds) if scheme == "kfold" else by_center(dataset.cases)
    items = gather_cases(dataset, detector, cases, progress, with_truth=True)
    regions = dataset.spec.regions
    planes = {name: list(spec.regions) for name, spec in dataset.spec.planes.items()}
    fold_names = sorted({c.fold for c in cases}, key=lambda f: (len(f), f))
    per_fold: dict[str, list[dict]] = {"hexanet": [], "baseline": []}
    pooled: dict[str, list] = {
        "labels": [],
        "hexanet": [],
        "hexanet_pred": [],
        "baseline": [],
        "baseline_pred": [],
    }
    for fold in track(fold_names, f"{scheme} folds", total=len(fold_names), enabled=progress):
        test = [i for i in items if i.case.fold == fold]
        rest = [i for i in items if i.case.fold != fold]
        inner = holdout([i.case for i in rest], seed=config.seed, fractions=(0.8, 0.2, 0.0))
        role = {c.case_id: c.split for c in inner}
        train = [i for i in rest if role[i.case.case_id] == "train"]
        val = [i for i in rest if role[i.case.case_id] == "val"]
        if len({i.label for i in val}) < 2 or len({i.label for i in train}) < 2:
            raise ValueError(f"fold {fold}: training or validation part lacks one class")
        labels = np.array([i.label for i in test])
        fitted = fit_hexanet(train, val, regions, planes, config)
        scores = predict_scores(fitted.model, test, regions, planes, fitted.config)
        entry = {
            "fold": fold,
            "n": len(test),
            "n_abnormal": int(labels.sum()),
            "threshold": round(fitted.threshold, 4),
        }
        per_fold["hexanet"].append({**entry, **_fold_metrics(labels, scores, fitted.threshold)})
        pooled["labels"].extend(labels.tolist())
        pooled["hexanet"].extend(scores.tolist())
        pooled["hexanet_pred"].extend((scores >= fitted.threshold).astype(int).tolist())
        if with_baseline:
            model, threshold, *_ = fit_baseline(train, val, config)
            b_scores = baseline_scores(model, test)
            per_fold["baseline"].append(
                {**entry, "threshold": round(threshold, 4), **_fold_metrics(labels, b_scores, threshold)}
            )
            pooled["baseline"].extend(b_scores.tolist())
            pooled["baseline_pred"].extend((b_scores >= threshold).astype(int).tolist())
    result: dict = {"scheme": scheme, "folds": fold_names, "config": dataclasses.asdict(config)}
    labels = np.array(pooled["labels"])
    for model_name in ("hexanet", "baseline") if with_baseline else ("hexanet",):
        scores = np.array(pooled[model_name])
        # Pooled out-of-fold decisions use each fold's own threshold: score 1/0 stands for them.
        decisions = np.array(pooled[f"{model_name}_pred"], dtype=float)
        pooled_metrics = classification_metrics(labels, decisions, 0.5, n_boot, config.seed)
        scored = classification_metrics(labels, scores, 0.5, n_boot, config.seed)
        pooled_metrics["auc"], pooled_metrics["brier"] = scored["auc"], scored["brier"]
        pooled_metrics["threshold"] = "each fold's own validation-chosen threshold"
        result[model_name] = {
            "per_fold": per_fold[model_name],
            "mean_sd": _summary(per_fold[model_name]),
            "pooled_out_of_fold": pooled_metrics,
        }
    return result
