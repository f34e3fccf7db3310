"""One cross-validation engine for every classifier kind: k-fold or leave-one-centre-out.

The detectors run once per image. For each fold, the held-out part is the fold; the rest is
divided 80/20 (label-stratified, group-aware) into training and validation; a fresh model of
each kind is trained with the same configuration (scaled crops learn their fractions from that
fold's training cases), and its threshold is chosen on that validation part. The held-out
fold is never seen. Folds come from :func:`neurosono.data.split.kfold` (stratified by label,
source groups intact), exactly as ``neurosono data split --scheme kfold`` writes them with the
same seed and folds, or from the centres (``center``).

Reported per kind: each fold's metrics, their mean and standard deviation, pooled out-of-fold
metrics over cases with bootstrap CIs (each case decided at its own fold's threshold), and the
same pooled over source groups (a group's score is the mean of its cases' scores), since the
images of one source are not independent.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from neurosono.classify.config import ClassifyTrainConfig, head_size_of
from neurosono.classify.inputs import CaseInputs, gather_cases, is_single_image
from neurosono.classify.kinds import kind_class
from neurosono.classify.regions import brain_regions, dataset_brain_planes
from neurosono.classify.train import fine_tuning, load_detectors, start_from, training_detector
from neurosono.core.checkpoints import file_sha256
from neurosono.core.metrics import classification_metrics, point_metrics
from neurosono.core.progress import track
from neurosono.data.format import Case, Dataset
from neurosono.data.split import by_center, holdout, kfold
from neurosono.detect.evaluate import transfer_summary
from neurosono.detect.model import Detector
from neurosono.detect.predict import OPERATING_CONF

SCHEMES = ("kfold", "center")
KEYS = ("auc", "sensitivity", "specificity", "f1", "accuracy", "ppv", "npv")


def fold_table(cases: list[Case]) -> dict:
    """Per fold: cases, abnormal cases and source groups; a group must never be in two folds."""
    folds: dict[str, dict] = {}
    seen: dict[str, str] = {}
    for case in cases:
        if seen.setdefault(case.group, case.fold) != case.fold:
            raise ValueError(f"source group {case.group} is in folds {seen[case.group]} and {case.fold}")
        entry = folds.setdefault(case.fold, {"n": 0, "n_abnormal": 0, "groups": set()})
        entry["n"] += 1
        entry["n_abnormal"] += case.label == "abnormal"
        entry["groups"].add(case.group)
    order = sorted(folds, key=lambda f: (len(f), f))
    return {
        f: {"n": folds[f]["n"], "n_abnormal": folds[f]["n_abnormal"], "n_groups": len(folds[f]["groups"])}
        for f in order
    }


def fold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    values = point_metrics(labels, scores, threshold)
    return {k: (round(v, 4) if np.isfinite(v) else None) for k, v in values.items()}


def mean_sd(folds: list[dict]) -> dict:
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


def pooled(rows: list[dict], n_boot: int, seed: int) -> tuple[dict, dict]:
    """Case-level and group-level pooled out-of-fold metrics (decisions at each fold's threshold)."""

    def metrics(labels: list, scores: list, decisions: list, groups: list | None = None) -> dict:
        # Decisions carry each fold's own threshold: scored 1/0 at 0.5; the AUC and Brier use the scores.
        out = classification_metrics(np.array(labels), np.array(decisions, float), 0.5, n_boot, seed, groups)
        scored = classification_metrics(np.array(labels), np.array(scores), 0.5, n_boot, seed, groups)
        out["auc"], out["brier"] = scored["auc"], scored["brier"]
        return out

    cases = metrics(
        [r["label"] for r in rows],
        [r["score"] for r in rows],
        [r["score"] >= r["threshold"] for r in rows],
        [r["group"] for r in rows],
    )
    cases["threshold"] = "each fold's own validation-chosen threshold"
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    means = [float(np.mean([r["score"] for r in g])) for g in groups.values()]
    by_group = metrics(
        [g[0]["label"] for g in groups.values()],
        means,
        [m >= g[0]["threshold"] for m, g in zip(means, groups.values(), strict=True)],
    )
    by_group["threshold"] = "each fold's own threshold on the group's mean score"
    by_group["unit"] = "source group (mean score of its cases)"
    return cases, by_group


def _detection_summaries(items: list[CaseInputs], dataset: Dataset, detector, heads) -> dict:
    out = {}
    if heads is not None:
        confs = np.array([i.head_conf for i in items])
        out["head_detection"] = {
            "n_no_head": int(sum(i.head is None for i in items)),
            "median_confidence": round(float(np.median(confs)), 4),
            f"fraction_at_{OPERATING_CONF}": round(float((confs >= OPERATING_CONF).mean()), 4),
            "detector_sha256": heads.sha256,
        }
    if detector is not None and is_single_image([i.case for i in items]):
        # How the six-region (phantom) detector fares on these images (one plane slot: the image).
        found = [[d for d in i.detections if d.plane == "tv"] for i in items]
        out["transfer"] = {
            **transfer_summary(found, [i.label for i in items], brain_regions(dataset.spec.regions)),
            "detector_sha256": detector.sha256,
        }
    return out


def _run_fold(
    items: list[CaseInputs],
    fold: str,
    classes: list,
    config: ClassifyTrainConfig,
    regions: list[str],
    planes: dict,
    starts: dict | None = None,
) -> dict[str, tuple[dict, list[dict]]]:
    """Train each kind on the rest (80/20 train/validation) and score the held-out fold:
    per kind, its fold's metrics and its out-of-fold rows."""
    test = [i for i in items if i.case.fold == fold]
    rest = [i for i in items if i.case.fold != fold]
    inner = holdout([i.case for i in rest], seed=config.seed, fractions=(0.8, 0.2, 0.0))
    role = {c.case_id: c.split for c in inner}
    train = [i for i in rest if role[i.case.case_id] == "train"]
    val = [i for i in rest if role[i.case.case_id] == "val"]
    labels = np.array([i.label for i in test])
    out = {}
    for cls in classes:
        classifier = cls.create(config, regions, planes)
        if starts and cls.kind in starts:
            start_from(classifier, starts[cls.kind])
        try:
            fit = classifier.fit(train, val)
        except ValueError as exc:
            raise ValueError(f"fold {fold}: {exc}") from None
        scores = classifier.scores(test)
        summary = {
            "fold": fold,
            "n": len(test),
            "n_abnormal": int(labels.sum()),
            "threshold": round(float(fit.threshold), 4),
            "best_epoch": fit.best_epoch,
            **fold_metrics(labels, scores, fit.threshold),
        }
        fold_rows = [
            {
                "case_id": item.case.case_id,
                "group": item.case.group,
                "fold": fold,
                "label": int(item.label),
                "score": float(score),
                "threshold": float(fit.threshold),
            }
            for item, score in zip(test, scores, strict=True)
        ]
        out[cls.kind] = (summary, fold_rows)
    return out


def cross_validate(
    dataset: Dataset,
    kinds: list[str],
    config: ClassifyTrainConfig,
    scheme: str = "kfold",
    folds: int = 5,
    detector: Detector | None = None,
    head_detector: Detector | None = None,
    n_boot: int = 1000,
    progress: bool = False,
    init: str | Path | None = None,
) -> dict:
    """Every kind in ``kinds`` trained and tested on the same folds; see the module docstring.

    ``init``: a trained run (or "shipped") every fold fine-tunes from instead of starting
    afresh, with its crop fractions. It must never have seen the dataset's cases, or the
    held-out folds are not held out."""
    classes = [kind_class(k) for k in kinds]
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
    if any(c.needs_detector for c in classes) and detector is None:
        raise ValueError("the hexanet kind needs the six-region detector")
    if any(c.needs_head_detector for c in classes) and head_detector is None:
        raise ValueError("the head-crop kind needs a head detector")
    starts = {}
    if init is not None:
        for cls in classes:
            start, config = fine_tuning(init, cls, config)
            starts[cls.kind] = start
    else:
        # Scaled crops: each fold learns its crop fractions from its own training cases.
        config = dataclasses.replace(config, crop_fractions=None, age_crop_fractions=None)
    cases = kfold(dataset.cases, config.seed, folds) if scheme == "kfold" else by_center(dataset.cases)
    table = fold_table(cases)
    regions_detector = detector if any(c.needs_detector for c in classes) else None
    heads = head_detector if any(c.needs_head_detector for c in classes) else None
    items = gather_cases(dataset, cases, regions_detector, heads, with_truth=True, progress=progress)
    result: dict = {
        "dataset": dataset.spec.name,
        "scheme": scheme,
        "scheme_text": f"stratified group k-fold by source_group ({folds} folds, seed {config.seed})"
        if scheme == "kfold"
        else "leave one centre out",
        "folds": table,
        "n_cases": len(cases),
        "n_groups": len({c.group for c in cases}),
        "config": dataclasses.asdict(config),
        **_detection_summaries(items, dataset, regions_detector, heads),
    }
    if regions_detector is not None:  # the stage 1 every fold's crops came from
        result["detector_sha256"] = regions_detector.sha256
    if starts:
        result["initialised_from"] = {
            kind: {"file": start.file.name, "sha256": file_sha256(start.file)}
            for kind, start in starts.items()
        }
    planes = dataset_brain_planes(dataset.spec)
    rows: dict[str, list[dict]] = {c.kind: [] for c in classes}
    per_fold: dict[str, list[dict]] = {c.kind: [] for c in classes}
    for fold in track(list(table), f"{scheme} folds", total=len(table), enabled=progress):
        for kind, (summary, fold_rows) in _run_fold(
            items, fold, classes, config, brain_regions(dataset.spec.regions), planes, starts
        ).items():
            per_fold[kind].append(summary)
            rows[kind] += fold_rows
    for cls in classes:
        by_case, by_group = pooled(rows[cls.kind], n_boot, config.seed)
        result[cls.kind] = {
            "per_fold": per_fold[cls.kind],
            "mean_sd": mean_sd(per_fold[cls.kind]),
            "pooled_out_of_fold": by_case,
            "pooled_by_group": by_group,
            "out_of_fold": rows[cls.kind],
        }
    return result


def cross_validate_like(
    dataset: Dataset,
    kinds: list[str],
    scheme: str = "kfold",
    folds: int = 5,
    like: str | Path | None = None,
    budget: dict | None = None,
    batch: int = 16,
    detector: str | Path | None = None,
    head_detector: str | Path | None = None,
    n_boot: int = 1000,
    progress: bool = True,
    init: str | Path | None = None,
) -> dict:
    """:func:`cross_validate` with the models resolved: ``like`` a trained run whose
    configuration (and detector) the folds repeat; ``budget`` overrides (seed, epochs,
    patience); detectors default to the shipped ones; ``init`` as there."""
    config = ClassifyTrainConfig(batch=batch)
    if like is not None:
        record = json.loads(record_file(like).read_text())
        config = ClassifyTrainConfig(**{**record["config"], "head_size": head_size_of(record)})
        detector = detector or training_detector(like)
    config = dataclasses.replace(config, **(budget or {}))
    regions, heads = load_detectors([kind_class(k) for k in kinds], detector, head_detector)
    return cross_validate(dataset, kinds, config, scheme, folds, regions, heads, n_boot, progress, init)


def record_file(run: str | Path) -> Path:
    run = Path(run)
    record = run / "classifier.json" if run.is_dir() else run.with_name("classifier.json")
    if not record.is_file():
        raise ValueError(f"{run}: not a classifier run folder (no classifier.json)")
    return record
