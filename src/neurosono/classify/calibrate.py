"""Choose a trained classifier's thresholds again through another stage 1, without retraining.

A HexaNet's operating threshold (its rule on validation scores) and its support threshold
(below which a case is ``indeterminate``) are chosen on validation cases through the
detector it was trained behind. When stage 1 changes (a new detector, a detector trained on
a team's own scans), both move: the crops, the confidences and so the scores are not what
they were. Calibration runs the classifier on a dataset's validation split through the
given detector and applies the same two rules again, writing a new run folder (the weights
unchanged, the input is never overwritten) whose record says on what, through which
detector and from which thresholds.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from neurosono.classify.base import WEIGHTS_NAME
from neurosono.classify.config import threshold_rule
from neurosono.classify.domain import domain_rule
from neurosono.classify.fit import labels_of
from neurosono.classify.inputs import gather_cases
from neurosono.classify.kinds import load_classifier
from neurosono.classify.regions import dataset_brain_planes
from neurosono.classify.train import RECORD_NAME, case_supports, checked_dataset, training_detector
from neurosono.core.atomic import atomic_write_text, staged_directory
from neurosono.core.checkpoints import file_sha256
from neurosono.core.metrics import choose_threshold, classification_metrics
from neurosono.core.provenance import package_versions
from neurosono.data.format import dataset_hash
from neurosono.detect.model import load_detector
from neurosono.models import DEFAULT_DETECTOR


def _run_folder(model: str | Path) -> Path:
    folder = Path(model)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / RECORD_NAME).is_file():
        raise ValueError(f"{folder}: not a HexaNet run folder (needs {WEIGHTS_NAME} and {RECORD_NAME})")
    return folder


def calibrate_classifier(
    model: str | Path,
    dataset_path: str | Path,
    out: str | Path,
    detector: str | Path | None = None,
    split: str = "val",
    target_sensitivity: float | None = None,
    progress: bool = True,
) -> dict:
    """Write ``out``: the run folder ``model`` with its two thresholds chosen again on the
    ``split`` cases of ``dataset_path`` through ``detector`` (default: the run's, else the
    shipped one).

    ``target_sensitivity``: the operating rule (None: the rule the run was trained with).
    Returns the calibration record (also under ``calibration`` in the new run's record)."""
    source = _run_folder(model)
    classifier = load_classifier(source)
    if not classifier.needs_detector:
        raise ValueError(
            f"{source}: a {classifier.kind} classifier reads no stage-1 regions; nothing to calibrate"
        )
    record = json.loads((source / RECORD_NAME).read_text())
    dataset = checked_dataset(dataset_path)
    cases = dataset.split(split)
    if {c.label for c in cases} != {"normal", "abnormal"}:
        raise ValueError(
            f"{dataset.root}: the {split} split needs normal and abnormal cases to choose a threshold"
        )
    detector_path = Path(detector) if detector else (training_detector(source) or Path(DEFAULT_DETECTOR))
    stage1 = load_detector(detector_path)
    stage1.check_regions(dataset.spec.regions, str(dataset.root / "dataset.yaml"))
    items = gather_cases(dataset, cases, stage1, None, progress=progress)
    if target_sensitivity is None:
        target_sensitivity = record.get("config", {}).get("target_sensitivity")
    classifier.config = replace(classifier.config, target_sensitivity=target_sensitivity)
    calibration = _choose(classifier, items, dataset, split, stage1.sha256, source)
    indeterminate = calibration.pop("indeterminate")
    classifier.threshold = calibration["threshold"]
    changed = {
        "threshold": calibration["threshold"],
        "threshold_rule": calibration["threshold_rule"],
        "indeterminate": indeterminate,
        "detector_sha256": stage1.sha256,
    }
    classifier.meta.update(
        changed, calibration={k: calibration[k] for k in ("dataset", "detector_sha256", "from")}
    )
    record.update(changed, detector=str(detector_path.resolve()), calibration=calibration)
    _write(source, out, classifier, record)
    return calibration


def _choose(classifier, items: list, dataset, split: str, detector_sha256: str, source: Path) -> dict:
    """Both thresholds by the training rules on ``items``, and the record of the choice."""
    scores = classifier.scores(items)
    labels = labels_of(items)
    threshold = choose_threshold(labels, scores, classifier.config.target_sensitivity)
    planes = dataset_brain_planes(dataset.spec)
    indeterminate = domain_rule(case_supports(items, classifier.regions, planes))
    groups = [i.case.group for i in items]
    return {
        "dataset": {
            "name": dataset.spec.name,
            "split": split,
            "n_cases": len(items),
            "n_groups": len(set(groups)),
            "sha256": dataset_hash(dataset, (split,)),
        },
        "detector_sha256": detector_sha256,
        "threshold_rule": threshold_rule(classifier.config),
        "from": {
            "classifier_sha256": file_sha256(source / WEIGHTS_NAME),
            "threshold": classifier.threshold,
            "min_support": (classifier.meta.get("indeterminate") or {}).get("min_support"),
            "detector_sha256": classifier.meta.get("detector_sha256"),
        },
        "threshold": threshold,
        "min_support": indeterminate["min_support"],
        "indeterminate": indeterminate,
        "metrics": classification_metrics(labels, scores, threshold, n_boot=1000, seed=0, groups=groups),
        "versions": package_versions(),
    }


def _write(source: Path, out: str | Path, classifier, record: dict) -> None:
    """The new run folder: everything of ``source`` but the weights file, record and card,
    which are written again."""
    with staged_directory(out) as folder:
        for item in source.iterdir():
            if item.name in (WEIGHTS_NAME, RECORD_NAME, "MODEL_CARD.md"):
                continue
            if item.is_dir():
                shutil.copytree(item, folder / item.name)
            elif item.is_file():
                shutil.copy2(item, folder / item.name)
        classifier.save(folder / WEIGHTS_NAME)
        atomic_write_text(folder / RECORD_NAME, json.dumps(record, indent=2))
        atomic_write_text(
            folder / "MODEL_CARD.md", classifier.card(record) + _card_note(record["calibration"])
        )


def _card_note(calibration: dict) -> str:
    data, before = calibration["dataset"], calibration["from"]
    return (
        f"\n**Calibrated** behind the detector `{calibration['detector_sha256'][:16]}...` on "
        f"{data['name']} (split {data['split']}, {data['n_cases']} cases): threshold "
        f"{before['threshold']:.4f} -> {calibration['threshold']:.4f}, support threshold "
        f"{before['min_support']} -> {calibration['min_support']}; the weights are those of "
        f"`{before['classifier_sha256'][:16]}...`. The validation figures above are training's.\n"
    )
