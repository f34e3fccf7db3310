"""What every command shares: exit codes, the consoles, one-line errors, choices, loaders.

Exit codes: 0 success; 1 the data failed validation; 2 bad input or arguments; 3 the output
exists or cannot be written; 4 a batch finished but some cases failed.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from neurosono.core import DEFAULT_SEED

EXIT_INVALID_DATA = 1
EXIT_BAD_INPUT = 2
EXIT_OUTPUT = 3
EXIT_PARTIAL = 4  # a batch finished, but some cases could not be read

# soft_wrap: a line is never broken at the terminal's width (scripts grep messages and paths).
# markup off: paths and messages print as they are; styled lines escape what they interpolate.
out = Console(soft_wrap=True, highlight=False, markup=False)
err = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)


def fail(message: str, code: int) -> typer.Exit:
    """Print a one-line error (whatever the terminal's width) and return the exit to raise."""
    one_line = " ".join(str(message).split())
    err.print(f"[bold red]error:[/] {escape(one_line)}", markup=True)
    return typer.Exit(code)


def group(help_text: str) -> typer.Typer:
    return typer.Typer(
        help=help_text, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )


# ---- choices (shown as choices in --help) ---------------------------------------------------
class Scheme(StrEnum):
    holdout = "holdout"
    kfold = "kfold"
    center = "center"


class CvScheme(StrEnum):
    kfold = "kfold"
    center = "center"


class Kind(StrEnum):
    hexanet = "hexanet"
    whole_image = "whole-image"
    head_crop = "head-crop"


class HeadSize(StrEnum):
    span = "span"
    skull = "skull"
    box = "box"


class CropScale(StrEnum):
    box = "box"
    head = "head"
    age = "age"


class Look(StrEnum):
    realistic = "realistic"
    plain = "plain"


LOOKS = {Look.plain: 1, Look.realistic: 2}  # the generator's look codes (phantom/cohort.py)


class Runtime(StrEnum):
    torch = "torch"
    onnx = "onnx"
    int8 = "int8"
    openvino = "openvino"


class Engine(StrEnum):
    local = "local"
    ray = "ray"


AddressOpt = Annotated[
    str | None,
    typer.Option(help="with --engine ray: a running Ray cluster (auto, HOST:PORT, ray://HOST:10001)"),
]


class Arch(StrEnum):
    yolov5n = "yolov5n"
    yolov5s = "yolov5s"


class ImportFormat(StrEnum):
    roboflow_classification = "roboflow-classification"
    yolo = "yolo"
    hc18 = "hc18"


class ExportFormat(StrEnum):
    onnx = "onnx"


class Task(StrEnum):
    auto = "auto"
    detection = "detection"
    classification = "classification"
    both = "both"


# ---- options with one meaning everywhere ----------------------------------------------------
Seed = Annotated[int, typer.Option(help="random seed")]
BootSeed = Annotated[int, typer.Option("--seed", help="bootstrap seed")]
WithholdGa = Annotated[bool, typer.Option(help="evaluate an age model as if no case's age were known")]
METRIC_KEYS = ("auc", "sensitivity", "specificity", "f1", "accuracy", "ppv", "npv")
NBoot = Annotated[int, typer.Option(help="bootstrap resamples for the 95% CIs")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="also write the result here as JSON")]
Split = Annotated[str, typer.Option(help="split to use ('all' for every case)")]
DetectorOpt = Annotated[
    Path | None, typer.Option("--detector", help="six-region detector, run folder or .pt [default: shipped]")
]
HeadDetectorOpt = Annotated[
    Path | None, typer.Option("--head-detector", help="head detector, run folder or .pt [default: shipped]")
]
DEFAULT = DEFAULT_SEED


def chosen_split(split: str) -> str | None:
    return None if split == "all" else split


def load_dataset(path: Path):
    from neurosono.data.format import Dataset, DatasetFormatError

    try:
        return Dataset.load(path)
    except DatasetFormatError as exc:
        raise fail(f"{exc} (run 'neurosono data check {path}' for a full report)", EXIT_BAD_INPUT) from None


def load_detector_or_fail(path: Path | None, default: Path, what: str = "detector"):
    from neurosono.detect.model import DetectorFileError, load_detector

    try:
        return load_detector(path or default)
    except DetectorFileError as exc:
        hint = "" if path else f" (the shipped {what} is missing; train one with 'neurosono detect train')"
        raise fail(f"{exc}{hint}", EXIT_BAD_INPUT) from None


def write_json(path: Path | None, payload: dict) -> None:
    """Write a result atomically; an unwritable target is exit 3 naming it."""
    from neurosono.core.atomic import atomic_write_text

    if path is None:
        return
    try:
        atomic_write_text(path, json.dumps(payload, indent=2))
    except OSError as exc:
        raise fail(f"{path}: cannot write ({exc.strerror or exc})", EXIT_OUTPUT) from None


def split_model_arg(paths: list[Path], what: str) -> tuple[Path | None, list[Path]]:
    """Positional ``[MODEL] REST...`` (the older spelling): the first path is the model if it is a
    run folder or a .pt file and more paths follow."""
    if not paths:
        raise fail(f"give {what}", EXIT_BAD_INPUT)
    if len(paths) > 1 and (paths[0].is_dir() or paths[0].suffix == ".pt"):
        return paths[0], paths[1:]
    return None, paths


def cell(entry: dict | None, count: bool = False, stacked: bool = False) -> str:
    """'0.931 (0.88-0.97)', with ``count`` '0.925 74 of 80 (0.87-0.98)', ``stacked`` the CI on a
    line of its own; '-' when undefined."""
    if not entry or entry.get("value") is None:
        return "-"
    lo, hi = entry["ci95"]
    counted = f" {entry['count']}" if count and entry.get("count") else ""
    if stacked:
        return f"{entry['value']:.3f}{counted}\n{lo:.2f}-{hi:.2f}"
    return f"{entry['value']:.3f}{counted} ({lo:.2f}-{hi:.2f})"


def metric_table(title: str, metrics: dict, keys: tuple[str, ...]) -> Table:
    """metric | value | count | 95% CI (bootstrap) | Wilson / DeLong, for one model's metrics."""
    table = Table(title=title)
    for column in ("metric", "value", "count", "95% CI (bootstrap)", "Wilson / DeLong"):
        table.add_column(column)
    for key in keys:
        m = metrics.get(key)
        if not isinstance(m, dict) or m.get("value") is None:
            continue
        other = m.get("ci95_wilson") or m.get("ci95_delong")
        table.add_row(
            key,
            f"{m['value']:.3f}",
            m.get("count", ""),
            f"{m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}",
            f"{other[0]:.3f}-{other[1]:.3f}" if other else "",
        )
    return table
