"""``neurosono predict``: the pipeline on new cases, one pair or a batch (local or on Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from neurosono.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OUTPUT,
    EXIT_PARTIAL,
    AddressOpt,
    Engine,
    Runtime,
    err,
    fail,
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
        typer.Option(
            help="onnx: onnxruntime, --model a 'neurosono export' folder; int8: its int8 form; "
            "openvino: an export's files (fp32 or int8) compiled by OpenVINO"
        ),
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
    results_out: Annotated[
        Path | None,
        typer.Option("--out", help="batch results: a .csv or .parquet file (resumed if it exists)"),
    ] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="batch results CSV (as --out)")] = None,
    engine: Annotated[
        Engine, typer.Option(help="batch engine: local (this process) or ray (Ray Data actors)")
    ] = Engine.local,
    address: AddressOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="with --engine ray: actors [default: one per CPU of the cluster]"),
    ] = None,
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
    results = results_out or csv_out
    _check_inputs(tv, tc, batch, results, ga, engine is not Engine.local or bool(address or workers))
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
        ray = {"address": address, "workers": workers} if engine is Engine.ray else None
        _predict_batch(pipeline, (model, runtime.value), batch, results, frame, ray)
        return
    try:
        spacing = {"tv": spacing_mm, "tc": spacing_mm} if spacing_mm else None
        result = pipeline.predict(tv, tc, frame=frame, max_pixels=max_pixels, spacing_mm=spacing, ga_weeks=ga)
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    _print_prediction(result, ga if pipeline.uses_ga else None)
    _write_outputs(result, json_out, sr, overlay, tv, tc)


def _write_outputs(result, json_out: Path | None, sr: Path | None, overlay: Path | None, tv, tc) -> None:
    write_json(json_out, result.to_dict())
    if sr is not None:
        _write_sr(result, tv, sr, tc)
    if overlay is not None:
        from neurosono.pipeline.batch import write_overlays

        for path in write_overlays(result, overlay):
            out.print(f"overlay: {path}")


def _check_inputs(tv, tc, batch: Path | None, results: Path | None, ga, engine_options: bool) -> None:
    if batch is not None and results is None:
        raise fail("--batch needs --out results.csv (or .parquet)", EXIT_BAD_INPUT)
    if batch is None and engine_options:
        raise fail("--engine, --address and --workers go with --batch", EXIT_BAD_INPUT)
    if batch is not None and ga is not None:
        raise fail("--ga-weeks is for one case; with --batch, fill cases.csv's ga_weeks", EXIT_BAD_INPUT)
    if batch is None and tv is None and tc is None:
        raise fail("give --tv and/or --tc (or --batch)", EXIT_BAD_INPUT)


def _predict_batch(pipeline, loaded_from, batch: Path, results: Path, frame, ray: dict | None) -> None:
    """The local engine predicts with ``pipeline``; Ray's actors each load ``loaded_from``
    (model folder, runtime), which ``pipeline`` has just shown to load."""
    from neurosono.pipeline.batch import predict_batch

    try:
        if ray is None:
            summary = predict_batch(pipeline, batch, results, frame, progress=True)
        else:
            from neurosono.pipeline.ray_batch import predict_batch_ray

            model, runtime = loaded_from
            summary = predict_batch_ray(
                model, runtime, batch, results, frame, **ray, progress=True, notify=err.print
            )
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except OSError as exc:
        raise fail(f"{results}: cannot write ({exc.strerror or exc})", EXIT_OUTPUT) from None
    earlier = summary.n_cases - summary.n_predicted
    resumed = f" ({earlier} already in it)" if earlier else ""
    out.print(
        f"{summary.n_cases} cases, results in {results}{resumed}; "
        f"{len(summary.failures)} failed of {summary.n_predicted} predicted now"
    )
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
    stretched = [plane.upper() for plane, given in result.inputs.items() if given.get("stage1_stretched")]
    if stretched:
        images, their = ("image", "its") if len(stretched) == 1 else ("images", "their")
        out.print(
            f"note: stage 1 saw the {' and '.join(stretched)} {images} with {their} grey range stretched "
            "(darker than the detector's training images)"
        )
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
