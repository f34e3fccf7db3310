"""Train HexaNet on the detector's own regions (so training matches inference).

Training crops come from the detector's predictions on the training cases; with
probability ``gt_box_fraction`` a case is instead cropped round its ground-truth
boxes with jitter, as extra augmentation. The loss is weighted for the class
imbalance; early stopping keeps the epoch with the best validation AUC; the
operating threshold is chosen on the validation split (Youden, or a target
sensitivity) and stored with the model. The test split is never touched here.

With ``gestational_age`` the model also reads each case's GA from cases.csv
(``classify/gestation.py``); training withholds it from a share of cases so that
the model still decides when a user does not give it.

With ``crop_scale="head"`` the region crops are head-scaled (``classify/regions.py``): the
crop fractions are learnt from the normal training cases, kept in the run's config and
stored with the model, and every later use of the model crops with them. ``"age"`` (with
``gestational_age``) also learns age-scaled fractions, used where a case's age is given.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from neurosono.checkpoints import load_payload, save_payload
from neurosono.classify.gestation import CASE_INPUT, N_GA_SCALARS, ga_scalars
from neurosono.classify.model import N_SCALARS, HexaNet, count_parameters
from neurosono.classify.regions import (
    CROP,
    N_SIZE_FOR_AGE,
    Detection,
    age_length_px,
    head_sizes,
    learn_crop_fractions,
    load_grey,
    region_inputs,
)
from neurosono.data.atomic import atomic_write_text, staged_directory
from neurosono.data.check import check_dataset
from neurosono.data.format import Case, Dataset, read_labels
from neurosono.detect.evaluate import predict_paths
from neurosono.detect.model import Detector, load_detector
from neurosono.evaluate.metrics import choose_threshold, classification_metrics
from neurosono.progress import note, track

# v2: six region scalars (head-relative sizes), stride-2 stems. The head size behind the relative
# sizes is stored as "head_size" ("span" or "skull"; absent in the first v2 files: "span").
FORMAT = "neurosono-hexanet-v2"
HEAD_SIZES = ("skull", "span")
HEAD_SIZE_TEXT = {
    "skull": "skull short axis (BPD-like, fitted per image; the regions' span where no skull is found)",
    "span": "span of the detected regions",
}
CROP_SCALES = ("box", "head", "age")


def head_size_of(meta: dict) -> str:
    """A model's head size; files written before "head_size" existed measured against the span."""
    return meta.get("head_size", "span")


def uses_ga(meta: dict) -> bool:
    """Whether a model (HexaNet or baseline record) takes the gestational age (absent: no)."""
    return CASE_INPUT in meta.get("case_inputs", [])


def new_hexanet(n_regions: int, share_branches: bool, with_ga: bool) -> HexaNet:
    """HexaNet with the inputs its configuration implies: six numbers per region, and for
    gestational-age models two more (the sizes for age) plus two case numbers (the age)."""
    return HexaNet(
        n_regions,
        share_branches=share_branches,
        n_scalars=N_SCALARS + (N_SIZE_FOR_AGE if with_ga else 0),
        n_case_scalars=N_GA_SCALARS if with_ga else 0,
    )


WEIGHTS_NAME = "classifier.pt"
DETECTION_CONF = 0.05  # low: a faint region is still evidence, its confidence goes in as a scalar


