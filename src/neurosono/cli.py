"""Command line: a thin layer over the stages (``neurosono --help``).

Exit codes: 0 success; 1 the data failed validation; 2 bad input or arguments;
3 the output exists or cannot be written; 4 a batch finished but some cases failed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from neurosono import __version__

EXIT_INVALID_DATA = 1
EXIT_BAD_INPUT = 2
EXIT_OUTPUT = 3
EXIT_PARTIAL = 4  # a batch finished, but some cases could not be read

app = typer.Typer(
    name="neurosono",
    help="Two-stage fetal neurosonography screening on TV/TC planes (research use only).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Dataset tools: check, split, export, preview.", no_args_is_help=True)
app.add_typer(data_app, name="data")
detect_app = typer.Typer(help="Stage 1: the six-region YOLOv5 detector.", no_args_is_help=True)
app.add_typer(detect_app, name="detect")
classify_app = typer.Typer(
    help="Stage 2: HexaNet, the six-region normal/abnormal classifier.", no_args_is_help=True
)
app.add_typer(classify_app, name="classify")

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _load_dataset(path: Path):
    from neurosono.data.format import Dataset, DatasetFormatError

    try:
        return Dataset.load(path)
    except DatasetFormatError as exc:
        raise fail(f"{exc}\n(run 'neurosono data check {path}' for a full report)", EXIT_BAD_INPUT) from None


@app.command()
def version() -> None:
    """Print the neurosono version."""
    out.print(f"neurosono {__version__}")


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="new folder for the cohort")],
    cases: Annotated[int, typer.Option(help="number of cases (each one TV + one TC image)")] = 319,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same cohort")] = 1,
    abnormal_fraction: Annotated[float, typer.Option(help="share of abnormal cases")] = 0.32,
    centers: Annotated[int, typer.Option(help="number of centres (machine styles)")] = 9,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 512,
    preview: Annotated[Path | None, typer.Option(help="also write a contact sheet PNG here")] = None,
    workers: Annotated[int, typer.Option(help="worker processes (0: one per CPU core)")] = 0,
) -> None:
    """Generate a phantom cohort of paired TV/TC images with boxes, findings and measurements."""
    from neurosono.data.atomic import OutputExistsError
    from neurosono.phantom.cohort import CohortConfig, generate_cohort
    from neurosono.progress import track

    config = CohortConfig(cases, seed, abnormal_fraction, centers, size)
    try:
        config.validate()
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    start = time.perf_counter()
    try:
        progress = iter(track(range(cases), "rendering cases", total=cases))
        dataset = generate_cohort(
            out_dir, config, workers=workers or None, on_case=lambda _: next(progress, None)
        )
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    elapsed = time.perf_counter() - start
    n_abnormal = sum(c.label == "abnormal" for c in dataset.cases)
    out.print(
        f"wrote {len(dataset.cases)} cases ({n_abnormal} abnormal, {len(dataset.cases) - n_abnormal} normal) "
        f"to {out_dir} in {elapsed:.1f} s ({len(dataset.cases) / elapsed:.1f} cases/s)"
    )
    if preview is not None:
        from neurosono.data.preview import write_contact_sheet

        write_contact_sheet(dataset, preview)
        out.print(f"contact sheet: {preview}")


@data_app.command("check")
def data_check(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON")] = None,
    max_shown: Annotated[int, typer.Option(help="problems to print (all go to --json)")] = 200,
) -> None:
    """Validate a dataset and list every problem with its file (and line). Modifies nothing."""
    from neurosono.data.atomic import atomic_write_text
    from neurosono.data.check import check_dataset

    report = check_dataset(dataset, progress=True)
    for problem in report.errors[:max_shown] + report.warnings[: max(0, max_shown - len(report.errors))]:
        style = "red" if problem.severity == "error" else "yellow"
        out.print(f"[{style}]{problem}[/]", highlight=False, soft_wrap=True)
    if len(report.problems) > max_shown:
        out.print(f"... {len(report.problems) - max_shown} more (use --json)")
    out.print(
        f"{dataset}: {report.n_cases} cases, {report.n_images} images, {report.n_boxes} boxes; "
        f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    )
    if json_out:
        atomic_write_text(
            json_out,
            json.dumps(
                {
                    "dataset": str(dataset),
                    "ok": report.ok,
                    "n_cases": report.n_cases,
                    "n_images": report.n_images,
                    "n_boxes": report.n_boxes,
                    "problems": [p.__dict__ for p in report.problems],
                },
                indent=2,
            ),
        )
    if not report.ok:
        raise typer.Exit(EXIT_INVALID_DATA)


@data_app.command("split")
def data_split(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    scheme: Annotated[
        str, typer.Option(help="holdout (65/20/15), kfold, or center (leave-one-centre-out)")
    ] = "holdout",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    folds: Annotated[int, typer.Option(help="number of folds for kfold")] = 3,
    fractions: Annotated[str, typer.Option(help="train,val,test fractions for holdout")] = "0.65,0.20,0.15",
    overwrite: Annotated[
        bool, typer.Option(help="replace an existing assignment (a backup is kept)")
    ] = False,
) -> None:
    """Write case-level, label-stratified, group-aware splits into cases.csv."""
    from neurosono.data.split import SplitError, make_split, summary

    ds = _load_dataset(dataset)
    column = "split" if scheme == "holdout" else "fold"
    try:
        parts = tuple(float(f) for f in fractions.split(","))
        new_cases = make_split(ds.cases, scheme, seed, folds=folds, fractions=parts)  # type: ignore[arg-type]
    except (SplitError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    existing = any(getattr(c, column) for c in ds.cases)
    if existing and not overwrite:
        raise fail(
            f"{dataset / 'cases.csv'} already has a '{column}' assignment; pass --overwrite to replace it",
            EXIT_OUTPUT,
        )
    if existing:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        backup = dataset / f"cases.csv.{stamp}.bak"
        shutil.copy2(dataset / "cases.csv", backup)
        out.print(f"previous cases.csv kept as {backup}")
    ds.cases = new_cases
    ds.write_cases()
    table = Table(title=f"{scheme} split" + (f" (seed {seed})" if scheme != "center" else ""))
    for name in (column, "normal", "abnormal", "total"):
        table.add_column(name, justify="right")
    for part, counts in summary(new_cases, column).items():
        table.add_row(part, str(counts["normal"]), str(counts["abnormal"]), str(sum(counts.values())))
    out.print(table)


@data_app.command("export-coco")
def data_export_coco(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    out_file: Annotated[Path, typer.Option("--out", help="COCO JSON file to write")],
    split: Annotated[str | None, typer.Option(help="only this split")] = None,
) -> None:
    """Write the dataset's boxes as COCO detection JSON."""
    from neurosono.data.coco import export_coco
    from neurosono.data.format import DatasetFormatError

    ds = _load_dataset(dataset)
    try:
        coco = export_coco(ds, out_file, split)
    except (DatasetFormatError, OSError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    out.print(f"wrote {len(coco['images'])} images, {len(coco['annotations'])} boxes to {out_file}")


@data_app.command("import")
def data_import(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="roboflow-classification, yolo or hc18")],
    src: Annotated[Path, typer.Argument(help="source folder")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="new dataset folder")],
    name: Annotated[str | None, typer.Option(help="dataset name (default: the source folder's)")] = None,
) -> None:
    """Import a public data set into the neurosono format (single-image cases, source groups kept)."""
    from neurosono.data.atomic import OutputExistsError
    from neurosono.data.check import check_dataset
    from neurosono.data.format import DatasetFormatError
    from neurosono.data.importers import FORMATS, IMPORTERS

    if fmt not in IMPORTERS:
        raise fail(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", EXIT_BAD_INPUT)
    if not src.is_dir():
        raise fail(f"{src}: source folder does not exist", EXIT_BAD_INPUT)
    try:
        dataset = IMPORTERS[fmt](src, out_dir, name)
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except DatasetFormatError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    report = check_dataset(out_dir)
    n_abnormal = sum(c.label == "abnormal" for c in dataset.cases)
    groups = len({c.group for c in dataset.cases})
    out.print(
        f"imported {len(dataset.cases)} cases ({n_abnormal} abnormal) in {groups} source groups "
        f"to {out_dir}; check: {len(report.errors)} errors, {len(report.warnings)} warnings"
    )
    if not report.ok:
        raise typer.Exit(EXIT_INVALID_DATA)


@data_app.command("preview")
def data_preview(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    out_file: Annotated[Path, typer.Option("--out", help="PNG contact sheet to write")],
    cases: Annotated[int, typer.Option(help="cases to show")] = 16,
) -> None:
    """Write a contact sheet: TV beside TC for each case, with boxes and findings."""
    from neurosono.data.preview import write_contact_sheet

    write_contact_sheet(_load_dataset(dataset), out_file, n_cases=cases)
    out.print(f"contact sheet: {out_file}")


def _split_model_arg(paths: list[Path], what: str) -> tuple[Path | None, list[Path]]:
    """[MODEL] REST...: the first path is the model if it is a run folder or a .pt file."""
    if len(paths) > 1 and (paths[0].is_dir() or paths[0].suffix == ".pt"):
        return paths[0], paths[1:]
    if not paths:
        raise fail(f"give {what}", EXIT_BAD_INPUT)
    return None, paths


def _training_detector(record_file: Path) -> Path | None:
    """The detector a HexaNet run was trained with, if it is still where it was (else the shipped one)."""
    trained_with = json.loads(record_file.read_text()).get("detector")
    return Path(trained_with) if trained_with and Path(trained_with).exists() else None


def _load_detector(model: Path | None):
    from neurosono.detect.model import DetectorFileError, load_detector
    from neurosono.models import DEFAULT_DETECTOR

    path = model or DEFAULT_DETECTOR
    try:
        return load_detector(path)
    except DetectorFileError as exc:
        hint = (
            ""
            if model
            else " (the shipped phantom detector is missing; train one with 'neurosono detect train')"
        )
        raise fail(f"{exc}{hint}", EXIT_BAD_INPUT) from None


@detect_app.command("train")
def detect_train(
    dataset: Annotated[Path, typer.Argument(help="dataset folder (train and val splits are used)")],
    out_dir: Annotated[Path, typer.Option("--out", help="new run folder")],
    model: Annotated[
        str, typer.Option(help="yolov5n or yolov5s (built from its yaml, from scratch)")
    ] = "yolov5n",
    imgsz: Annotated[int, typer.Option(help="training image size (multiple of 32)")] = 512,
    epochs: Annotated[int, typer.Option(help="maximum epochs")] = 60,
    batch: Annotated[int, typer.Option(help="batch size")] = 16,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    time_hours: Annotated[
        float | None, typer.Option(help="wall-clock budget in hours (fits the epochs)")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(help="fine-tune from this neurosono detector (same regions) instead of from scratch"),
    ] = None,
) -> None:
    """Train the YOLOv5 region detector (from scratch, or fine-tuned with --init-from), fully offline."""
    from neurosono.data.atomic import OutputExistsError
    from neurosono.data.format import DatasetFormatError
    from neurosono.detect.model import DetectorFileError
    from neurosono.detect.train import DatasetInvalidError, DetectTrainConfig, train_detector

    config = DetectTrainConfig(
        model=model,
        imgsz=imgsz,
        epochs=epochs,
        batch=batch,
        seed=seed,
        time_hours=time_hours,
        init_from=str(init_from) if init_from else None,
    )
    try:
        config.validate()
        run_dir = train_detector(dataset, out_dir, config)
    except DetectorFileError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except DatasetInvalidError as exc:
        raise fail(str(exc), EXIT_INVALID_DATA) from None
    except (DatasetFormatError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    m = metrics["map50"]
    out.print(
        f"run: {run_dir}  validation mAP@0.5 {m['value']:.3f} (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})"
    )


@detect_app.command("eval")
def detect_eval(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="[MODEL] DATASET", help="model (run folder or .pt; default: shipped) and dataset"
        ),
    ],
    split: Annotated[str, typer.Option(help="split to evaluate ('all' for every case)")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="write metrics.json here")] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for the CIs")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
) -> None:
    """mAP@0.5 (overall, per region, per plane), mAP@0.5:0.95, precision, recall, with 95% CIs."""
    from neurosono.data.atomic import atomic_write_text
    from neurosono.detect.evaluate import evaluate_detector
    from neurosono.detect.model import RegionMismatchError

    model, rest = _split_model_arg(paths, "a dataset folder")
    if len(rest) != 1:
        raise fail("expected [MODEL] DATASET", EXIT_BAD_INPUT)
    detector = _load_detector(model)
    dataset = _load_dataset(rest[0])
    try:
        metrics = evaluate_detector(
            detector, dataset, None if split == "all" else split, n_boot=n_boot, seed=seed
        )
    except RegionMismatchError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    table = Table(title=f"detector on {dataset.spec.name}, split {split}: {metrics['n_images']} images")
    for column in ("metric", "value", "95% CI"):
        table.add_column(column)

    def row(name: str, m: dict) -> None:
        table.add_row(name, f"{m['value']:.3f}", f"{m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}")

    for key in ("map50", "map50_95", "precision", "recall"):
        row(key, metrics[key])
    for region, m in metrics["per_region"].items():
        row(f"AP50 {region}", m["map50"])
    for plane, m in metrics["per_plane"].items():
        row(f"mAP50 {plane.upper()} plane", m["map50"])
    out.print(table)
    out.print(f"CI method: {metrics['map50']['method']}")
    if json_out:
        atomic_write_text(json_out, json.dumps(metrics, indent=2))
        out.print(f"metrics: {json_out}")


