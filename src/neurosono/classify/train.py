"""Train a stage-2 classifier of any kind into a run folder: the one writer of classifier runs.

The train split trains, the val split stops early and chooses the threshold; the test split
is never touched here. A run folder holds::

    RUN/
      classifier.pt     weights as plain tensors and lists (loadable with weights_only=True)
      classifier.json   kind, inputs, threshold, config, history, dataset hash, versions, validation metrics
      MODEL_CARD.md     trained on what, for what, limits
      baseline/         (HexaNet runs) the whole-image baseline trained on the same cases, budget and seed
      head_detector.pt  (head-crop runs) the head detector it reads, so the folder stands alone
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from neurosono.classify.base import WEIGHTS_NAME, Classifier
from neurosono.classify.config import ClassifyTrainConfig
from neurosono.classify.domain import domain_rule, stage1_support
from neurosono.classify.fit import FitResult, labels_of
from neurosono.classify.head_crop import HEAD_DETECTOR_NAME
from neurosono.classify.inputs import CaseInputs, gather_cases, is_single_image
from neurosono.classify.kinds import BASELINE_NAME, kind_class
from neurosono.classify.networks import count_parameters
from neurosono.classify.regions import brain_regions, dataset_brain_planes
from neurosono.core.atomic import atomic_write_text, staged_directory
from neurosono.core.checkpoints import file_sha256
from neurosono.core.distributed import distributed, shared_work
from neurosono.core.metrics import classification_metrics
from neurosono.core.provenance import package_versions
from neurosono.data.check import check_dataset
from neurosono.data.format import Dataset, dataset_hash
from neurosono.detect.model import Detector, load_detector
from neurosono.models import DEFAULT_DETECTOR, DEFAULT_HEXANET, REAL_HEAD_DETECTOR

RECORD_NAME = "classifier.json"


def load_detectors(
    kinds: list[type[Classifier]], detector: str | Path | None, head_detector: str | Path | None
) -> tuple[Detector | None, Detector | None]:
    """The detectors these kinds read (the shipped ones by default), loaded once."""
    regions = load_detector(detector or DEFAULT_DETECTOR) if any(k.needs_detector for k in kinds) else None
    heads = any(k.needs_head_detector for k in kinds)
    return regions, load_detector(head_detector or REAL_HEAD_DETECTOR) if heads else None


def fine_tuning(
    init: str | Path | None, cls: type[Classifier], config: ClassifyTrainConfig
) -> tuple[Classifier | None, ClassifyTrainConfig]:
    """The classifier to start from (None: from scratch) and the configuration with its crop
    fractions, so that its inputs mean what they meant."""
    if init is None:
        return None, config
    start = starting_classifier(init, cls, config)
    trained = start.config
    return start, replace(
        config, crop_fractions=trained.crop_fractions, age_crop_fractions=trained.age_crop_fractions
    )


def start_from(classifier: Classifier, start: Classifier) -> None:
    """Load ``start``'s weights into a new classifier of the same regions."""
    if getattr(start, "regions", None) not in (None, getattr(classifier, "regions", None)):
        raise ValueError(f"{start.file}: its regions are not the dataset's; cannot fine-tune from it")
    classifier.model.load_state_dict(start.model.state_dict())


def starting_classifier(init: str | Path, cls: type[Classifier], config: ClassifyTrainConfig) -> Classifier:
    """The trained classifier to fine-tune from; its kind and inputs must be the ones asked for."""
    from neurosono.classify.kinds import load_classifier

    if str(init) == "shipped" and cls.kind != "hexanet":
        raise ValueError(f"--init shipped: no shipped {cls.kind} model to fine-tune from; give a run folder")
    start = load_classifier(DEFAULT_HEXANET if str(init) == "shipped" else Path(init))
    if start.kind != cls.kind:
        raise ValueError(f"{start.file}: a {start.kind} model cannot start a {cls.kind} run")
    # What decides the network's shape and the meaning of its inputs.
    trained = {"gestational_age": start.config.gestational_age}
    if cls.kind == "hexanet":
        trained |= {
            "crop_scale": start.config.crop_scale,
            "head_size": start.config.head_size,
            "share_branches": bool(start.meta.get("share_branches")),
        }
    differ = {name: value for name, value in trained.items() if getattr(config, name) != value}
    if differ:
        settings = ", ".join(f"{name} {value!r}" for name, value in differ.items())
        raise ValueError(f"{start.file}: trained with {settings}; fine-tuning needs the same settings")
    return start


