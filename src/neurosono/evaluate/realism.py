"""The realism scoreboard: how far the phantom is from real scans, measured on real images.

The shipped phantom models are never trained on real labels; real labels only measure:

* ``head_map50``: the detector's ``fetal_head`` boxes against each real dataset's head boxes
  (fhead, HC18), where the detector has that region;
* ``stage1_plane_auc``: on real images whose plane is known (FETAL_PLANES_DB's own label on
  fbau's normal images), how well stage 1's TC evidence (its best cerebellum or cisterna magna
  confidence) tells TC from TV; ``regions_found``: per plane and region, the share of images
  where the region is found at the operating confidence (the regions a plane shows and those
  it does not), beside the same on phantom images;
* ``statistics_auc``: a logistic regression on simple image statistics (grey-level and
  gradient histograms, local variance) telling phantom from real images, and
  ``discriminator_auc``: a small CNN doing the same, both under group-aware 5-fold
  cross-validation over balanced counts;
* ``style_check_auc``: a logistic regression on global grey-level histograms telling normal
  from abnormal phantoms, which must stay low (the phantom's findings must not change its style).

Every metric is ``{"value", "ci95", "method"}``; CIs come from a cluster bootstrap over source
groups where groups hold several images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from neurosono.classify.domain import stage1_support
from neurosono.classify.inputs import DETECTION_CONF
from neurosono.classify.regions import split_head
from neurosono.core.images import read_grey
from neurosono.core.metrics import auc_with_ci, proportion_with_ci
from neurosono.core.progress import track
from neurosono.data.format import Dataset
from neurosono.detect.model import Detector, RegionMismatchError
from neurosono.detect.predict import OPERATING_CONF, as_detections, predict_images
from neurosono.models import HEAD_REGION

# FETAL_PLANES_DB's plane names (fbau's source_plane column) as neurosono's planes.
SOURCE_PLANES = {"Trans-ventricular": "tv", "Trans-cerebellum": "tc", "Trans-thalamic": "tt"}
TC_EVIDENCE = ("cerebellum", "cisterna_magna")
FOLDS = 5
STAT_SIDE = 256  # images are shrunk to this long side before their statistics are taken
CNN_SIDE = 128


@dataclass
class ImageRecord:
    """One image of the scoreboard: where it is, what it is, and the unit it belongs to."""

    path: Path
    dataset: str
    group: str
    real: bool
    plane: str | None = None  # tv, tc, tt where known
    abnormal: bool | None = None
    detections: list = field(default_factory=list)


def image_records(dataset: Dataset, real: bool) -> list[ImageRecord]:
    """Every image of a dataset, with its plane where the dataset knows it: a phantom's TV and
    TC slots, or a real image's source plane."""
    records = []
    for case in dataset.cases:
        for slot, rel in case.images():
            plane = SOURCE_PLANES.get(case.extra.get("source_plane", "")) if real else slot
            records.append(
                ImageRecord(
                    dataset.image_path(rel),
                    dataset.spec.name,
                    f"{dataset.spec.name}/{case.group}",
                    real,
                    plane,
                    case.label == "abnormal",
                )
            )
    return records


def balanced(real: list[ImageRecord], phantom: list[ImageRecord], most: int, seed: int) -> list[ImageRecord]:
    """Equal numbers of real and phantom images (at most ``most`` each), drawn with a seed; real
    images are drawn round-robin over source groups, so a source with many copies does not dominate."""
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[ImageRecord]] = {}
    for record in real:
        by_group.setdefault(record.group, []).append(record)
    pools = [list(rng.permutation(len(g))) for g in by_group.values()]
    groups = list(by_group.values())
    order = rng.permutation(len(groups))
    picked: list[ImageRecord] = []
    while len(picked) < min(most, len(real)):
        for g in order:
            if pools[g] and len(picked) < most:
                picked.append(groups[g][pools[g].pop()])
    n = min(len(picked), len(phantom))
    chosen_phantom = [phantom[i] for i in rng.permutation(len(phantom))[:n]]
    return picked[:n] + chosen_phantom


