"""Training the head model on datasets that know their heads (HC18 masks, phantom geometry).

Each dataset's ``train`` split trains, its ``val`` split picks the epoch: the one with the
lowest HC mean absolute error on val, measured by the whole measurement path (maps back
at the image's size, ellipse fit, mm). Splits follow the dataset's source groups (HC18's
``NNN_HC``, ``NNN_2HC``... are one subject), so val never shares a head with train.
The brain map learns only from images whose inner skull border is known (phantoms).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from neurosono.core.atomic import atomic_write_text, staged_directory
from neurosono.core.progress import note, track
from neurosono.core.provenance import package_versions
from neurosono.data.format import HEAD_MASK_COLUMN, Dataset
from neurosono.measure.ellipse import fit_mask_ellipse
from neurosono.measure.head import measure_image
from neurosono.measure.headnet import (
    INPUT_SIZE,
    WIDTHS,
    Frame,
    HeadUNet,
    load_head_model,
    save_head_model,
    standardise,
)
from neurosono.measure.truth import HeadTruth, has_head_truth, head_truth

RECORD_NAME = "head.json"
WEIGHTS_NAME = "head.pt"
ZOOM_MARGIN = (1.1, 1.6)  # the default range of a training frame's margin, times the head's box


@dataclass
class HeadTrainConfig:
    epochs: int = 60
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 15
    seed: int = 0
    bf16: bool | None = None  # None: where the CPU computes bf16 natively
    max_per_dataset: int | None = None  # cap each dataset's train images (None: all)
    max_val_per_dataset: int | None = 100  # validation images per dataset each epoch
    init_from: str | None = None  # a head model (file or run) to start from instead of random weights
    input_size: tuple[int, int] = INPUT_SIZE  # (width, height) the network sees a framed image at
    widths: tuple[int, ...] = WIDTHS  # the U-Net's channels at each of its levels
    # Frames round the head kept per training image (each a random margin and shift), beside
    # the whole image; an epoch draws one of the image's views.
    zoom_views: int = 1
    zoom_margin: tuple[float, float] = ZOOM_MARGIN  # the frames' margins


@dataclass
class Sample:
    views: list[tuple[np.ndarray, np.ndarray]]  # (framed image uint8 [h, w], maps [2, h, w])
    has_brain: bool
    truth: HeadTruth | None  # full-size truth, kept for validation only
    group: str


class HeadDataError(ValueError):
    """A dataset gives no head to train or measure on; the message names it."""


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _sample(
    truth: HeadTruth,
    group: str,
    keep_truth: bool,
    rng: np.random.Generator,
    size: tuple[int, int] = INPUT_SIZE,
    zoom_views: int = 1,
    zoom_margin: tuple[float, float] = ZOOM_MARGIN,
) -> Sample:
    """The image seen whole and through ``zoom_views`` frames round its head (as the second
    look sees it: a random margin round the true head, a little off centre), at the network's
    input ``size``."""
    frames = [Frame.whole(truth.image.shape, size)]
    ellipse = fit_mask_ellipse(truth.head)
    diameter = 0.0 if ellipse is None else max(ellipse.d1, ellipse.d2)
    for _ in range(zoom_views if ellipse is not None else 0):
        shifted = type(ellipse)(
            ellipse.cx + rng.uniform(-0.05, 0.05) * diameter,
            ellipse.cy + rng.uniform(-0.05, 0.05) * diameter,
            ellipse.d1,
            ellipse.d2,
            ellipse.angle_deg,
        )
        frames.append(Frame.zoom(shifted, rng.uniform(*zoom_margin), size))
    maps = [truth.head, truth.brain if truth.brain is not None else np.zeros_like(truth.head)]
    views = [
        (
            np.clip(f.put(truth.image), 0, 255).astype(np.uint8),
            np.stack([f.put(m.astype(np.float32)) for m in maps]),
        )
        for f in frames
    ]
    return Sample(views, truth.brain is not None, truth if keep_truth else None, group)


def load_samples(
    datasets: list[Dataset],
    split: str,
    keep_truth: bool,
    limit: int | None = None,
    progress: bool = True,
    seed: int = 0,
    size: tuple[int, int] = INPUT_SIZE,
    zoom_views: int = 1,
    zoom_margin: tuple[float, float] = ZOOM_MARGIN,
) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for dataset in datasets:
        cases = [c for c in dataset.split(split) if has_head_truth(c)][:limit]
        for case in track(cases, f"loading {dataset.spec.name} {split}", enabled=progress):
            truth = head_truth(dataset, case)
            if truth is not None:
                group = f"{dataset.spec.name}/{case.group}"
                samples.append(_sample(truth, group, keep_truth, rng, size, zoom_views, zoom_margin))
    return samples


def augment(sample: Sample, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One of the sample's views with a random rotation, scale, shift and flip (image and maps
    together), then grey-level changes."""
    image, target = sample.views[int(rng.integers(len(sample.views)))]
    angle = rng.uniform(-30, 30)
    scale = math.exp(rng.uniform(-0.2, 0.15))
    size = (image.shape[1], image.shape[0])
    shift = rng.uniform(-0.06, 0.06, 2) * size
    matrix = cv2.getRotationMatrix2D((size[0] / 2 + shift[0], size[1] / 2 + shift[1]), angle, scale)
    matrix[:, 2] -= shift
    stack = np.concatenate([image[None].astype(np.float32), target])
    warped = np.stack([cv2.warpAffine(ch, matrix, size, flags=cv2.INTER_LINEAR) for ch in stack])
    if rng.random() < 0.5:
        warped = warped[:, :, ::-1]
    if rng.random() < 0.3:
        warped = warped[:, ::-1, :]
    image = warped[0] / 255.0
    image = np.clip(image, 0, 1) ** math.exp(rng.uniform(-0.4, 0.4))
    image = image * rng.uniform(0.7, 1.3) + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.4:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    image = image + rng.normal(0, rng.uniform(0, 0.05), image.shape)
    canvas = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return standardise(canvas), np.ascontiguousarray(warped[1:])


