"""``neurosono detect ...``: train, evaluate and run the stage-1 detector; how it transfers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from neurosono.cli.common import (
    DEFAULT,
    EXIT_BAD_INPUT,
    EXIT_INVALID_DATA,
    EXIT_OUTPUT,
    Arch,
    BootSeed,
    DetectorOpt,
    JsonOut,
    NBoot,
    Seed,
    Split,
    chosen_split,
    fail,
    group,
    load_dataset,
    load_detector_or_fail,
    out,
    split_model_arg,
    write_json,
)

app = group("Stage 1: the YOLOv5 region detector (brain regions and fetal head, or the fetal head alone).")


@app.command("train")
def train(
    dataset: Annotated[Path, typer.Argument(help="dataset folder (train and val splits are used)")],
    out_dir: Annotated[Path, typer.Option("--out", help="new run folder")],
    arch: Annotated[Arch, typer.Option(help="YOLOv5 size, built from its yaml")] = Arch.yolov5n,
    arch_old: Annotated[Arch | None, typer.Option("--model", hidden=True)] = None,
    imgsz: Annotated[int, typer.Option(help="training image size (multiple of 32)")] = 512,
    epochs: Annotated[int, typer.Option(help="maximum epochs")] = 60,
    batch: Annotated[int, typer.Option(help="batch size")] = 16,
    seed: Seed = DEFAULT,
    time_hours: Annotated[
        float | None, typer.Option(help="wall-clock budget in hours (fits the epochs)")
    ] = None,
    init: Annotated[
        str, typer.Option(help="scratch, shipped (fine-tune the shipped detector) or a detector to fine-tune")
    ] = "scratch",
    init_old: Annotated[Path | None, typer.Option("--init-from", hidden=True)] = None,
    lr0: Annotated[
        float | None, typer.Option(help="AdamW learning rate [default: ultralytics' choice for the run]")
    ] = None,
    warmup_epochs: Annotated[
        float, typer.Option(help="warm-up epochs (0 when fine-tuning a converged detector)")
    ] = 3.0,
    device: Annotated[
        str, typer.Option(help="cpu, or CUDA devices: 0 (one GPU), 0,1,2,3 (ultralytics' DDP over them)")
    ] = "cpu",
) -> None:
    """Train the YOLOv5 detector (from scratch, or fine-tuned with --init), fully offline."""
    from neurosono.core.atomic import OutputExistsError
    from neurosono.data.format import DatasetFormatError
    from neurosono.detect.model import DetectorFileError
    from neurosono.detect.train import DatasetInvalidError, DetectTrainConfig, resolve_init, train_detector

    try:
        config = DetectTrainConfig(
            model=(arch_old or arch).value,
            imgsz=imgsz,
            epochs=epochs,
            batch=batch,
            seed=seed,
            time_hours=time_hours,
            init_from=resolve_init(str(init_old) if init_old else init),
            lr0=lr0,
            warmup_epochs=warmup_epochs,
            device=device,
        )
        config.validate()
        run_dir = train_detector(dataset, out_dir, config)
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except DatasetInvalidError as exc:
        raise fail(str(exc), EXIT_INVALID_DATA) from None
    except (DetectorFileError, DatasetFormatError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    m = run_dir_metrics(run_dir)["map50"]
    out.print(
        f"run: {run_dir}  validation mAP@0.5 {m['value']:.3f} (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})"
    )


def run_dir_metrics(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "metrics.json").read_text())


def _detector_for(detector: Path | None, legacy: Path | None, dataset):
    from neurosono.models import default_detector

    return load_detector_or_fail(detector or legacy, default_detector(dataset.spec.regions))


@app.command("eval")
def evaluate(
    paths: Annotated[list[Path], typer.Argument(metavar="DATASET", help="dataset folder")],
    detector: DetectorOpt = None,
    split: Split = "test",
    json_out: JsonOut = None,
    n_boot: NBoot = 1000,
    seed: BootSeed = DEFAULT,
) -> None:
    """mAP@0.5 (overall, per region, per plane), mAP@0.5:0.95, precision, recall, with 95% CIs.

    The detector defaults to the shipped one for the dataset's regions (the head detector for
    a fetal_head dataset, else the six-region phantom detector).
    """
    from neurosono.detect.evaluate import evaluate_detector
    from neurosono.detect.model import RegionMismatchError

    legacy, rest = split_model_arg(paths, "a dataset folder")
    if len(rest) != 1:
        raise fail("expected one DATASET (and --detector for the model)", EXIT_BAD_INPUT)
    dataset = load_dataset(rest[0])
    det = _detector_for(detector, legacy, dataset)
    try:
        metrics = evaluate_detector(det, dataset, chosen_split(split), n_boot=n_boot, seed=seed)
    except (RegionMismatchError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    table = Table(title=f"detector on {dataset.spec.name}, split {split}: {metrics['n_images']} images")
    for column in ("metric", "value", "95% CI"):
        table.add_column(column)
    rows = [(key, metrics[key]) for key in ("map50", "map50_95", "precision", "recall")]
    rows += [(f"AP50 {region}", m["map50"]) for region, m in metrics["per_region"].items()]
    rows += [(f"mAP50 {plane.upper()} plane", m["map50"]) for plane, m in metrics["per_plane"].items()]
    for name, m in rows:
        table.add_row(name, f"{m['value']:.3f}", f"{m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}")
    out.print(table)
    out.print(f"CI method: {metrics['map50']['method']}")
    write_json(json_out, metrics)
    if json_out:
        out.print(f"metrics: {json_out}")


@app.command("predict")
def predict(
    paths: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="image files")],
    detector: DetectorOpt = None,
    json_out: JsonOut = None,
    conf: Annotated[float, typer.Option(help="confidence threshold")] = 0.25,
) -> None:
    """Boxes (pixels), region names and confidences for each image."""
    from neurosono.core.images import ImageReadError
    from neurosono.detect.predict import detect_regions
    from neurosono.models import DEFAULT_DETECTOR

    legacy, images = split_model_arg(paths, "one or more images")
    det = load_detector_or_fail(detector or legacy, DEFAULT_DETECTOR)
    try:
        records = detect_regions(det, images, conf=conf)
    except ImageReadError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    for record in records:
        found = (
            ", ".join(f"{d['region']} {d['confidence']:.2f}" for d in record["detections"])
            or "no region found"
        )
        out.print(f"{record['image']}: {found}")
    write_json(json_out, {"model": str(det.path), "model_sha256": det.sha256, "images": records})


@app.command("transfer")
def transfer(
    dataset: Annotated[Path, typer.Argument(help="dataset of images (e.g. imported real images)")],
    detector: DetectorOpt = None,
    json_out: JsonOut = None,
) -> None:
    """How the (phantom-trained) region detector fares on other images: regions found, confidences."""
    from neurosono.detect.evaluate import measure_transfer
    from neurosono.models import DEFAULT_DETECTOR

    ds = load_dataset(dataset)
    det = load_detector_or_fail(detector, DEFAULT_DETECTOR)
    try:
        result = measure_transfer(ds, det)
    except ValueError as exc:  # an unreadable image
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    table = Table(title=f"region detector on {ds.spec.name}: {result['n_images']} images")
    for column in ("region", f"found (conf >= {result['conf']})", "normal", "abnormal", "median best conf"):
        table.add_column(column)
    for name, v in result["regions"].items():
        by = v["found_fraction_by_label"]
        cells = ["-" if by[k] is None else f"{by[k]:.2f}" for k in ("normal", "abnormal")]
        table.add_row(name, f"{v['found_fraction']:.2f}", *cells, f"{v['median_best_confidence']:.3f}")
    out.print(table)
    per = result["regions_found_per_image"]
    out.print(f"regions found per image: mean {per['mean']:.2f}, histogram {per['histogram']}")
    write_json(json_out, result)