def image_statistics(grey: np.ndarray) -> np.ndarray:
    """Simple statistics of one grey image: grey-level histogram (32 bins), gradient-magnitude
    histogram (16 bins), and quantiles of the local variance (7x7)."""
    scale = STAT_SIDE / max(grey.shape)
    small = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA).astype(np.float32)
    grey_hist = np.histogram(small, bins=32, range=(0, 256))[0] / small.size
    gx, gy = cv2.Sobel(small, cv2.CV_32F, 1, 0), cv2.Sobel(small, cv2.CV_32F, 0, 1)
    gradient = np.hypot(gx, gy)
    gradient_hist = np.histogram(np.clip(gradient, 0, 399), bins=16, range=(0, 400))[0] / small.size
    mean = cv2.blur(small, (7, 7))
    variance = np.maximum(cv2.blur(small * small, (7, 7)) - mean * mean, 0)
    quantiles = np.log1p(np.percentile(variance, [10, 25, 50, 75, 90, 99]))
    return np.concatenate([grey_hist, gradient_hist, quantiles]).astype(np.float32)


def grey_histogram(grey: np.ndarray) -> np.ndarray:
    return (np.histogram(grey, bins=32, range=(0, 256))[0] / grey.size).astype(np.float32)


def _folds(labels: np.ndarray, groups: list[str], seed: int, folds: int = FOLDS) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    fold_of = np.zeros(len(labels), int)
    # Fewer folds where a class has fewer groups than folds (tiny samples).
    smallest = min(len({g for g, y in zip(groups, labels, strict=True) if y == c}) for c in (0, 1))
    folds = max(2, min(folds, smallest))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold_of[test] = k
    return fold_of


def logistic_auc(features: np.ndarray, labels: np.ndarray, groups: list[str], seed: int, n_boot: int) -> dict:
    """Group-aware 5-fold cross-validated AUC of a standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fold_of = _folds(labels, groups, seed)
    scores = np.zeros(len(labels))
    for k in range(fold_of.max() + 1):
        train, test = fold_of != k, fold_of == k
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(features[train], labels[train])
        scores[test] = model.predict_proba(features[test])[:, 1]
    return {**auc_with_ci(labels, scores, groups, n_boot, seed), "folds": int(fold_of.max() + 1)}


def cnn_auc(
    images: list[np.ndarray], labels: np.ndarray, groups: list[str], seed: int, n_boot: int, epochs: int
) -> dict:
    """Group-aware 5-fold cross-validated AUC of a small CNN (a Mini-ResNet) telling the classes apart."""
    import torch

    from neurosono.classify.networks import MiniResNet

    stack = np.stack(
        [_standardised(cv2.resize(im, (CNN_SIDE, CNN_SIDE), interpolation=cv2.INTER_AREA)) for im in images]
    )
    x = torch.from_numpy(stack[:, None])
    y = torch.from_numpy(labels.astype(np.float32))
    fold_of = _folds(labels, groups, seed)
    scores = np.zeros(len(labels))
    for k in range(fold_of.max() + 1):
        torch.manual_seed(seed + k)
        train = np.where(fold_of != k)[0]
        net = torch.nn.Sequential(MiniResNet(1), torch.nn.Linear(64, 1))
        optimiser = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        rng = np.random.default_rng(seed + k)
        for _ in range(epochs):
            net.train()
            order = rng.permutation(train)
            for start in range(0, len(order), 32):
                batch = order[start : start + 32]
                if len(batch) < 2:
                    continue  # batch norm needs two samples
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    net(x[batch]).squeeze(1), y[batch]
                )
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        net.eval()
        with torch.no_grad():
            scores[fold_of == k] = torch.sigmoid(net(x[fold_of == k]).squeeze(1)).numpy()
    return {
        **auc_with_ci(labels, scores, groups, n_boot, seed),
        "folds": int(fold_of.max() + 1),
        "epochs": epochs,
    }


def _standardised(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return (image - image.mean()) / (image.std() + 1e-3)


def detect_all(detector: Detector, records: list[ImageRecord], progress: bool) -> None:
    chunks = range(0, len(records), 64)
    for start in track(chunks, "detecting regions", total=len(chunks), enabled=progress):
        chunk = records[start : start + 64]
        for record, boxes in zip(chunk, predict_images(detector, [r.path for r in chunk]), strict=True):
            record.detections = as_detections(record.plane or "", boxes)


def best_confidence(record: ImageRecord, detector: Detector, regions: tuple[str, ...]) -> float:
    ids = {detector.regions.index(r) for r in regions if r in detector.regions}
    return max((d.confidence for d in record.detections if d.class_id in ids), default=0.0)


def regions_found(records: list[ImageRecord], detector: Detector, n_boot: int, seed: int) -> dict:
    """plane -> region -> share of the plane's images where the region is found (operating confidence)."""
    out: dict = {}
    for plane in sorted({r.plane for r in records if r.plane}):
        mine = [r for r in records if r.plane == plane]
        groups = [r.group for r in mine]
        out[plane] = {
            name: {
                **proportion_with_ci(
                    [best_confidence(r, detector, (name,)) >= OPERATING_CONF for r in mine],
                    groups,
                    n_boot,
                    seed,
                ),
                "n_images": len(mine),
            }
            for name in detector.regions
        }
    return out