@dataclass(frozen=True)
class ClassifyTrainConfig:
    seed: int = 0
    epochs: int = 60
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 12
    share_branches: bool = False
    target_sensitivity: float | None = None
    gt_box_fraction: float = 0.5
    jitter: float = 0.08
    # What region sizes are relative to: the span of the detections, or the skull's short axis
    # (which did not beat the span on validation: see the README's HexaNet section).
    head_size: str = "span"
    # Gestational age from cases.csv as a case-level input, withheld from this share of
    # training cases so that the model also decides without it.
    gestational_age: bool = False
    ga_dropout: float = 0.3
    # Region crops cut round the detector's box ("box"), head-scaled ("head": the crop's side
    # a fixed fraction of the head size per region, so that a structure's size shows in it) or
    # age-scaled ("age", GA models: a fraction of the age in weeks as mm where it is given).
    crop_scale: str = "box"
    # The crops' fractions per region: learnt from the normal training cases when None; a
    # model's own are kept in its config.
    crop_fractions: tuple[float, ...] | None = None
    age_crop_fractions: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.crop_scale not in CROP_SCALES:
            raise ValueError(f"crop_scale must be one of {', '.join(CROP_SCALES)}, not {self.crop_scale!r}")
        if self.crop_scale == "age" and not self.gestational_age:
            raise ValueError("age-scaled crops need the gestational age as an input (--ga)")
        for name in ("crop_fractions", "age_crop_fractions"):
            value = getattr(self, name)
            if value is not None:
                # From a JSON record they arrive as a list.
                object.__setattr__(self, name, tuple(float(f) for f in value))

    def region_options(self) -> dict:
        """The keyword arguments of ``region_inputs`` this configuration decides (the age
        itself is the case's): one rule for training, evaluation and prediction."""
        return {
            "size_for_age": self.gestational_age,
            "crop_fractions": self.crop_fractions if self.crop_scale != "box" else None,
            "age_crop_fractions": self.age_crop_fractions if self.crop_scale == "age" else None,
        }

    def head_px(self, item: CaseInputs) -> dict[str, float | None]:
        """The skull sizes the regions are measured against ({}: the regions' span)."""
        return item.skull_px if self.head_size == "skull" else {}


def crop_fractions_of(meta: dict, key: str = "crop_fractions") -> tuple[float, ...] | None:
    """A model's head-scaled (``key="age_crop_fractions"``: age-scaled) crop fractions; None
    where it has none (box crops, and files written before)."""
    fractions = meta.get(key)
    return tuple(fractions) if fractions else None


def input_config(meta: dict) -> ClassifyTrainConfig:
    """The part of the configuration that decides how a trained model's inputs are made."""
    fractions, age_fractions = crop_fractions_of(meta), crop_fractions_of(meta, "age_crop_fractions")
    return ClassifyTrainConfig(
        head_size=head_size_of(meta),
        gestational_age=uses_ga(meta),
        crop_scale="age" if age_fractions else "head" if fractions else "box",
        crop_fractions=fractions,
        age_crop_fractions=age_fractions,
    )


@dataclass
class CaseInputs:
    """Everything HexaNet needs from one case, loaded once."""

    case: Case
    label: int
    images: dict[str, np.ndarray]
    spacing: dict[str, float | None]
    detections: list[Detection]
    truth: list[Detection] = field(default_factory=list)

    @property
    def ga_weeks(self) -> float | None:
        return self.case.ga_weeks

    @cached_property
    def skull_px(self) -> dict[str, float | None]:
        """Skull short axis per plane, fitted on first use (only skull models need it) and kept:
        the skull does not move when training jitters the region boxes."""
        return head_sizes(self.images, self.detections)