@detect_app.command("predict")
def detect_predict(
    paths: Annotated[
        list[Path], typer.Argument(metavar="[MODEL] IMAGE...", help="model (optional) and images")
    ],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the detections as JSON")] = None,
    conf: Annotated[float, typer.Option(help="confidence threshold")] = 0.25,
) -> None:
    """Boxes (pixels), region names and confidences for each image."""
    from neurosono.data.atomic import atomic_write_text
    from neurosono.detect.predict import ImageInputError, detect_regions

    model, images = _split_model_arg(paths, "one or more images")
    detector = _load_detector(model)
    try:
        records = detect_regions(detector, images, conf=conf)
    except ImageInputError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    for record in records:
        found = (
            ", ".join(f"{d['region']} {d['confidence']:.2f}" for d in record["detections"])
            or "no region found"
        )
        out.print(f"{record['image']}: {found}", highlight=False)
    if json_out:
        payload = {"model": str(detector.path), "model_sha256": detector.sha256, "images": records}
        atomic_write_text(json_out, json.dumps(payload, indent=2))


@classify_app.command("train")
def classify_train(
    dataset: Annotated[Path, typer.Argument(help="dataset folder (train and val splits are used)")],
    out_dir: Annotated[Path, typer.Option("--out", help="new run folder")],
    detector: Annotated[Path | None, typer.Option(help="stage-1 detector (default: shipped)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    epochs: Annotated[int, typer.Option(help="maximum epochs (early stopping on validation AUC)")] = 60,
    share_branches: Annotated[bool, typer.Option(help="one Mini-ResNet shared by all regions")] = False,
    target_sensitivity: Annotated[
        float | None, typer.Option(help="choose the threshold for this validation sensitivity (screening)")
    ] = None,
    head_size: Annotated[
        str, typer.Option(help="region sizes relative to the regions' 'span' or the 'skull' short axis")
    ] = "span",
    crop_scale: Annotated[
        str,
        typer.Option(
            help="region crops cut round the detector's 'box', 'head'-scaled (a structure's size "
            "relative to the head shows in its crop) or 'age'-scaled (with --ga: size for age)"
        ),
    ] = "box",
    ga: Annotated[
        bool,
        typer.Option(
            "--ga/--no-ga",
            help="also read each case's gestational age (cases.csv ga_weeks); optional at prediction",
        ),
    ] = False,
    baseline: Annotated[
        bool, typer.Option(help="also train the whole-image baseline (same split, budget and seed)")
    ] = True,
) -> None:
    """Train HexaNet on the detector's regions; the threshold is chosen on validation data."""
    from neurosono.classify.train import CROP_SCALES, HEAD_SIZES, ClassifyTrainConfig, train_classifier
    from neurosono.data.atomic import OutputExistsError
    from neurosono.detect.model import DetectorFileError, RegionMismatchError
    from neurosono.models import DEFAULT_DETECTOR

    if head_size not in HEAD_SIZES:
        raise fail(f"--head-size must be one of {', '.join(HEAD_SIZES)}, not {head_size!r}", EXIT_BAD_INPUT)
    if crop_scale == "age" and not ga:
        raise fail("--crop-scale age needs --ga (the crops are scaled by each case's age)", EXIT_BAD_INPUT)
    if crop_scale not in CROP_SCALES:
        raise fail(
            f"--crop-scale must be one of {', '.join(CROP_SCALES)}, not {crop_scale!r}", EXIT_BAD_INPUT
        )
    config = ClassifyTrainConfig(
        seed=seed,
        epochs=epochs,
        share_branches=share_branches,
        target_sensitivity=target_sensitivity,
        head_size=head_size,
        gestational_age=ga,
        crop_scale=crop_scale,
    )
    try:
        run_dir = train_classifier(dataset, detector or DEFAULT_DETECTOR, out_dir, config, baseline=baseline)
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except (DetectorFileError, RegionMismatchError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    record = json.loads((run_dir / "classifier.json").read_text())
    auc = record["val_metrics"]["auc"]
    out.print(
        f"run: {run_dir}  best epoch {record['best_epoch']}, validation AUC {auc['value']:.3f} "
        f"(95% CI {auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f}), threshold {record['threshold']:.3f}"
    )


@classify_app.command("eval")
def classify_eval(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="HexaNet run folder")],
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    split: Annotated[str, typer.Option(help="split to evaluate ('all' for every case)")] = "test",
    detector: Annotated[
        Path | None, typer.Option(help="stage-1 detector (default: the one it was trained with)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write metrics.json here")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--out", help="folder for metrics, predictions, ROC, reliability")
    ] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    scheme: Annotated[
        str, typer.Option(help="holdout: the run's model on --split; kfold or center: retrain per fold")
    ] = "holdout",
    folds: Annotated[int, typer.Option(help="folds for --scheme kfold")] = 3,
    baseline: Annotated[
        bool, typer.Option(help="with kfold/center, also retrain the whole-image baseline per fold")
    ] = True,
    epochs: Annotated[
        int | None, typer.Option(help="with kfold/center: maximum epochs per fold [default: the run's]")
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="with kfold/center: early-stopping patience [default: the run's]")
    ] = None,
    withhold_ga: Annotated[
        bool, typer.Option(help="evaluate a gestational-age model as if no case's age were known")
    ] = False,
) -> None:
    """AUC, sensitivity, specificity, F1, accuracy, PPV, NPV with bootstrap, Wilson and DeLong CIs."""
    from neurosono.classify.evaluate import evaluate_classifier
    from neurosono.data.atomic import atomic_write_text
    from neurosono.detect.model import RegionMismatchError

    record_file = run_dir / "classifier.json"
    if not record_file.exists():
        raise fail(f"{run_dir}: not a HexaNet run folder (no classifier.json)", EXIT_BAD_INPUT)
    det = _load_detector(detector or _training_detector(record_file))
    ds = _load_dataset(dataset)
    if scheme in ("kfold", "center"):
        if withhold_ga:
            raise fail("--withhold-ga applies to --scheme holdout", EXIT_BAD_INPUT)
        budget = {k: v for k, v in (("epochs", epochs), ("patience", patience)) if v is not None}
        _cross_validate(run_dir, ds, det, scheme, folds, n_boot, json_out, baseline, budget)
        return
    if scheme != "holdout":
        raise fail(f"--scheme must be holdout, kfold or center, not {scheme!r}", EXIT_BAD_INPUT)
    try:
        metrics = evaluate_classifier(
            run_dir,
            ds,
            det,
            None if split == "all" else split,
            n_boot,
            seed,
            report_dir,
            withhold_ga=withhold_ga,
        )
    except (RegionMismatchError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    table = Table(
        title=f"HexaNet on {ds.spec.name}, split {split}: "
        f"{metrics['n_abnormal']} abnormal, {metrics['n_normal']} normal"
    )
    for column in ("metric", "value", "count", "95% CI (bootstrap)", "Wilson / DeLong"):
        table.add_column(column)
    for key in ("auc", "sensitivity", "specificity", "f1", "accuracy", "ppv", "npv"):
        m = metrics.get(key)
        if not m or m["value"] is None:
            continue
        other = m.get("ci95_wilson") or m.get("ci95_delong")
        table.add_row(
            key,
            f"{m['value']:.3f}",
            m.get("count", ""),
            f"{m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}",
            f"{other[0]:.3f}-{other[1]:.3f}" if other else "",
        )
    out.print(table)
    out.print(f"threshold {metrics['threshold']:.3f} ({metrics['threshold_rule']})")
    out.print(f"gestational age: {metrics['gestational_age']}")
    if json_out:
        atomic_write_text(json_out, json.dumps(metrics, indent=2))


def _cross_validate(
    run_dir: Path,
    ds,
    det,
    scheme: str,
    folds: int,
    n_boot: int,
    json_out: Path | None,
    baseline: bool,
    budget: dict,
) -> None:
    from neurosono.classify.crossval import KEYS, cross_validate
    from neurosono.classify.train import ClassifyTrainConfig, head_size_of
    from neurosono.data.atomic import atomic_write_text
    from neurosono.data.split import SplitError
    from neurosono.detect.model import RegionMismatchError

    record = json.loads((run_dir / "classifier.json").read_text())
    config = ClassifyTrainConfig(**{**record["config"], "head_size": head_size_of(record), **budget})
    try:
        result = cross_validate(
            ds, det, scheme, config, folds=folds, with_baseline=baseline, n_boot=n_boot, progress=True
        )
    except (RegionMismatchError, SplitError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    for model_name in ("hexanet", "baseline"):
        if model_name not in result:
            continue
        table = Table(title=f"{model_name}: {scheme} cross-validation on {ds.spec.name}")
        table.add_column("fold")
        table.add_column("n (abn.)")
        for key in KEYS:
            table.add_column(key)
        for fold in result[model_name]["per_fold"]:
            table.add_row(
                str(fold["fold"]),
                f"{fold['n']} ({fold['n_abnormal']})",
                *[f"{fold[k]:.3f}" if fold.get(k) is not None else "-" for k in KEYS],
            )
        mean_sd = result[model_name]["mean_sd"]
        table.add_row(
            "mean ± sd",
            "",
            *[f"{mean_sd[k]['mean']:.3f} ± {mean_sd[k]['sd']:.3f}" if k in mean_sd else "-" for k in KEYS],
        )
        pooled = result[model_name]["pooled_out_of_fold"]
        table.add_row(
            "pooled",
            str(pooled["n_normal"] + pooled["n_abnormal"]),
            *[
                f"{pooled[k]['value']:.3f} ({pooled[k]['ci95'][0]:.2f}-{pooled[k]['ci95'][1]:.2f})"
                if pooled.get(k) and pooled[k]["value"] is not None
                else "-"
                for k in KEYS
            ],
        )
        out.print(table)
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2))