def plane_auc(records: list[ImageRecord], detector: Detector, n_boot: int, seed: int) -> dict:
    """AUC with which the best cerebellum / cisterna magna confidence tells TC from TV images."""
    pair = [r for r in records if r.plane in ("tv", "tc")]
    labels = np.array([r.plane == "tc" for r in pair], int)
    evidence = [best_confidence(r, detector, TC_EVIDENCE) for r in pair]
    return {
        **auc_with_ci(labels, evidence, [r.group for r in pair], n_boot, seed),
        "n_tc": int(labels.sum()),
        "n_tv": int(len(labels) - labels.sum()),
    }


def head_scores(real_datasets: list[Dataset], detector: Detector, n_boot: int, seed: int) -> dict:
    """The detector's fetal_head boxes on every real dataset that has head boxes (mAP@0.5 with CI)."""
    from neurosono.detect.evaluate import evaluate_detector

    out = {}
    for dataset in real_datasets:
        if HEAD_REGION not in dataset.spec.regions:
            continue
        if HEAD_REGION not in detector.regions:
            out[dataset.spec.name] = {"value": None, "note": f"the detector has no {HEAD_REGION} region"}
            continue
        try:
            metrics = evaluate_detector(detector, dataset, split=None, n_boot=n_boot, seed=seed)
        except (RegionMismatchError, ValueError) as exc:
            out[dataset.spec.name] = {"value": None, "note": str(exc)}
            continue
        out[dataset.spec.name] = {
            **metrics["per_region"][HEAD_REGION]["map50"],
            "n_images": metrics["n_images"],
        }
    return out


def indeterminate_shares(
    records: list[ImageRecord], detector: Detector, stage2: dict | None, n_boot: int, seed: int
) -> dict | None:
    """Share of TV and TC images, each given alone in its plane, that the shipped pipeline would
    not answer (``classify/domain.py``); None for a stage 2 without the rule."""
    if not stage2 or not stage2.get("indeterminate"):
        return None
    regions, planes = stage2["regions"], stage2["planes"]
    mine = [r for r in records if r.plane in planes]
    flagged = []
    for record in mine:
        surely = [d for d in record.detections if d.confidence >= DETECTION_CONF]
        brain, _ = split_head(surely, detector.regions, regions)
        flagged.append(
            stage1_support(brain, regions, planes, [record.plane]) < stage2["indeterminate"]["min_support"]
        )
    return {
        "min_support": stage2["indeterminate"]["min_support"],
        **proportion_with_ci(flagged, [r.group for r in mine], n_boot, seed),
    }


