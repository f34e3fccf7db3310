"""Train the six-region YOLOv5 detector from scratch (no pretrained weights exist offline).

The run folder holds everything needed to trust and reuse the model::

    RUN/
      detector.pt       weights as plain tensors (loadable with weights_only=True)
      detector.json     regions, planes, training args, seed, dataset hash, versions, metrics
      metrics.json      validation-split metrics (neurosono's evaluation, with CIs)
      MODEL_CARD.md     trained on what, for what, limits
      view/             symlinks to the dataset's images and labels, ultralytics' data.yaml
      ultralytics/      ultralytics' own logs (results.csv, args.yaml)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from neurosono.core import DEFAULT_SEED
from neurosono.core.atomic import atomic_write_text, staged_directory
from neurosono.core.provenance import package_versions
from neurosono.data.check import check_dataset
from neurosono.data.format import Dataset, dataset_hash
from neurosono.detect.env import configure_ultralytics, cpu_cores
from neurosono.detect.model import WEIGHTS_NAME, save_detector

MODELS = ("yolov5n", "yolov5s")

# Augmentation for grey ultrasound: flips, small rotation and scale, gain/brightness;
# no hue or saturation jitter (meaningless on grey, harmful on sepia machine maps).
ULTRASOUND_AUGMENTATION = {
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.35,
    "degrees": 10.0,
    "translate": 0.08,
    "scale": 0.25,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
}


class DatasetInvalidError(ValueError):
    """The dataset failed validation (exit 1 on the command line)."""


@dataclass(frozen=True)
class DetectTrainConfig:
    model: str = "yolov5n"
    imgsz: int = 512
    epochs: int = 60
    batch: int = 16
    seed: int = DEFAULT_SEED
    patience: int = 30
    close_mosaic: int = 10
    workers: int = 2
    time_hours: float | None = None  # wall-clock budget; ultralytics fits the epochs to it
    # ultralytics warms up for max(warmup_epochs x batches, 100) iterations; tiny runs need 0.
    warmup_epochs: float = 3.0
    # Start from a neurosono detector with the same regions (fine-tuning) instead of from scratch.
    init_from: str | None = None
    # None: ultralytics' choice (AdamW, lr 0.001 for short runs), right from scratch but enough to
    # undo a converged detector in one epoch; fine-tuning sets a small fixed rate.
    lr0: float | None = None
    # "cpu", or CUDA device indices: "0" one GPU, "0,1,2,3" ultralytics' own DDP over them.
    device: str = "cpu"

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {MODELS}")
        if self.imgsz < 32 or self.imgsz % 32:
            raise ValueError("--imgsz must be a multiple of 32 (the YOLOv5 stride)")
        if self.epochs < 1:
            raise ValueError("--epochs must be at least 1")
        if self.lr0 is not None and not 0 < self.lr0 < 1:
            raise ValueError(f"--lr0 must lie between 0 and 1, not {self.lr0}")
        if self.warmup_epochs < 0:
            raise ValueError("--warmup-epochs must not be negative")
        check_device(self.device)


def check_device(device: str) -> None:
    """``cpu`` or CUDA indices this machine has (``0,1``: one process per GPU, DDP)."""
    if device == "cpu":
        return
    import torch

    indices = device.split(",")
    if not all(i.strip().isdigit() for i in indices):
        raise ValueError(f"--device must be cpu or CUDA indices such as 0 or 0,1, not {device!r}")
    have = torch.cuda.device_count()
    missing = [i for i in indices if int(i) >= have]
    if missing:
        raise ValueError(
            f"--device {device}: this machine has {have} CUDA device(s); no device {', '.join(missing)}"
        )


def resolve_init(value: str | None) -> str | None:
    """Where fine-tuning starts: ``scratch`` (or None) -> None, ``shipped`` -> the shipped detector,
    anything else a detector file or run folder that must exist."""
    if value in (None, "", "scratch"):
        return None
    if value == "shipped":
        from neurosono.models import DEFAULT_DETECTOR

        return str(DEFAULT_DETECTOR)
    if not Path(value).exists():
        raise ValueError(f"{value}: detector to start from does not exist (use scratch, shipped or a path)")
    return str(value)


def build_view(dataset: Dataset, folder: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """An ultralytics data.yaml over symlinks to the dataset: no copies, and ultralytics'
    label cache lands in the run folder, never in the user's dataset.

    Ultralytics decodes image files itself (OpenCV); an image it would read otherwise than
    neurosono's reader (16-bit, float, DICOM) is written into the view as the 8-bit PNG the
    reader makes of it, so the detector trains on the pixels it is later given.
    """
    images_dir, labels_dir = folder / "images", folder / "labels"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {s: [] for s in splits}
    for case in dataset.cases:
        if case.split not in splits:
            continue
        for _, rel in case.images():
            label = dataset.label_path(rel)
            if not label.exists():
                continue  # classification-only image: nothing to learn boxes from
            link = _view_image(dataset.image_path(rel), images_dir, _flat_name(rel))
            label_link = labels_dir / (link.stem + ".txt")
            if not label_link.exists():
                os.symlink(label.resolve(), label_link)
            lists[case.split].append(str(link.absolute()))
    for split, paths in lists.items():
        if not paths:
            raise DatasetInvalidError(f"{dataset.root}: no annotated images in split {split!r}")
        (folder / f"{split}.txt").write_text("\n".join(sorted(paths)) + "\n")
    data_yaml = folder / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump(
            {
                "path": str(folder.absolute()),
                "train": str((folder / "train.txt").absolute()),
                "val": str((folder / "val.txt").absolute()),
                "names": dict(enumerate(dataset.spec.regions)),
            },
            sort_keys=False,
        )
    )
    return data_yaml


def _flat_name(rel: str) -> str:
    """A file name unique in the view: the image's path below images/, folders joined by '__'."""
    parts = Path(rel).parts
    return "__".join(parts[1:] if parts[0] == "images" and len(parts) > 1 else parts)