def checked_dataset(dataset_path: str | Path) -> Dataset:
    dataset = Dataset.load(dataset_path)
    report = check_dataset(dataset.root)
    if not report.ok:
        raise ValueError(
            f"{dataset.root}: {len(report.errors)} error(s); run 'neurosono data check {dataset.root}'"
        )
    return dataset


def train_classifier(
    dataset_path: str | Path,
    out: str | Path,
    kind: str = "hexanet",
    config: ClassifyTrainConfig | None = None,
    detector: str | Path | None = None,
    head_detector: str | Path | None = None,
    baseline: bool = True,
    progress: bool = True,
    init: str | Path | None = None,
) -> Path:
    """Train one classifier (and, for HexaNet with ``baseline``, the whole-image baseline beside it).

    ``init``: a trained run (or classifier file) of the same kind and inputs to fine-tune from,
    "shipped" for the shipped model of the kind; its crop fractions are kept, so its inputs
    mean what they meant, and a run's ``baseline/`` starts the baseline."""
    cls = kind_class(kind)
    config = config or ClassifyTrainConfig()
    place = distributed()  # under torchrun: every process trains, process 0 reports and writes
    progress = progress and place.main
    start, config = fine_tuning(init, cls, config)
    dataset = checked_dataset(dataset_path)
    regions_detector, heads = load_detectors([cls], detector, head_detector)
    place.share_threads()  # after ultralytics has set torch to every core
    train_items, val_items = _gather_splits(dataset, regions_detector, heads, progress)
    planes = dataset_brain_planes(dataset.spec)
    classifier = cls.create(config, brain_regions(dataset.spec.regions), planes)
    if start is not None:
        start_from(classifier, start)
    started = time.perf_counter()
    result = classifier.fit(train_items, val_items, progress)
    seconds = time.perf_counter() - started
    # Same cases, epochs, seed, age input and threshold rule: the study's anatomy-aware
    # against whole-image claim, like for like.
    with_baseline = baseline and cls.kind == "hexanet"
    baseline_start = _baseline_start(start) if with_baseline else None
    if not place.main:
        if with_baseline:  # its training steps are collective too
            train_baseline(None, dataset, train_items, val_items, classifier.config, False, baseline_start)
        return Path(out)
    if place.world_size > 1:
        classifier.meta["distributed"] = {**place.record(), "batch_per_process": place.share(config.batch)}
    if cls.kind == "hexanet" and regions_detector is not None:
        classifier.meta["indeterminate"] = domain_rule(case_supports(val_items, classifier.regions, planes))
    with staged_directory(out) as run:
        extra = {}
        if regions_detector is not None:
            extra["detector_sha256"] = regions_detector.sha256
        if start is not None:
            extra["initialised_from"] = {"file": start.file.name, "sha256": file_sha256(start.file)}
        if heads is not None:
            extra["head_detector_sha256"] = heads.sha256
            shutil.copy2(heads.path, run / HEAD_DETECTOR_NAME)
            if (Path(heads.path).parent / "detector.json").exists():
                shutil.copy2(Path(heads.path).parent / "detector.json", run / "head_detector.json")
        trained_with = {"detector": str(Path(regions_detector.path).resolve())} if regions_detector else {}
        write_run(
            run,
            WEIGHTS_NAME,
            classifier,
            result,
            dataset,
            train_items,
            val_items,
            seconds,
            extra,
            trained_with,
        )
        if with_baseline:
            train_baseline(
                run / "baseline", dataset, train_items, val_items, classifier.config, progress, baseline_start
            )
    return Path(out)


