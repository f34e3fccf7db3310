"""``neurosono export``: both stages as ONNX files for deployment, optionally int8."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from neurosono.cli.common import EXIT_BAD_INPUT, EXIT_OUTPUT, ExportFormat, fail, load_dataset, out
from neurosono.cli.predict import ModelOpt


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