def _metric_cell(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    lo, hi = entry["ci95"]
    return f"{entry['value']:.3f} {entry.get('count', '')} ({lo:.2f}-{hi:.2f})"


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="HexaNet run folder (with its baseline)")],
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    split: Annotated[str, typer.Option(help="split to evaluate ('all' for every case)")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="write all metrics here")] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    withhold_ga: Annotated[
        bool, typer.Option(help="evaluate gestational-age models as if no case's age were known")
    ] = False,
) -> None:
    """Both stages on one split: detector mAP, then HexaNet against the whole-image baseline."""
    from neurosono.classify.baseline import baseline_scores, load_baseline
    from neurosono.classify.evaluate import evaluate_classifier
    from neurosono.classify.train import gather_cases
    from neurosono.data.atomic import atomic_write_text
    from neurosono.detect.evaluate import evaluate_detector
    from neurosono.evaluate.metrics import classification_metrics

    record_file = run_dir / "classifier.json"
    if not record_file.exists():
        raise fail(f"{run_dir}: not a HexaNet run folder (no classifier.json)", EXIT_BAD_INPUT)
    det = _load_detector(_training_detector(record_file))
    ds = _load_dataset(dataset)
    chosen = None if split == "all" else split
    cases = [c for c in ds.cases if chosen is None or c.split == chosen]
    if not cases:
        raise fail(f"{ds.root}: no cases in split {split!r}", EXIT_BAD_INPUT)
    try:
        detection = evaluate_detector(det, ds, chosen, n_boot=n_boot)
        items = gather_cases(ds, det, cases)  # one detector pass serves HexaNet and the baseline
        hexanet = evaluate_classifier(run_dir, ds, det, chosen, n_boot, items=items, withhold_ga=withhold_ga)
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    result = {"detector": detection, "hexanet": hexanet}
    if (run_dir / "baseline" / "baseline.pt").exists():
        model, threshold = load_baseline(run_dir / "baseline")
        labels = [i.label for i in items]
        scores = baseline_scores(model, items, withhold_ga=withhold_ga)
        result["baseline"] = classification_metrics(labels, scores, threshold, n_boot)
    m = detection["map50"]
    out.print(
        f"stage 1 detector: mAP@0.5 {m['value']:.3f} (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}) "
        f"on {detection['n_images']} images"
    )
    table = Table(
        title=f"stage 2 on {ds.spec.name}, split {split}: "
        f"{hexanet['n_abnormal']} abnormal, {hexanet['n_normal']} normal"
    )
    table.add_column("metric")
    for name in ("HexaNet", "whole-image baseline") if "baseline" in result else ("HexaNet",):
        table.add_column(f"{name} (95% CI)")
    for key in ("auc", "sensitivity", "specificity", "f1", "accuracy", "ppv", "npv"):
        cells = []
        for model_name in ("hexanet", "baseline"):
            entry = result.get(model_name, {}).get(key)
            if model_name in result:
                cells.append(_metric_cell(entry))
        table.add_row(key, *cells)
    out.print(table)
    out.print(f"gestational age: {hexanet['gestational_age']}")
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2))