def _loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice per map; ``weight`` [B, 2] switches off maps a sample has no truth for."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((2, 3))
    soft_dice = 1 - (2 * inter + 1) / (prob.sum((2, 3)) + target.sum((2, 3)) + 1)
    per_map = (bce + soft_dice) * weight
    return per_map.sum() / weight.sum().clamp(min=1)


def validate(model: HeadUNet, samples: list[Sample]) -> dict:
    """HC error (mm) and head Dice of the full measurement path on validation samples."""
    errors, dices = [], []
    for sample in samples:
        truth = sample.truth
        measured = measure_image(model, truth.image, truth.spacing_mm)
        predicted = measured.outer.mask(truth.head.shape) if measured.outer else np.zeros_like(truth.head)
        dices.append(2 * (predicted & truth.head).sum() / max(1, predicted.sum() + truth.head.sum()))
        if "hc_mm" in truth.values:
            hc = measured.values.get("hc_mm")
            errors.append(abs(hc - truth.values["hc_mm"]) if hc is not None else truth.values["hc_mm"])
    return {
        "hc_mae_mm": round(float(np.mean(errors)), 3) if errors else None,
        "dice": round(float(np.mean(dices)), 4) if dices else None,
        "n": len(samples),
    }


def _epoch(model, optimiser, scheduler, samples, config, rng, bf16) -> float:
    model.train()
    order = rng.permutation(len(samples))
    losses = []
    for start in range(0, len(order) - config.batch + 1, config.batch):
        batch = [samples[i] for i in order[start : start + config.batch]]
        pairs = [augment(s, rng) for s in batch]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))
        weight = torch.tensor([[1.0, float(s.has_brain)] for s in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = _loss(logits.float(), y, weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def data_hash(datasets: list[Dataset], splits: tuple[str, ...]) -> str:
    """SHA-256 over each dataset's images and head masks in ``splits`` (with the case columns
    the phantom geometry is read from)."""
    digest = hashlib.sha256()
    for dataset in datasets:
        for case in sorted(dataset.cases, key=lambda c: c.case_id):
            if case.split not in splits or not has_head_truth(case):
                continue
            digest.update(dataset.image_path(case.tv_image).read_bytes())
            mask = case.extra.get(HEAD_MASK_COLUMN)
            digest.update((dataset.root / mask).read_bytes() if mask else json.dumps(case.extra).encode())
    return digest.hexdigest()


def _start_model(config: HeadTrainConfig, size: tuple[int, int]) -> tuple[HeadUNet, str | None]:
    """The network to train: random weights, or ``config.init_from``'s (same widths) with its hash."""
    model = HeadUNet(tuple(config.widths), input_size=size)
    if not config.init_from:
        return model, None
    from neurosono.core.checkpoints import file_sha256, load_payload
    from neurosono.measure.headnet import FORMAT

    start_file, _ = load_payload(config.init_from, WEIGHTS_NAME, FORMAT, "head model")
    start = load_head_model(start_file)[0]
    if start.widths != model.widths:
        raise ValueError(
            f"{config.init_from}: a head model with widths {list(start.widths)}, "
            f"not the {list(model.widths)} asked for"
        )
    model.load_state_dict(start.state_dict())
    return model, file_sha256(start_file)


def train_head_model(
    dataset_paths: list[str | Path], out: str | Path, config: HeadTrainConfig, progress: bool = True
) -> dict:
    """Train the head model; writes ``out``/head.pt and head.json. Returns the record."""
    datasets = [Dataset.load(p) for p in dataset_paths]
    size = tuple(config.input_size)
    train = load_samples(
        datasets,
        "train",
        False,
        config.max_per_dataset,
        progress,
        size=size,
        zoom_views=config.zoom_views,
        zoom_margin=tuple(config.zoom_margin),
    )
    val = load_samples(datasets, "val", True, config.max_val_per_dataset, progress, size=size)
    if not train or not val:
        names = ", ".join(str(d.root) for d in datasets)
        raise HeadDataError(
            f"{names}: no train and val cases with a head mask or phantom head geometry "
            "(split the dataset first: neurosono data split)"
        )
    bf16 = cpu_has_bf16() if config.bf16 is None else config.bf16
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model, init_sha256 = _start_model(config, size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, len(train) // config.batch) * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.lr, total_steps=steps, pct_start=0.15)
    history, best, best_state, stale, started = [], math.inf, None, 0, time.time()
    for epoch in range(1, config.epochs + 1):
        loss = _epoch(model, optimiser, scheduler, train, config, rng, bf16)
        metrics = validate(model, val)
        score = metrics["hc_mae_mm"] if metrics["hc_mae_mm"] is not None else 1 - metrics["dice"]
        history.append({"epoch": epoch, "loss": round(loss, 4), **metrics})
        if score < best:
            best, best_state, stale = score, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            stale += 1
        note(
            f"training head model: epoch {epoch}/{config.epochs} loss {loss:.4f} "
            f"val HC MAE {metrics['hc_mae_mm']} mm Dice {metrics['dice']}",
            progress,
        )
        if stale >= config.patience:
            break
    model.load_state_dict(best_state)
    best_epoch = min(history, key=lambda h: h["hc_mae_mm"] if h["hc_mae_mm"] is not None else 1 - h["dice"])
    record = {
        "kind": "neurosono head model run",
        "maps": ["head (outer skull border)", "brain (inner skull border)"],
        "calliper_convention": "HC and OFD on the outer skull border; BPD outer to inner",
        "config": {**asdict(config), "bf16": bf16, "init_from": "given" if config.init_from else None},
        "init_from_sha256": init_sha256,
        "parameters": sum(p.numel() for p in model.parameters()),
        "best_epoch": best_epoch["epoch"],
        "val_metrics": {k: best_epoch[k] for k in ("hc_mae_mm", "dice", "n")},
        "history": history,
        "train_seconds": round(time.time() - started, 1),
        "datasets": [
            {
                "name": d.spec.name,
                "source": d.spec.source,
                "licence": d.spec.licence,
                "n_train": sum(s.group.startswith(d.spec.name + "/") for s in train),
                "n_val": sum(s.group.startswith(d.spec.name + "/") for s in val),
            }
            for d in datasets
        ],
        "sha256_train_val": data_hash(datasets, ("train", "val")),
        "versions": package_versions(),
    }
    with staged_directory(out) as staging:
        save_head_model(staging / WEIGHTS_NAME, model, {"record": json.dumps(record)})
        atomic_write_text(staging / RECORD_NAME, json.dumps(record, indent=2) + "\n")
    return record