def style_check(phantom: list[ImageRecord], seed: int, n_boot: int) -> dict:
    """Logistic regression on each phantom case's global grey-level histograms (TV and TC
    side by side) telling normal from abnormal: the findings must not change the style."""
    by_case: dict[str, dict[str, ImageRecord]] = {}
    for record in phantom:
        by_case.setdefault(record.group, {})[record.plane or "image"] = record
    cases = [c for c in by_case.values() if {"tv", "tc"} <= set(c)]
    if not cases:
        raise ValueError(
            f"{phantom[0].dataset if phantom else 'the phantom'}: no case with a TV and a TC image"
        )
    features = np.stack(
        [np.concatenate([grey_histogram(read_grey(c[p].path)) for p in ("tv", "tc")]) for c in cases]
    )
    labels = np.array([next(iter(c.values())).abnormal for c in cases], int)
    return logistic_auc(features, labels, [next(iter(c.values())).group for c in cases], seed, n_boot)


def realism_scoreboard(
    real_datasets: list[Dataset],
    phantom: Dataset,
    detector: Detector,
    n_boot: int = 1000,
    seed: int = 0,
    most: int = 320,
    epochs: int = 8,
    progress: bool = False,
    stage2: dict | None = None,
) -> dict:
    """The scoreboard's JSON (see the module docstring); ``stage2``: the HexaNet record whose
    ``indeterminate`` rule gives the share of images it would not answer."""
    if not real_datasets:
        raise ValueError("give at least one real dataset")
    real = [r for d in real_datasets for r in image_records(d, real=True)]
    fake = image_records(phantom, real=False)
    planes = [r for r in real if r.plane] + fake
    detect_all(detector, planes, progress)
    pool = balanced(real, fake, most, seed)
    labels = np.array([r.real for r in pool], int)
    groups = [r.group for r in pool]
    greys = [read_grey(r.path) for r in pool]
    return {
        "detector_sha256": detector.sha256,
        "real_datasets": [d.spec.name for d in real_datasets],
        "phantom_dataset": phantom.spec.name,
        "head_map50": head_scores(real_datasets, detector, n_boot, seed),
        "stage1_plane_auc": plane_auc([r for r in real if r.plane], detector, n_boot, seed),
        "phantom_plane_auc": plane_auc(fake, detector, n_boot, seed),
        "regions_found": regions_found([r for r in real if r.plane], detector, n_boot, seed),
        "phantom_regions_found": regions_found(fake, detector, n_boot, seed),
        "indeterminate_share": indeterminate_shares(
            [r for r in real if r.plane], detector, stage2, n_boot, seed
        ),
        "phantom_indeterminate_share": indeterminate_shares(fake, detector, stage2, n_boot, seed),
        "statistics_auc": logistic_auc(
            np.stack([image_statistics(g) for g in greys]), labels, groups, seed, n_boot
        ),
        "discriminator_auc": cnn_auc(greys, labels, groups, seed, n_boot, epochs),
        "style_check_auc": style_check(fake, seed, n_boot),
        "n_real_images": int(labels.sum()),
        "n_phantom_images": int(len(labels) - labels.sum()),
    }


def side_by_side(
    real_datasets: list[Dataset], phantom: Dataset, out: Path, per_plane: int = 3, tile: int = 220
) -> Path:
    """A sheet: for each plane, real images (top) and phantom images (bottom), each shown in the
    same square tile, so that framing, head size and texture compare at a glance."""
    from PIL import Image, ImageDraw

    from neurosono.core.atomic import atomic_write_bytes
    from neurosono.core.images import read_image

    real = [r for d in real_datasets for r in image_records(d, real=True) if r.plane]
    fake = image_records(phantom, real=False)
    planes = [p for p in ("tv", "tc", "tt") if any(r.plane == p for r in real + fake)]
    sheet = Image.new("RGB", (per_plane * len(planes) * (tile + 4), 2 * (tile + 20)), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    for column, plane in enumerate(planes):
        for row, pool in enumerate((real, fake)):
            chosen = [r for r in pool if r.plane == plane][:per_plane]
            for k, record in enumerate(chosen):
                image = Image.fromarray(read_image(record.path).rgb())
                image.thumbnail((tile, tile))
                x, y = (column * per_plane + k) * (tile + 4), row * (tile + 20) + 18
                sheet.paste(image, (x + (tile - image.width) // 2, y + (tile - image.height) // 2))
                label = f"{'real' if record.real else 'phantom'} {plane.upper()} ({record.dataset})"
                draw.text((x + 2, y - 16), label, fill=(230, 230, 230))
    import io

    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    return out