@app.command()
def predict(
    tv: Annotated[
        Path | None, typer.Option(help="transventricular image (PNG, JPEG, BMP, TIFF or DICOM)")
    ] = None,
    tc: Annotated[Path | None, typer.Option(help="transcerebellar image")] = None,
    model: Annotated[
        Path | None, typer.Option(help="model folder (default: the shipped phantom models)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the result as JSON")] = None,
    overlay: Annotated[Path | None, typer.Option(help="folder for images with the regions drawn")] = None,
    frame: Annotated[int | None, typer.Option(help="frame of a multi-frame DICOM (0-based)")] = None,
    max_pixels: Annotated[int, typer.Option(help="refuse larger images before decoding")] = 50_000_000,
    spacing_mm: Annotated[
        float | None, typer.Option(help="pixel spacing in mm for images that do not carry one (PNG, JPEG)")
    ] = None,
    ga_weeks: Annotated[
        str | None,
        typer.Option(
            help="gestational age: weeks (21.4) or weeks+days (21+3), for models trained with it "
            "(with --batch: the cases.csv ga_weeks column)"
        ),
    ] = None,
    batch: Annotated[
        Path | None, typer.Option(help="cases.csv or a folder of NAME_tv.* / NAME_tc.* images")
    ] = None,
    results: Annotated[
        Path | None, typer.Option("--out", help="batch results CSV (resumed if it exists)")
    ] = None,
    runtime: Annotated[
        str,
        typer.Option(
            help="torch, or onnx (onnxruntime; --model is then a 'neurosono export' folder, "
            "and the shipped models are exported once into the cache folder)"
        ),
    ] = "torch",
) -> None:
    """P(abnormal) and the decision for new cases, with per-region boxes, attributions and warnings."""
    from neurosono.checkpoints import ModelFileError
    from neurosono.classify.gestation import parse_ga
    from neurosono.data.atomic import atomic_write_text
    from neurosono.data.images import ImageReadError
    from neurosono.pipeline.batch import cases_from, run_batch, write_overlays
    from neurosono.pipeline.predict import Pipeline

    try:
        ga = parse_ga(ga_weeks)
    except ValueError as exc:
        raise fail(f"--ga-weeks: {exc}", EXIT_BAD_INPUT) from None

    if overlay is not None:
        try:
            overlay.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(f"{overlay}: cannot create the overlay folder ({exc.strerror})", EXIT_OUTPUT) from None
        if not os.access(overlay, os.W_OK):
            raise fail(f"{overlay}: overlay folder is not writable", EXIT_OUTPUT)
    if runtime not in ("torch", "onnx"):
        raise fail(f"--runtime must be torch or onnx, not {runtime!r}", EXIT_BAD_INPUT)
    try:
        pipeline = Pipeline.load(model, runtime=runtime, notify=lambda m: err.print(m, highlight=False))
    except ModelFileError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    if batch is not None:
        if results is None:
            raise fail("--batch needs --out results.csv", EXIT_BAD_INPUT)
        if not batch.exists():
            raise fail(f"{batch}: does not exist", EXIT_BAD_INPUT)
        if ga is not None:
            raise fail("--ga-weeks is for one case; with --batch, fill cases.csv's ga_weeks", EXIT_BAD_INPUT)
        failures = []
        from neurosono.progress import track

        try:
            cases = cases_from(batch)
            for case, error in track(
                run_batch(pipeline, cases, results, frame), "predicting cases", total=len(cases)
            ):
                if error:
                    failures.append(f"{case.case_id}: {error}")
        except ValueError as exc:
            raise fail(str(exc), EXIT_BAD_INPUT) from None
        out.print(f"{len(cases)} cases, results in {results}; {len(failures)} failed")
        for line in failures:
            err.print(f"  {line}", highlight=False)
        out.print(f"[bold]{pipeline.model_info['notice']}[/]")
        if failures:
            raise typer.Exit(EXIT_PARTIAL)
        return
    if tv is None and tc is None:
        raise fail("give --tv and/or --tc (or --batch)", EXIT_BAD_INPUT)
    try:
        spacing = {"tv": spacing_mm, "tc": spacing_mm} if spacing_mm else None
        result = pipeline.predict(tv, tc, frame=frame, max_pixels=max_pixels, spacing_mm=spacing, ga_weeks=ga)
    except ImageReadError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    given = f", gestational age {ga:.1f} weeks" if ga is not None and pipeline.uses_ga else ""
    out.print(
        f"P(abnormal) = {result.p_abnormal:.3f} -> [bold]{result.decision}[/] "
        f"(threshold {result.threshold:.3f}{given})"
    )
    for region in result.regions:
        if region.found:
            size = f", {region.size_mm[0]:.1f} x {region.size_mm[1]:.1f} mm" if region.size_mm else ""
            out.print(
                f"  {region.region:18s} {region.plane.upper()} conf {region.confidence:.2f}{size}, "
                f"attribution {region.attribution:+.3f}"
            )
        else:
            out.print(f"  {region.region:18s} not found, attribution {region.attribution:+.3f}")
    for warning in result.warnings:
        out.print(f"[yellow]warning:[/] {warning}")
    out.print(f"[bold]{result.model['notice']}[/]")
    if json_out:
        try:
            atomic_write_text(json_out, result.to_json())
        except OSError as exc:
            raise fail(f"{json_out}: cannot write ({exc.strerror})", EXIT_OUTPUT) from None
    if overlay is not None:
        for path in write_overlays(result, overlay):
            out.print(f"overlay: {path}")