def _gather_splits(dataset: Dataset, regions_detector, heads, progress: bool) -> tuple[list, list]:
    """The train and val cases' inputs; under torchrun each process reads (and runs stage 1
    on) its share of the cases, and every process gets all of them."""
    train_cases, val_cases = dataset.split("train"), dataset.split("val")
    if not train_cases or not val_cases:
        raise ValueError(f"{dataset.root}: training needs cases in the train and val splits")

    def gather(cases: list, with_truth: bool = False) -> list[CaseInputs]:
        return gather_cases(dataset, cases, regions_detector, heads, with_truth=with_truth, progress=progress)

    return shared_work(train_cases, lambda c: gather(c, with_truth=True)), shared_work(val_cases, gather)


def _baseline_start(start: Classifier | None) -> Path | None:
    """The baseline beside the run fine-tuned from; a classifier file alone: none (afresh)."""
    folder = start.file.parent / "baseline" if start is not None else None
    return folder if folder is not None and folder.is_dir() else None


def train_baseline(
    out: Path | None,
    dataset: Dataset,
    train_items: list[CaseInputs],
    val_items: list[CaseInputs],
    config: ClassifyTrainConfig,
    progress: bool = False,
    init: Path | None = None,
) -> None:
    baseline = kind_class("whole-image").create(config, brain_regions(dataset.spec.regions), {})
    if init is not None:
        start_from(baseline, starting_classifier(init, kind_class("whole-image"), config))
    started = time.perf_counter()
    result = baseline.fit(train_items, val_items, progress)
    if out is None:  # a torchrun process other than the first: it trains, the first writes
        return
    with staged_directory(out) as folder:
        write_run(
            folder,
            BASELINE_NAME,
            baseline,
            result,
            dataset,
            train_items,
            val_items,
            time.perf_counter() - started,
            record_name="baseline.json",
        )


def write_run(
    folder: Path,
    weights_name: str,
    classifier: Classifier,
    result: FitResult,
    dataset: Dataset,
    train_items: list[CaseInputs],
    val_items: list[CaseInputs],
    seconds: float,
    extra: dict | None = None,
    record_extra: dict | None = None,
    record_name: str = RECORD_NAME,
) -> dict:
    """The weights (with ``extra``), the record (config, data hash, versions, validation metrics;
    with ``extra`` and ``record_extra``) and the model card."""
    extra = extra or {}
    classifier.save(folder / weights_name, **extra)
    val_labels = labels_of(val_items)
    record = {
        "kind": f"neurosono {classifier.kind} run",
        "classifier_kind": classifier.kind,
        **classifier.meta,
        **extra,
        **(record_extra or {}),
        "threshold": classifier.threshold,
        "config": asdict(classifier.config),
        "parameters": count_parameters(classifier.model),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "train_seconds": round(seconds, 1),
        "n_no_head": sum(i.head is None for i in train_items + val_items)
        if classifier.needs_head_detector
        else None,
        "single_image": is_single_image([i.case for i in train_items]),
        "dataset": {
            "name": dataset.spec.name,
            "source": dataset.spec.source,
            "licence": dataset.spec.licence,
            "sha256_train_val": dataset_hash(dataset, ("train", "val")),
            "n_train_cases": len(train_items),
            "n_val_cases": len(val_items),
            "n_train_groups": len({i.case.group for i in train_items}),
            "n_val_groups": len({i.case.group for i in val_items}),
        },
        "versions": package_versions(),
        "val_metrics": classification_metrics(
            val_labels,
            result.val_scores,
            classifier.threshold,
            n_boot=1000,
            seed=classifier.config.seed,
            groups=[i.case.group for i in val_items],
        ),
    }
    atomic_write_text(folder / record_name, json.dumps(record, indent=2))
    atomic_write_text(folder / "MODEL_CARD.md", classifier.card(record))
    return record


def case_supports(items: list[CaseInputs], regions: list[str], planes: dict[str, list[str]]) -> list[float]:
    """Each case's stage-1 support over the stage-2 planes it has (``classify/domain.py``)."""
    return [stage1_support(i.detections, regions, planes, i.images) for i in items]


def training_detector(run: str | Path) -> Path | None:
    """The detector a HexaNet run was trained with, if it is still where it was (None: the shipped one)."""
    record_file = Path(run) / RECORD_NAME if Path(run).is_dir() else Path(run).with_name(RECORD_NAME)
    if not record_file.exists():
        return None
    trained_with = json.loads(record_file.read_text()).get("detector")
    return Path(trained_with) if trained_with and Path(trained_with).exists() else None