def gather_cases(
    dataset: Dataset, detector: Detector, cases: list[Case], progress: bool = False, with_truth: bool = False
) -> list[CaseInputs]:
    """Load images and run the detector once per image."""
    paths, owners = [], []
    for index, case in enumerate(cases):
        for plane, rel in case.images():
            paths.append(dataset.image_path(rel))
            owners.append((index, plane, rel))
    predictions = []
    batch = 16
    for start in track(
        range(0, len(paths), batch), "detecting regions", total=-(-len(paths) // batch), enabled=progress
    ):
        predictions.extend(predict_paths(detector, paths[start : start + batch], conf=DETECTION_CONF))
    inputs = [
        CaseInputs(c, int(c.label == "abnormal"), {}, {p: c.spacing_mm(p) for p in ("tv", "tc")}, [])
        for c in cases
    ]
    for (index, plane, rel), (classes, scores, boxes) in zip(owners, predictions, strict=True):
        item = inputs[index]
        item.images[plane] = load_grey(dataset.image_path(rel))
        item.detections += [
            Detection(plane, int(c), float(s), tuple(float(v) for v in b))
            for c, s, b in zip(classes, scores, boxes, strict=True)
        ]
        label_file = dataset.label_path(rel)
        if with_truth and label_file.exists():
            height, width = item.images[plane].shape
            item.truth += [
                Detection(plane, b.class_id, 1.0, b.to_xyxy(width, height)) for b in read_labels(label_file)
            ]
    return inputs


def given_ga(
    item: CaseInputs, train: bool, rng: np.random.Generator, dropout: float, withhold: bool = False
) -> float | None:
    """The case's gestational age as a GA model gets it: None when unknown, when ``withhold``,
    and in training for a share ``dropout`` of cases (as for a user who does not give it)."""
    ga = None if withhold else item.ga_weeks
    if train and ga is not None and rng.random() < dropout:
        return None
    return ga


def ga_batch(
    items: list[CaseInputs], train: bool, rng: np.random.Generator, dropout: float, withhold: bool = False
) -> torch.Tensor:
    """[B, 2] gestational-age scalars of :func:`given_ga` (the baseline's case input)."""
    ages = [given_ga(item, train, rng, dropout, withhold) for item in items]
    return torch.from_numpy(np.stack([ga_scalars(ga) for ga in ages]))


def make_batch(
    items: list[CaseInputs],
    regions: list[str],
    planes: dict[str, list[str]],
    train: bool,
    rng: np.random.Generator,
    config: ClassifyTrainConfig,
    withhold_ga: bool = False,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """HexaNet's inputs ``(crops, scalars[, case scalars])`` and the labels.

    With ``config.gestational_age`` each case's age goes in twice: as case scalars and as
    the regions' sizes for age; in training a share ``ga_dropout`` of cases have it withheld
    (both places), as for a user who does not give it; ``withhold_ga`` withholds every
    case's (to measure a GA model without it).
    """
    crops, scalars, ages = [], [], []
    for item in items:
        ga = given_ga(item, train, rng, config.ga_dropout, withhold_ga) if config.gestational_age else None
        ages.append(ga_scalars(ga))
        detections, jitter = item.detections, 0.0
        if train and item.truth and rng.random() < config.gt_box_fraction:
            # Ground-truth boxes with jitter, and a plausible confidence rather than 1.0.
            detections = [
                Detection(d.plane, d.class_id, float(rng.uniform(0.5, 1.0)), d.box) for d in item.truth
            ]
            jitter = config.jitter
        elif train:
            jitter = config.jitter / 2
        c, s, _ = region_inputs(
            item.images,
            detections,
            regions,
            planes,
            item.spacing,
            jitter,
            rng,
            config.head_px(item),
            ga_weeks=ga,
            **config.region_options(),
        )
        if train:
            flip = rng.random(len(regions)) < 0.5
            c[flip] = c[flip, :, ::-1]
            c = c + rng.normal(0, 0.1, c.shape).astype(np.float32)
        crops.append(c)
        scalars.append(s)
    inputs: tuple[torch.Tensor, ...] = (
        torch.from_numpy(np.stack(crops)[:, :, None].copy()),
        torch.from_numpy(np.stack(scalars)),
    )
    if config.gestational_age:
        inputs += (torch.from_numpy(np.stack(ages)),)
    return inputs, torch.tensor([i.label for i in items], dtype=torch.float32)


def predict_scores(
    model: HexaNet,
    items: list[CaseInputs],
    regions: list[str],
    planes: dict[str, list[str]],
    config: ClassifyTrainConfig,
    batch: int = 32,
) -> np.ndarray:
    def batches(chunk: list[CaseInputs], train: bool, rng: np.random.Generator):
        return make_batch(chunk, regions, planes, False, rng, config)

    return _scores(model, items, batches, batch)


def fit_binary(
    model: torch.nn.Module,
    train_items: list,
    val_items: list,
    batches,
    config: ClassifyTrainConfig,
    progress: bool,
    description: str,
) -> tuple[dict, list[dict]]:
    """Class-weighted BCE, AdamW with cosine decay, early stopping on validation AUC.

    ``batches(items, train, rng)`` returns ``(model inputs tuple, labels)``. The model is
    left holding the weights of its best validation epoch.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    train_labels = np.array([i.label for i in train_items])
    val_labels = np.array([i.label for i in val_items])
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    # About 2:1 normal:abnormal: weight the positives by the ratio so both count equally.
    pos_weight = torch.tensor(
        (train_labels == 0).sum() / max(1, (train_labels == 1).sum()), dtype=torch.float32
    )
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    best: dict = {"auc": -1.0, "epoch": -1, "state": None}
    history = []
    for epoch in track(range(config.epochs), description, total=config.epochs, enabled=progress):
        model.train()
        order = rng.permutation(len(train_items))
        losses = []
        for start in range(0, len(order), config.batch):
            chunk = [train_items[i] for i in order[start : start + config.batch]]
            if len(chunk) < 2:
                continue  # batch norm needs two samples
            inputs, labels = batches(chunk, True, rng)
            loss = loss_fn(model(*inputs), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        scheduler.step()
        val_scores = _scores(model, val_items, batches)
        auc = float(roc_auc_score(val_labels, val_scores))
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_auc": auc})
        note(
            f"{description}: epoch {epoch + 1}/{config.epochs} loss {np.mean(losses):.4f} "
            f"val AUC {auc:.4f} (best {max(auc, best['auc']):.4f})",
            progress,
        )
        if auc > best["auc"]:
            best = {
                "auc": auc,
                "epoch": epoch + 1,
                "state": {k: v.clone() for k, v in model.state_dict().items()},
            }
        elif epoch + 1 - best["epoch"] >= config.patience:
            break
    model.load_state_dict(best["state"])
    return best, history


@torch.no_grad()
def _scores(model: torch.nn.Module, items: list, batches, size: int = 32) -> np.ndarray:
    model.eval()
    rng = np.random.default_rng(0)
    out = [
        torch.sigmoid(model(*batches(items[s : s + size], False, rng)[0])).numpy()
        for s in range(0, len(items), size)
    ]
    return np.concatenate(out) if out else np.zeros(0)


@dataclass
class Fitted:
    model: torch.nn.Module
    threshold: float
    best: dict
    history: list[dict]
    val_scores: np.ndarray
    config: ClassifyTrainConfig  # as trained: with the crop fractions where they were learnt


def threshold_rule(config: ClassifyTrainConfig) -> str:
    # The threshold lies halfway between the rule's cut and the next lower validation score
    # (evaluate/metrics.py choose_threshold); files from before say only the rule.
    if config.target_sensitivity is None:
        return "Youden's J on the validation split, halfway to the next lower score"
    return (
        f"highest cut reaching sensitivity {config.target_sensitivity} on validation, "
        "halfway to the next lower score"
    )


def learnt_crop_fractions(
    train_items: list[CaseInputs],
    regions: list[str],
    planes: dict[str, list[str]],
    config: ClassifyTrainConfig,
) -> dict[str, tuple[float, ...]]:
    """Head-scaled (and for ``crop_scale="age"`` age-scaled) crop fractions from the normal
    training cases."""
    normal = [i for i in train_items if i.label == 0]
    learnt = {
        "crop_fractions": learn_crop_fractions(
            [(i.images, i.detections, config.head_px(i)) for i in normal], regions, planes
        )
    }
    if config.crop_scale == "age":
        dated = [
            (i.images, i.detections, {p: age_length_px(i.ga_weeks, i.spacing[p]) for p in i.images})
            for i in normal
            if i.ga_weeks and all(i.spacing.get(p) for p in i.images)
        ]
        if not dated:
            raise ValueError("age-scaled crops need normal training cases with ga_weeks and pixel spacing")
        learnt["age_crop_fractions"] = learn_crop_fractions(dated, regions, planes)
    return learnt


def fit_hexanet(
    train_items: list[CaseInputs],
    val_items: list[CaseInputs],
    regions: list[str],
    planes: dict[str, list[str]],
    config: ClassifyTrainConfig,
    progress: bool = False,
) -> Fitted:
    """Train HexaNet and choose its threshold on the validation items."""
    model = new_hexanet(len(regions), config.share_branches, config.gestational_age)
    unlearnt = config.crop_fractions is None or (
        config.crop_scale == "age" and config.age_crop_fractions is None
    )
    if config.crop_scale != "box" and unlearnt:
        config = replace(config, **learnt_crop_fractions(train_items, regions, planes, config))

    def batches(items: list[CaseInputs], train: bool, rng: np.random.Generator):
        return make_batch(items, regions, planes, train, rng, config)

    best, history = fit_binary(model, train_items, val_items, batches, config, progress, "training HexaNet")
    val_scores = predict_scores(model, val_items, regions, planes, config)
    val_labels = np.array([i.label for i in val_items])
    threshold = choose_threshold(val_labels, val_scores, config.target_sensitivity)
    return Fitted(model, threshold, best, history, val_scores, config)


def save_classifier(path: Path, model: HexaNet, meta: dict) -> None:
    save_payload(path, {"format": FORMAT, "state_dict": model.state_dict(), **meta})


def train_classifier(
    dataset_path: str | Path,
    detector_path: str | Path,
    out: str | Path,
    config: ClassifyTrainConfig = ClassifyTrainConfig(),
    progress: bool = True,
    baseline: bool = True,
) -> Path:
    dataset = Dataset.load(dataset_path)
    report = check_dataset(dataset.root)
    if not report.ok:
        raise ValueError(f"{dataset.root}: {len(report.errors)} error(s); run 'neurosono data check'")
    detector = load_detector(detector_path)
    detector.check_regions(dataset.spec.regions, str(dataset.root / "dataset.yaml"))
    regions = dataset.spec.regions
    planes = {name: list(spec.regions) for name, spec in dataset.spec.planes.items()}
    train_items = gather_cases(dataset, detector, dataset.split("train"), progress, with_truth=True)
    val_items = gather_cases(dataset, detector, dataset.split("val"), progress)
    train_labels = np.array([i.label for i in train_items])
    val_labels = np.array([i.label for i in val_items])
    for name, labels in (("train", train_labels), ("val", val_labels)):
        if labels.min(initial=1) == labels.max(initial=0):
            raise ValueError(f"{dataset.root}: the {name} split needs both normal and abnormal cases")
    train_ga = [i.ga_weeks for i in train_items if i.ga_weeks is not None]
    if config.gestational_age and not train_ga:
        raise ValueError(
            f"{dataset.root / 'cases.csv'}: no training case has a ga_weeks value; "
            "fill the column or train without the gestational age"
        )

    started = time.perf_counter()
    fitted = fit_hexanet(train_items, val_items, regions, planes, config, progress)
    model, threshold, best, history = fitted.model, fitted.threshold, fitted.best, fitted.history
    config = fitted.config
    val_metrics = classification_metrics(
        val_labels, fitted.val_scores, threshold, n_boot=1000, seed=config.seed
    )

    from neurosono.detect.train import dataset_hash, package_versions

    with staged_directory(out) as run:
        meta = {
            "regions": regions,
            "planes": planes,
            "share_branches": config.share_branches,
            "head_size": config.head_size,
            "crop_fractions": list(config.crop_fractions) if config.crop_scale != "box" else None,
            "age_crop_fractions": list(config.age_crop_fractions) if config.crop_scale == "age" else None,
            "case_inputs": [CASE_INPUT] if config.gestational_age else [],
            # The ages it learnt from: predict warns outside them.
            "ga_weeks_range": [round(min(train_ga), 2), round(max(train_ga), 2)]
            if config.gestational_age
            else None,
            "threshold": threshold,
            "threshold_rule": threshold_rule(config),
            "detector_sha256": detector.sha256,
        }
        save_classifier(run / WEIGHTS_NAME, model, meta)
        record = {
            "kind": "neurosono HexaNet run",
            **meta,
            "config": asdict(config),
            "detector": str(Path(detector.path).resolve()) if detector.path else None,
            "parameters": count_parameters(model),
            "best_epoch": best["epoch"],
            "history": history,
            "train_seconds": round(time.perf_counter() - started, 1),
            "dataset": {
                "name": dataset.spec.name,
                "source": dataset.spec.source,
                "sha256_train_val": dataset_hash(dataset, ("train", "val")),
                "n_train_cases": len(train_items),
                "n_val_cases": len(val_items),
            },
            "versions": package_versions(),
            "val_metrics": val_metrics,
        }
        atomic_write_text(run / "classifier.json", json.dumps(record, indent=2))
        atomic_write_text(run / "MODEL_CARD.md", model_card(record))
        if baseline:
            from neurosono.classify.baseline import train_baseline

            # Same split, epochs, seed and threshold rule: the study's anatomy-aware vs whole-image claim.
            train_baseline(train_items, val_items, run / "baseline", config, progress)
    return Path(out)


def model_card(record: dict) -> str:
    ds, val = record["dataset"], record["val_metrics"]
    synthetic = "phantom" in (ds["source"] + ds["name"]).lower()
    auc = val["auc"]
    return f"""# Stage-2 classifier: HexaNet, {len(record["regions"])} regions

**For:** a normal/abnormal decision from the regions found by the stage-1 detector
(detector SHA-256 `{record["detector_sha256"][:16]}...`) on a TV and a TC image.

**Trained on:** {ds["name"]} ({ds["source"]}), {ds["n_train_cases"]} training and
{ds["n_val_cases"]} validation cases; dataset hash `{ds["sha256_train_val"][:16]}...`.
{record["parameters"]:,} parameters; best epoch {record["best_epoch"]}; seed {record["config"]["seed"]};
{record["train_seconds"]:.0f} s.

**Threshold:** {record["threshold"]:.4f}, {record["threshold_rule"]}.

**Inputs:** per region a {CROP}x{CROP} crop{_crop_text(record)} and six numbers (eight with the
age); region sizes relative to the head's {HEAD_SIZE_TEXT[head_size_of(record)]}.{_ga_text(record)}

**Validation split:** AUC {auc["value"]:.3f}
(95% CI {auc["ci95"][0]:.3f}-{auc["ci95"][1]:.3f}, {auc["method"]}).
Early stopping and the threshold used this split: see a held-out test evaluation for honest figures.

**Limits:** {"Trained on synthetic phantoms only; it says nothing about real scans." if synthetic else ""}
Not for clinical use.
"""


def _crop_text(record: dict) -> str:
    def listed(fractions: tuple[float, ...]) -> str:
        return ", ".join(f"{name} {f:.2f}" for name, f in zip(record["regions"], fractions, strict=True))

    head, age = crop_fractions_of(record), crop_fractions_of(record, "age_crop_fractions")
    if not head:
        return " (round the detector's box, plus margin)"
    head_text = f"head-scaled: side a fixed fraction of the head size, {listed(head)}"
    if not age:
        return f" ({head_text})"
    return (
        " (age-scaled where the age and pixel spacing are known: side a fixed fraction of the "
        f"age in weeks as mm, {listed(age)}; {head_text} otherwise)"
    )


def _ga_text(record: dict) -> str:
    if not uses_ga(record):
        return " No gestational age."
    span = record.get("ga_weeks_range")
    trained = f" (training cases {span[0]:g}-{span[1]:g} weeks)" if span else ""
    return (
        f" And the case's gestational age{trained}, as two numbers and as each region's size in mm "
        f"per week of age; optional: withheld from "
        f"{record['config']['ga_dropout']:.0%} of training cases so that it also decides without it."
    )


def load_classifier(path: str | Path) -> tuple[HexaNet, dict]:
    _, payload = load_payload(path, WEIGHTS_NAME, FORMAT, "HexaNet")
    model = new_hexanet(len(payload["regions"]), payload["share_branches"], uses_ga(payload))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, {k: v for k, v in payload.items() if k != "state_dict"}