@app.command(name="export")
def export_model(
    out_dir: Annotated[Path, typer.Option("--out", help="new folder for the exported files")],
    fmt: Annotated[str, typer.Option("--format", help="export format (onnx)")] = "onnx",
    model: Annotated[
        Path | None, typer.Option(help="model folder (default: the shipped phantom models)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier export in OUT")] = False,
    fixed_size: Annotated[
        bool,
        typer.Option(
            help="detector input fixed at 1x3xIMGSZxIMGSZ (static shapes; non-square images are then "
            "padded to a square, unlike torch, and results differ a little)"
        ),
    ] = False,
) -> None:
    """Export both stages for deployment: detector.onnx, hexanet.onnx and onnx.json."""
    from neurosono.checkpoints import ModelFileError
    from neurosono.data.atomic import OutputExistsError
    from neurosono.pipeline.deploy import export_onnx, read_manifest

    if fmt != "onnx":
        raise fail(f"--format must be onnx, not {fmt!r}", EXIT_BAD_INPUT)
    start = time.perf_counter()
    try:
        export_onnx(model, out_dir, overwrite=overwrite, fixed_size=fixed_size)
    except ModelFileError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    manifest = read_manifest(out_dir)
    det, hexa = manifest["detector"], manifest["hexanet"]
    size = "x".join(map(str, det["input"]["images"])) if det["fixed_size"] else f"{det['imgsz']} px, dynamic"
    out.print(
        f"wrote {out_dir}: {det['file']} (input {size}), "
        f"{hexa['file']} ({hexa['n_regions']} regions x {hexa['n_scalars']} scalars, batch dynamic), "
        f"onnx.json; opset {manifest['opset']}, {time.perf_counter() - start:.1f} s",
        highlight=False,
    )
    out.print(
        f"largest difference from torch: detector outputs {det['max_abs_diff_vs_torch']:.2g}, "
        f"HexaNet logits {hexa['max_abs_diff_vs_torch']:.2g}",
        highlight=False,
    )
    out.print(f"use it: neurosono predict --runtime onnx --model {out_dir} ...", highlight=False)


