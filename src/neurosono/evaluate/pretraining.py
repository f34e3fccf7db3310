"""What a phantom is worth on real data: learning curves of the fetal-head detector.

For N real training images (10, 30, 100, all), a detector is fine-tuned from the phantom
detector and another is trained from scratch, with the same recipe, seed, validation images
and epochs; each is scored (``fetal_head`` mAP@0.5 with its CI, by source group) on the same
group-held-out test split. The question it answers: do phantoms save labelling?
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from neurosono.core.atomic import atomic_write_bytes
from neurosono.data.format import Case, Dataset, write_cases
from neurosono.detect.evaluate import evaluate_detector
from neurosono.detect.model import load_detector
from neurosono.detect.train import DetectTrainConfig, train_detector
from neurosono.models import HEAD_REGION

CURVE_SIZES = (10, 30, 100, None)  # None: every training image
MAX_VAL_IMAGES = 60  # one validation set for every run, small enough to be cheap per epoch
# Epochs fitted to the number of images, so that small sets get enough optimiser steps and
# the whole set a budget a 2-core machine can afford.
MIN_EPOCHS, MAX_EPOCHS, IMAGE_EPOCHS = 20, 100, 2000


def epochs_for(n_images: int) -> int:
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(IMAGE_EPOCHS / n_images))))


def by_group_order(cases: Sequence[Case], seed: int) -> list[Case]:
    """The cases in a seeded round-robin over source groups: any prefix spreads over as many
    groups as it can, so a source with many copies does not fill a small training set."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    pools = [[g[i] for i in rng.permutation(len(g))] for g in groups.values()]
    order = [pools[i] for i in rng.permutation(len(pools))]
    out: list[Case] = []
    while any(order):
        for pool in order:
            if pool:
                out.append(pool.pop())
    return out


def subset_dataset(dataset: Dataset, out: Path, train: list[Case], val: list[Case]) -> Path:
    """A dataset folder holding only these train and val cases (images and labels linked)."""
    out.mkdir(parents=True)
    for name in ("images", "labels"):
        if (dataset.root / name).exists():
            os.symlink((dataset.root / name).resolve(), out / name)
    atomic_write_bytes(out / "dataset.yaml", (dataset.root / "dataset.yaml").read_bytes())
    write_cases(
        out / "cases.csv",
        [replace(c, split="train") for c in train] + [replace(c, split="val") for c in val],
    )
    return out


def learning_curve(
    dataset_path: str | Path,
    work: str | Path,
    phantom_detector: str | Path,
    sizes: Sequence[int | None] = CURVE_SIZES,
    imgsz: int = 256,
    seed: int = 0,
    n_boot: int = 1000,
    epochs: int | None = None,
    progress: bool = False,
) -> dict:
    """``{"points": [{"n_train", "init", "epochs", "map50", ...}], ...}`` on the test split.

    ``dataset_path``: a real dataset with ``fetal_head`` boxes and train/val/test splits by
    source group; ``work``: a new folder for the runs; ``epochs``: fixed (default: fitted to N).
    """
    dataset = Dataset.load(dataset_path)
    if HEAD_REGION not in dataset.spec.regions:
        raise ValueError(f"{dataset.root}: has no {HEAD_REGION} boxes")
    train_pool = by_group_order(dataset.split("train"), seed)
    val = by_group_order(dataset.split("val"), seed)[:MAX_VAL_IMAGES]
    if not train_pool or not val or not dataset.split("test"):
        raise ValueError(f"{dataset.root}: the learning curve needs train, val and test splits")
    work = Path(work)
    work.mkdir(parents=True)
    points = []
    for size in sizes:
        n = len(train_pool) if size is None else min(size, len(train_pool))
        train = train_pool[:n]
        folder = subset_dataset(dataset, work / f"data_n{n}", train, val)
        for init, start in (("phantom", str(phantom_detector)), ("scratch", None)):
            n_epochs = epochs or epochs_for(n)
            config = DetectTrainConfig(
                imgsz=imgsz,
                epochs=n_epochs,
                batch=min(16, n),
                seed=seed,
                patience=n_epochs,
                close_mosaic=min(10, n_epochs // 4),
                warmup_epochs=0 if n < 50 else 3.0,
                init_from=start,
            )
            run = train_detector(folder, work / f"{init}_n{n}", config, progress=progress)
            metrics = evaluate_detector(load_detector(run), dataset, "test", n_boot=n_boot, seed=seed)
            points.append(
                {
                    "n_train": n,
                    "n_train_groups": len({c.group for c in train}),
                    "init": init,
                    "epochs": n_epochs,
                    "map50": metrics["per_region"][HEAD_REGION]["map50"],
                    "n_test_images": metrics["n_images"],
                }
            )
    return {
        "dataset": dataset.spec.name,
        "phantom_detector_sha256": load_detector(phantom_detector).sha256,
        "n_val_images": len(val),
        "imgsz": imgsz,
        "seed": seed,
        "points": points,
    }


def curve_plot(curve: dict, out: Path) -> Path:
    """mAP@0.5 against the number of real training images, with CIs, both starts."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for init, label in (("phantom", "fine-tuned from the phantom detector"), ("scratch", "from scratch")):
        mine = [p for p in curve["points"] if p["init"] == init]
        n = [p["n_train"] for p in mine]
        value = np.array([p["map50"]["value"] for p in mine])
        low = value - np.array([p["map50"]["ci95"][0] for p in mine])
        high = np.array([p["map50"]["ci95"][1] for p in mine]) - value
        ax.errorbar(n, value, yerr=[low, high], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set(
        xlabel="real training images",
        ylabel="fetal_head mAP@0.5 (held-out test)",
        ylim=(0, 1.02),
        title=f"Learning curves on {curve['dataset']}",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out
