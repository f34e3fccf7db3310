"""``neurosono predict`` and ``neurosono export``: the pipeline on new cases, and for deployment."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from neurosono.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OUTPUT,
    EXIT_PARTIAL,
    ExportFormat,
    Runtime,
    err,
    fail,
    load_dataset,
    out,
    write_json,
)

ModelOpt = Annotated[Path | None, typer.Option(help="model folder [default: the shipped phantom models]")]


def predict(
    tv: Annotated[
        Path | None, typer.Option(help="transventricular image (PNG, JPEG, BMP, TIFF or DICOM)")
    ] = None,
    tc: Annotated[Path | None, typer.Option(help="transcerebellar image")] = None,
    model: ModelOpt = None,
    runtime: Annotated[
        Runtime,
        typer.Option(help="onnx: onnxruntime, --model a 'neurosono export' folder; int8: its int8 form"),
    ] = Runtime.torch,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the prediction as JSON")] = None,
    overlay: Annotated[
        Path | None, typer.Option(help="folder for the images with their regions drawn")
    ] = None,
    frame: Annotated[int | None, typer.Option(help="frame of a multi-frame DICOM (0-based)")] = None,
    max_pixels: Annotated[int, typer.Option(help="refuse larger images before decoding")] = 50_000_000,
    spacing_mm: Annotated[
        float | None, typer.Option(help="pixel spacing in mm for images that carry none (PNG, JPEG)")
    ] = None,
    ga_weeks: Annotated[
        str | None, typer.Option(help="gestational age: weeks (21.4) or weeks+days (21+3)")
    ] = None,
    batch: Annotated[
        Path | None,
        typer.Option(
            help="a cases.csv (its ga_weeks and spacings are used) or a folder of NAME_tv.* / NAME_tc.*"
        ),
    ] = None,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="batch results CSV (resumed if it exists)")
    ] = None,
    csv_old: Annotated[Path | None, typer.Option("--out", hidden=True)] = None,
    sr: Annotated[
        Path | None,
        typer.Option("--sr", help="write the biometry as a DICOM SR (the TV image must be DICOM)"),
    ] = None,
) -> None:
    """P(abnormal) and the decision for new cases, with per-region boxes, attributions and warnings."""
    from neurosono.classify.gestation import parse_ga
    from neurosono.core.atomic import writable_folder
    from neurosono.pipeline.predict import Pipeline

    try:
        ga = parse_ga(ga_weeks)
    except ValueError as exc:
        raise fail(f"--ga-weeks: {exc}", EXIT_BAD_INPUT) from None
    results = csv_out or csv_old
    if batch is not None and results is None:
        raise fail("--batch needs --csv results.csv", EXIT_BAD_INPUT)
    if batch is not None and ga is not None:
        raise fail("--ga-weeks is for one case; with --batch, fill cases.csv's ga_weeks", EXIT_BAD_INPUT)
    if batch is None and tv is None and tc is None:
        raise fail("give --tv and/or --tc (or --batch)", EXIT_BAD_INPUT)
    try:
        if overlay is not None:
            writable_folder(overlay, "overlay")
    except PermissionError as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    try:
        pipeline = Pipeline.load(model, runtime=runtime.value, notify=lambda m: err.print(m))
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    if batch is not None:
        _predict_batch(pipeline, batch, results, frame)
        return
    try:
        spacing = {"tv": spacing_mm, "tc": spacing_mm} if spacing_mm else None
        result = pipeline.predict(tv, tc, frame=frame, max_pixels=max_pixels, spacing_mm=spacing, ga_weeks=ga)
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    _print_prediction(result, ga if pipeline.uses_ga else None)
    write_json(json_out, result.to_dict())
    if sr is not None:
        _write_sr(result, tv, sr, tc)
    if overlay is not None:
        from neurosono.pipeline.batch import write_overlays

        for path in write_overlays(result, overlay):
            out.print(f"overlay: {path}")


def _predict_batch(pipeline, batch: Path, results: Path, frame: int | None) -> None:
    from neurosono.pipeline.batch import predict_batch

    try:
        summary = predict_batch(pipeline, batch, results, frame, progress=True)
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except OSError as exc:
        raise fail(f"{results}: cannot write ({exc.strerror or exc})", EXIT_OUTPUT) from None
    out.print(f"{summary.n_cases} cases, results in {results}; {len(summary.failures)} failed")
    for line in summary.failures:
        err.print(f"  {line}")
    out.print(f"[bold]{escape(pipeline.model_info['notice'])}[/]", markup=True)
    if summary.failures:
        raise typer.Exit(EXIT_PARTIAL)


def _print_prediction(result, ga: float | None) -> None:
    given = f", gestational age {ga:.1f} weeks" if ga is not None else ""
    if result.min_support is not None:
        given += f"; stage-1 support {result.support:.2f}, answers from {result.min_support:.2f}"
    out.print(
        f"P(abnormal) = {result.p_abnormal:.3f} -> [bold]{result.decision}[/] "
        f"(threshold {result.threshold:.3f}{given})",
        markup=True,
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
    if result.biometry is not None:
        _print_biometry(result.biometry)
    for warning in result.warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}", markup=True)
    out.print(f"[bold]{escape(result.model['notice'])}[/]", markup=True)


def _write_sr(result, tv: Path | None, sr: Path, tc: Path | None = None) -> None:
    from neurosono.measure.sr import ReportError, write_report

    if tv is None or result.biometry is None:
        raise fail("--sr needs a TV image and the head model", EXIT_BAD_INPUT)
    try:
        planes = {m: box["plane"] for m, box in result.biometry.get("structure_boxes", {}).items()}
        from neurosono.core.images import is_dicom

        tc_dicom = tc if tc is not None and is_dicom(tc) else None
        out.print(f"SR: {write_report(result.biometry['values'], tv, sr, planes, tc_dicom)}")
    except ReportError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except (FileExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None


def _print_biometry(biometry: dict) -> None:
    values, centiles = biometry["values"], biometry["centiles"]
    parts = []
    for name in ("hc_mm", "bpd_mm", "ofd_mm"):
        if name in values:
            centile = f" (centile {centiles[name]['centile']:.0f})" if name in centiles else ""
            parts.append(f"{name.removesuffix('_mm').upper()} {values[name]:.1f} mm{centile}")
    if "cephalic_index" in values:
        parts.append(f"CI {values['cephalic_index']:.2f}")
    if "hc_mm" in biometry["absent"]:
        parts.append(f"HC absent: {biometry['absent']['hc_mm']}")
    age = biometry["ga_weeks"]
    if age is not None and biometry["ga_source"] != "given":
        parts.append(f"age {age:.1f} weeks {biometry['ga_source']}")
    out.print("  biometry: " + ("; ".join(parts) if parts else "none"))
    from neurosono.measure.structures import STRUCTURE_LABELS

    structures = []
    for name, label in STRUCTURE_LABELS.items():
        if name in values:
            centile = f" (centile {centiles[name]['centile']:.0f})" if name in centiles else ""
            structures.append(f"{label} {values[name]:.1f} mm{centile}")
        elif name in biometry["absent"]:
            structures.append(f"{label} absent: {biometry['absent'][name]}")
    out.print("  structures: " + "; ".join(structures))
    found = [h["finding"] for h in biometry["hints"] if h["present"]]
    out.print("  hints (beside P(abnormal), not instead): " + (", ".join(found) if found else "none"))


def export(
    out_dir: Annotated[Path, typer.Option("--out", help="new folder for the exported files")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="export format")] = ExportFormat.onnx,
    model: ModelOpt = None,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier export in OUT")] = False,
    fixed_size: Annotated[
        bool,
        typer.Option(
            help="detector input fixed at 1x3xIMGSZxIMGSZ (static shapes; "
            "non-square images then differ a little)"
        ),
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="quantise to int8 (calibrated on phantoms); each file stays int8 only if it keeps "
            "fp32's accuracy on a check cohort",
        ),
    ] = False,
    calibration: Annotated[
        Path | None, typer.Option(help="with --int8: dataset to calibrate on (default: a phantom cohort)")
    ] = None,
    check: Annotated[
        Path | None,
        typer.Option(help="with --int8: dataset to check accuracy on (default: another phantom cohort)"),
    ] = None,
) -> None:
    """Export both stages for deployment: detector.onnx, hexanet.onnx and onnx.json."""
    from neurosono.core.atomic import OutputExistsError
    from neurosono.pipeline.export import export_onnx
    from neurosono.pipeline.onnx_files import read_manifest

    if not int8 and (calibration or check):
        raise fail("--calibration and --check go with --int8", EXIT_BAD_INPUT)
    if int8 and fixed_size:
        raise fail("--int8 quantises the dynamic-size export; leave out --fixed-size", EXIT_BAD_INPUT)
    start = time.perf_counter()
    try:
        if int8:
            export_int8_files(model, out_dir, overwrite, calibration, check)
        else:
            export_onnx(model, out_dir, overwrite=overwrite, fixed_size=fixed_size)
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    manifest = read_manifest(out_dir)
    det, hexa = manifest["detector"], manifest["hexanet"]
    size = "x".join(map(str, det["input"]["images"])) if det["fixed_size"] else f"{det['imgsz']} px, dynamic"
    out.print(
        f"wrote {out_dir}: {det['file']} (input {size}), "
        f"{hexa['file']} ({hexa['n_regions']} regions x {hexa['n_scalars']} scalars, batch dynamic), "
        + "".join(f"{entry['file']}, " for entry in manifest.get("biometry", {}).values())
        + f"onnx.json; opset {manifest['opset']}, {time.perf_counter() - start:.1f} s"
    )
    out.print(
        f"largest difference from torch: detector outputs {det['max_abs_diff_vs_torch']:.2g}, "
        f"HexaNet logits {hexa['max_abs_diff_vs_torch']:.2g}"
    )
    if int8:
        from neurosono.pipeline.quantize import record_lines

        for line in record_lines(manifest["int8"]):
            out.print(line)
    runtime = "int8" if int8 else "onnx"
    out.print(f"use it: neurosono predict --runtime {runtime} --model {out_dir} ...")


def export_int8_files(model, out_dir: Path, overwrite: bool, calibration, check) -> None:
    from neurosono.core.progress import console
    from neurosono.pipeline.predict import Pipeline
    from neurosono.pipeline.quantize import QuantizationRefusedError, export_int8

    for path in (calibration, check):
        if path is not None:
            load_dataset(path)  # a clear message for a folder that is no dataset
    try:
        export_int8(
            model,
            out_dir,
            overwrite,
            calibration,
            check,
            notify=lambda m: console.print(f"int8: {m}", highlight=False),
            load=lambda folder: Pipeline.load(folder, runtime="onnx", notify=lambda m: None),
        )
    except QuantizationRefusedError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
