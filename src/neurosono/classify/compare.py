"""Compare stage-2 variants on a single-image real dataset, in one group-aware cross-validation.

Variants (all trained by :func:`fit_binary`, thresholds chosen on an inner
validation part, never on the held-out fold):

* ``baseline``: the whole-image baseline (one image in both plane channels);
* ``headcrop``: head detector -> head crop -> Mini-ResNet (:mod:`headcrop`);
* ``hexanet``: HexaNet fed by the six-region detector (phantom-trained) on the real
  image. A single image of unknown plane is given as both TV and TC, so that the
  plane slot it was imported into (known for normals only) cannot leak the label.

Folds come from :func:`neurosono.data.split.kfold` (stratified by label, source
groups intact: augmented copies of one source never straddle a fold), exactly as
``neurosono data split --scheme kfold`` writes them with the same seed and folds.
Inside each fold's remaining part, an 80/20 group-aware split gives training and
validation. Reported per variant: each fold's metrics, mean and sd over folds,
pooled out-of-fold metrics over images with bootstrap CIs, and the same pooled
over source groups (a group's score is the mean of its images' scores), since
images of one source are not independent. ``transfer`` measures how the
six-region detector behaves on the real images (regions found, confidences).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neurosono.classify.crossval import _fold_metrics, _summary
from neurosono.classify.headcrop import case_image, fit_single_image, gather_images, single_image_scores
from neurosono.classify.train import ClassifyTrainConfig, fit_hexanet, gather_cases, predict_scores
from neurosono.data.format import Dataset
from neurosono.data.split import holdout, kfold
from neurosono.detect.model import Detector
from neurosono.evaluate.metrics import classification_metrics
from neurosono.progress import track

VARIANTS = ("baseline", "headcrop", "hexanet")
OPERATING_CONF = 0.25


def fold_check(cases) -> dict:
    """Per fold: cases, groups and both classes present; groups never in two folds."""
    folds: dict[str, dict] = {}
    seen: dict[str, str] = {}
    for case in cases:
        if seen.setdefault(case.group, case.fold) != case.fold:
            raise ValueError(f"source group {case.group} is in folds {seen[case.group]} and {case.fold}")
        entry = folds.setdefault(case.fold, {"n": 0, "n_abnormal": 0, "groups": set()})
        entry["n"] += 1
        entry["n_abnormal"] += case.label == "abnormal"
        entry["groups"].add(case.group)
    out = {}
    for fold, entry in sorted(folds.items()):
        if entry["n_abnormal"] in (0, entry["n"]):
            raise ValueError(f"fold {fold} holds only one class")
        out[fold] = {"n": entry["n"], "n_abnormal": entry["n_abnormal"], "n_groups": len(entry["groups"])}
    return out


def transfer_summary(items, regions: list[str], conf: float = OPERATING_CONF) -> dict:
    """How the six-region detector fares on the images: per region, the share of images where it
    is found at ``conf`` and the median of its best confidence (0 when not found at all)."""
    out = {}
    for class_id, region in enumerate(regions):
        best = np.array(
            [
                max(
                    (d.confidence for d in i.detections if d.class_id == class_id and d.plane == "tv"),
                    default=0.0,
                )
                for i in items
            ]
        )
        by_label = {}
        for label, name in ((0, "normal"), (1, "abnormal")):
            sub = best[np.array([i.label == label for i in items])]
            by_label[name] = round(float((sub >= conf).mean()), 4) if len(sub) else None
        out[region] = {
            "found_fraction": round(float((best >= conf).mean()), 4),
            "found_fraction_by_label": by_label,
            "median_best_confidence": round(float(np.median(best)), 4),
            "p90_best_confidence": round(float(np.percentile(best, 90)), 4),
        }
    per_image = np.array(
        [
            sum(
                1
                for c in range(len(regions))
                if any(d.class_id == c and d.confidence >= conf and d.plane == "tv" for d in i.detections)
            )
            for i in items
        ]
    )
    return {
        "conf": conf,
        "n_images": len(items),
        "regions": out,
        "regions_found_per_image": {
            "mean": round(float(per_image.mean()), 3),
            "histogram": {str(k): int((per_image == k).sum()) for k in range(len(regions) + 1)},
        },
    }


def single_image_region_inputs(dataset: Dataset, cases, detector: Detector, progress: bool = False):
    """HexaNet inputs for single-image cases: the one image stands in both planes (see module doc)."""
    detector.check_regions(dataset.spec.regions, str(dataset.root / "dataset.yaml"))
    both = [dataclasses.replace(c, tv_image=case_image(c), tc_image=case_image(c)) for c in cases]
    return gather_cases(Dataset(dataset.root, dataset.spec, both), detector, both, progress)


def measure_transfer(dataset: Dataset, detector: Detector, progress: bool = False) -> dict:
    """:func:`transfer_summary` of the six-region detector over every case of a single-image dataset."""
    items = single_image_region_inputs(dataset, dataset.cases, detector, progress)
    return {**transfer_summary(items, dataset.spec.regions), "detector_sha256": detector.sha256}


def _pooled(rows: list[dict], n_boot: int, seed: int) -> tuple[dict, dict]:
    """Image-level and group-level pooled out-of-fold metrics."""
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    decisions = np.array([float(r["score"] >= r["threshold"]) for r in rows])
    image = classification_metrics(labels, decisions, 0.5, n_boot, seed)
    scored = classification_metrics(labels, scores, 0.5, n_boot, seed)
    image["auc"], image["brier"] = scored["auc"], scored["brier"]
    image["threshold"] = "each fold's own validation-chosen threshold"
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    g_labels = np.array([g[0]["label"] for g in groups.values()])
    g_scores = np.array([np.mean([r["score"] for r in g]) for g in groups.values()])
    g_decisions = np.array(
        [float(np.mean([r["score"] for r in g]) >= g[0]["threshold"]) for g in groups.values()]
    )
    group = classification_metrics(g_labels, g_decisions, 0.5, n_boot, seed)
    g_scored = classification_metrics(g_labels, g_scores, 0.5, n_boot, seed)
    group["auc"], group["brier"] = g_scored["auc"], g_scored["brier"]
    group["threshold"] = "each fold's own threshold on the group's mean score"
    group["unit"] = "source group (mean score of its images)"
    return image, group


def compare_variants(
    dataset: Dataset,
    config: ClassifyTrainConfig,
    folds: int = 5,
    head_detector: Detector | None = None,
    region_detector: Detector | None = None,
    variants: tuple[str, ...] = VARIANTS,
    n_boot: int = 1000,
    progress: bool = False,
) -> dict:
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS}")
    if "headcrop" in variants and head_detector is None:
        raise ValueError("the headcrop variant needs a head detector")
    if "hexanet" in variants and region_detector is None:
        raise ValueError("the hexanet variant needs the six-region detector")
    cases = kfold(dataset.cases, config.seed, folds)
    fold_table = fold_check(cases)
    result: dict = {
        "dataset": dataset.spec.name,
        "scheme": f"stratified group k-fold by source_group ({folds} folds, seed {config.seed})",
        "folds": fold_table,
        "n_cases": len(cases),
        "n_groups": len({c.group for c in cases}),
        "config": dataclasses.asdict(config),
    }
    images = gather_images(dataset, cases, head_detector if "headcrop" in variants else None, progress)
    by_id = {i.case.case_id: i for i in images}
    if "headcrop" in variants:
        confs = np.array([i.head_conf for i in images])
        result["head_detection"] = {
            "n_no_head": int(sum(i.head is None for i in images)),
            "median_confidence": round(float(np.median(confs)), 4),
            "fraction_at_0.25": round(float((confs >= OPERATING_CONF).mean()), 4),
            "detector_sha256": head_detector.sha256,
        }
    hex_by_id = {}
    if "hexanet" in variants:
        hex_items = single_image_region_inputs(dataset, cases, region_detector, progress)
        hex_by_id = {i.case.case_id: i for i in hex_items}
        result["transfer"] = transfer_summary(hex_items, dataset.spec.regions)
        result["transfer"]["detector_sha256"] = region_detector.sha256
    regions = dataset.spec.regions
    planes = {name: list(spec.regions) for name, spec in dataset.spec.planes.items()}

    rows: dict[str, list[dict]] = {v: [] for v in variants}
    per_fold: dict[str, list[dict]] = {v: [] for v in variants}
    fold_names = sorted(fold_table, key=lambda f: (len(f), f))
    for fold in track(fold_names, "folds", total=len(fold_names), enabled=progress):
        test_cases = [c for c in cases if c.fold == fold]
        rest = [c for c in cases if c.fold != fold]
        inner = {c.case_id: c.split for c in holdout(rest, seed=config.seed, fractions=(0.8, 0.2, 0.0))}
        train_ids = [c.case_id for c in rest if inner[c.case_id] == "train"]
        val_ids = [c.case_id for c in rest if inner[c.case_id] == "val"]
        test_ids = [c.case_id for c in test_cases]
        labels = np.array([by_id[i].label for i in test_ids])
        for variant in variants:
            if variant == "hexanet":
                pick = hex_by_id
                fitted = fit_hexanet(
                    [pick[i] for i in train_ids], [pick[i] for i in val_ids], regions, planes, config
                )
                scores = predict_scores(
                    fitted.model, [pick[i] for i in test_ids], regions, planes, fitted.config
                )
            else:
                kind = "head-crop" if variant == "headcrop" else "whole-image"
                fitted = fit_single_image(
                    kind, [by_id[i] for i in train_ids], [by_id[i] for i in val_ids], config
                )
                scores = single_image_scores(kind, fitted.model, [by_id[i] for i in test_ids])
            per_fold[variant].append(
                {
                    "fold": fold,
                    "n": len(test_ids),
                    "n_abnormal": int(labels.sum()),
                    "threshold": round(float(fitted.threshold), 4),
                    "best_epoch": fitted.best["epoch"],
                    **_fold_metrics(labels, scores, fitted.threshold),
                }
            )
            for case_id, label, score in zip(test_ids, labels, scores, strict=True):
                rows[variant].append(
                    {
                        "case_id": case_id,
                        "group": by_id[case_id].case.group,
                        "fold": fold,
                        "label": int(label),
                        "score": float(score),
                        "threshold": float(fitted.threshold),
                    }
                )
    for variant in variants:
        image, group = _pooled(rows[variant], n_boot, config.seed)
        result[variant] = {
            "per_fold": per_fold[variant],
            "mean_sd": _summary(per_fold[variant]),
            "pooled_out_of_fold": image,
            "pooled_by_group": group,
            "out_of_fold": rows[variant],
        }
    return result


__all__ = [
    "VARIANTS",
    "compare_variants",
    "fold_check",
    "measure_transfer",
    "single_image_region_inputs",
    "transfer_summary",
]