# What OpenCV decodes as neurosono's reader does: 8-bit grey, colour or palette images.
_OPENCV_SAFE = {"PNG", "JPEG", "BMP"}, {"L", "RGB", "RGBA", "P", "LA"}


def _view_image(source: Path, images_dir: Path, name: str) -> Path:
    from PIL import Image

    from neurosono.core.images import is_dicom, read_image

    link = images_dir / name
    safe = False
    if not is_dicom(source):
        with Image.open(source) as image:
            safe = image.format in _OPENCV_SAFE[0] and image.mode in _OPENCV_SAFE[1]
    if safe:
        if not link.exists():
            os.symlink(source.resolve(), link)
        return link
    converted = link.with_suffix(".png")
    if not converted.exists():
        Image.fromarray(read_image(source).rgb()).save(converted)
    return converted


def train_detector(
    dataset_path: str | Path,
    out: str | Path,
    config: DetectTrainConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train on the dataset's train split, validate on val, and write a complete run folder."""
    config = config or DetectTrainConfig()
    config.validate()
    dataset = Dataset.load(dataset_path)
    report = check_dataset(dataset.root)
    if not report.ok:
        first = "; ".join(str(p) for p in report.errors[:5])
        raise DatasetInvalidError(
            f"{dataset.root}: {len(report.errors)} error(s) in the dataset; run "
            f"'neurosono data check {dataset.root}'. First: {first}"
        )
    out = Path(out)
    with staged_directory(out) as run:
        started = time.perf_counter()
        trainer, init_sha256 = _fit(dataset, run, config, progress)
        seconds = time.perf_counter() - started
        best = Path(trainer.best) if Path(trainer.best).exists() else Path(trainer.last)
        # Our own, trusted file: take the EMA weights ultralytics saved, keep plain tensors.
        from ultralytics.nn.tasks import load_checkpoint

        trained, _ = load_checkpoint(str(best))
        planes = {name: list(spec.regions) for name, spec in dataset.spec.planes.items()}
        save_detector(run / WEIGHTS_NAME, trained, dataset.spec.regions, planes, config.imgsz)
        shutil.rmtree(best.parent, ignore_errors=True)  # pickled checkpoints are not shipped

        from neurosono.detect.evaluate import evaluate_detector
        from neurosono.detect.model import load_detector
        from neurosono.detect.predict import input_record

        train_images = [dataset.image_path(rel) for c in dataset.split("train") for _, rel in c.images()]
        seen = input_record(train_images)  # how dark an image may be before it is stretched
        detector = load_detector(run / WEIGHTS_NAME)
        detector.dark_below = seen["dark_below"]
        metrics = evaluate_detector(detector, dataset, "val", n_boot=200, seed=config.seed)
        atomic_write_text(run / "metrics.json", json.dumps(metrics, indent=2))
        record = {
            "kind": "neurosono detector run",
            "regions": dataset.spec.regions,
            "planes": planes,
            "config": asdict(config),
            "augmentation": ULTRASOUND_AUGMENTATION,
            "input": seen,
            "init_from_sha256": init_sha256,
            "seed": config.seed,
            "dataset": {
                "path": str(dataset.root.resolve()),
                "name": dataset.spec.name,
                "source": dataset.spec.source,
                "licence": dataset.spec.licence,
                "sha256_train_val": dataset_hash(dataset, ("train", "val")),
                "n_train_cases": len(dataset.split("train")),
                "n_val_cases": len(dataset.split("val")),
            },
            "epochs_run": int(trainer.epoch) + 1,
            "train_seconds": round(seconds, 1),
            "cpu_cores": cpu_cores(),
            "versions": package_versions(),
            "val_metrics": {k: metrics[k] for k in ("map50", "map50_95", "precision", "recall", "n_images")},
        }
        atomic_write_text(run / "detector.json", json.dumps(record, indent=2))
        atomic_write_text(run / "MODEL_CARD.md", model_card(record))
    return out


def _fit(dataset: Dataset, run: Path, config: DetectTrainConfig, progress: bool):
    """Ultralytics' training on the run's view of the dataset; returns (its trainer, start SHA-256)."""
    configure_ultralytics()
    import torch
    from ultralytics import YOLO

    data_yaml = build_view(dataset, run / "view")
    torch.manual_seed(config.seed)
    torch.set_num_threads(cpu_cores())
    model = YOLO(f"{config.model}.yaml", task="detect")
    init_sha256 = None
    if config.init_from:
        from neurosono.detect.model import load_detector

        start = load_detector(config.init_from)
        if not set(dataset.spec.regions) & set(start.regions):
            raise ValueError(
                f"{dataset.root / 'dataset.yaml'}: no region in common with the detector to fine-tune "
                f"({', '.join(start.regions)})"
            )
        # Every weight transfers where shapes match; with another number of regions than the
        # starting detector's, the last class layer starts afresh (ultralytics matches by shape).
        # As many regions in another order would carry each class's weights to the wrong one.
        if len(dataset.spec.regions) == len(start.regions):
            start.check_regions(dataset.spec.regions, str(dataset.root / "dataset.yaml"))
        model = start.yolo
        model.load(start.yolo.model)  # marks the in-memory weights as the starting point
        init_sha256 = start.sha256
    bar = _EpochProgress(config.epochs, progress)
    model.add_callback("on_train_epoch_end", bar.update)
    model.add_callback("on_fit_epoch_end", bar.update_fitness)
    try:
        model.train(
            data=str(data_yaml),
            epochs=config.epochs,
            imgsz=config.imgsz,
            batch=config.batch,
            seed=config.seed,
            deterministic=True,
            device=config.device,
            workers=config.workers,
            project=str((run / "ultralytics").absolute()),
            name="train",
            exist_ok=True,
            pretrained=bool(config.init_from),
            amp=config.device != "cpu",  # mixed precision on GPUs only
            plots=False,
            verbose=False,
            patience=config.patience,
            close_mosaic=min(config.close_mosaic, max(0, config.epochs - 1)),
            time=config.time_hours,
            warmup_epochs=config.warmup_epochs,
            **({"optimizer": "AdamW", "lr0": config.lr0} if config.lr0 else {}),
            **ULTRASOUND_AUGMENTATION,
        )
    finally:
        bar.close()
    return model.trainer, init_sha256


PLANE_NAMES = {"tv": "transventricular (TV)", "tc": "transcerebellar (TC)", "tt": "transthalamic (TT)"}


def model_card(record: dict) -> str:
    ds = record["dataset"]
    val = record["val_metrics"]["map50"]
    versions = record["versions"]
    synthetic = "phantom" in (ds["source"] + ds["name"]).lower()
    limits = (
        "Trained on synthetic phantoms only: it has never seen a real ultrasound image and its "
        "figures say nothing about real scans. Not for clinical use."
        if synthetic
        else "Validated only on the split named here. Not for clinical use."
    )
    init = record.get("init_from_sha256")
    start = f"fine-tuned from detector `{init[:16]}...`" if init else "from scratch (no pretrained weights)"
    planes = ", ".join(PLANE_NAMES.get(p, p.upper()) for p in record["planes"])
    return f"""# Stage-1 detector: {record["config"]["model"]}, {len(record["regions"])} regions

**For:** finding the regions {", ".join(record["regions"])} on the {planes}
plane(s) of the second-trimester fetal brain scan, as stage 1 of neurosono.

**Trained on:** {ds["name"]} ({ds["source"]}; licence: {ds["licence"]}),
{ds["n_train_cases"]} training cases, {ds["n_val_cases"]} validation cases (every plane of each),
dataset hash `{ds["sha256_train_val"][:16]}...`.

**Training:** {start}, {record["epochs_run"]} epochs at
{record["config"]["imgsz"]} px, seed {record["seed"]}, {record["train_seconds"]:.0f} s on
{record["cpu_cores"]} CPU cores; ultralytics {versions["ultralytics"]}, torch {versions["torch"]}.

**Validation split:** mAP@0.5 {val["value"]:.3f} (95% CI {val["ci95"][0]:.3f}-{val["ci95"][1]:.3f},
{val["method"]}), over {record["val_metrics"]["n_images"]} images.
The validation split chose the best epoch, so this figure is optimistic; see a held-out test evaluation.

**Limits:** {limits}
"""


class _EpochProgress:
    """A rich progress bar over epochs, fed by ultralytics callbacks."""

    def __init__(self, epochs: int, enabled: bool) -> None:
        self.enabled = enabled
        self.fitness = ""
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            from neurosono.core.progress import console

            self.progress = Progress(
                TextColumn("[bold]training detector"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("epochs eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=epochs, info="")

    def update(self, trainer) -> None:
        if not self.enabled:
            return
        tloss = getattr(trainer, "tloss", None)
        if isinstance(tloss, dict):  # newer ultralytics: named loss items
            loss = sum(float(v) for v in tloss.values())
        else:
            loss = float(tloss.sum()) if tloss is not None else float("nan")
        self.progress.update(self.task, completed=trainer.epoch + 1, info=f"loss {loss:.3f} {self.fitness}")

    def update_fitness(self, trainer) -> None:
        metrics = getattr(trainer, "metrics", {}) or {}
        value = metrics.get("metrics/mAP50(B)")
        if value is not None:
            self.fitness = f"val mAP50 {value:.3f}"

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