@app.command()
def run(
    dataset: Annotated[
        Path | None,
        typer.Argument(
            help="dataset folder with train/val/test splits (default: a phantom cohort made here)"
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="run folder (new, or an earlier run of this command to resume)")
    ] = Path("runs/demo"),
    quick: Annotated[
        bool, typer.Option(help="60 small cases, 1 detector epoch: an end-to-end check in about 2 minutes")
    ] = False,
    cases: Annotated[int | None, typer.Option(help="phantom cases to generate [default: 319]")] = None,
    seed: Annotated[int, typer.Option(help="random seed for every stage")] = 1,
    detector_init: Annotated[
        str, typer.Option(help="shipped (fine-tune the bundled detector), scratch, or a detector.pt")
    ] = "shipped",
    detector_epochs: Annotated[int | None, typer.Option(help="stage-1 epochs [default: 3]")] = None,
    hexanet_epochs: Annotated[int | None, typer.Option(help="stage-2 maximum epochs [default: 30]")] = None,
) -> None:
    """The main job: train both stages, evaluate on the test split, write a self-contained report.html.

    Stages already done with the same configuration are kept, so an interrupted run resumes.
    """
    from dataclasses import replace

    from neurosono.checkpoints import ModelFileError
    from neurosono.data.atomic import OutputExistsError
    from neurosono.data.format import DatasetFormatError
    from neurosono.pipeline.run import QUICK, RunConfig, run_pipeline

    config = QUICK if quick else RunConfig()
    overrides = {
        "cases": cases,
        "detector_epochs": detector_epochs,
        "hexanet_epochs": hexanet_epochs,
    }
    config = replace(
        config,
        seed=seed,
        detector_init=detector_init,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    if out_dir.exists() and not out_dir.is_dir():
        raise fail(f"{out_dir}: exists and is not a folder", EXIT_OUTPUT)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "run.json").exists():
        raise fail(f"{out_dir}: not empty and not a neurosono run; choose a new --out", EXIT_OUTPUT)
    started = time.perf_counter()
    try:
        record = run_pipeline(
            out_dir, dataset, config, progress=True, log=lambda m: out.print(m, highlight=False)
        )
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except (DatasetFormatError, ModelFileError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    metrics = json.loads((out_dir / "evaluation" / "metrics.json").read_text())
    m, auc = metrics["detector"]["map50"], metrics["hexanet"].get("auc")
    out.print(f"stage 1 test mAP@0.5 {m['value']:.3f} (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})")
    if auc and auc.get("value") is not None:
        sens, spec = metrics["hexanet"]["sensitivity"], metrics["hexanet"]["specificity"]
        line = (
            f"stage 2 test AUC {auc['value']:.3f} (95% CI {auc['ci95'][0]:.2f}-{auc['ci95'][1]:.2f}), "
            f"sensitivity {sens['count']}, specificity {spec['count']}"
        )
        if "baseline" in metrics:
            line += f"; whole-image baseline AUC {metrics['baseline']['auc']['value']:.3f}"
        out.print(line)
    out.print(f"report: {record['report']}  ({time.perf_counter() - started:.0f} s)")


def _register_real() -> None:
    from neurosono.real_cli import register

    register(app, data_app)  # data merge, data dedupe, neurosono real ... (issue 6)


_register_real()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
