"""``neurosono measure train`` and ``measure train-structures``: the head and structure models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurosono.cli.common import EXIT_BAD_INPUT, EXIT_OUTPUT, Seed, fail, out


def train(
    datasets: Annotated[list[Path], typer.Argument(help="datasets with head masks or phantom head geometry")],
    out_dir: Annotated[Path, typer.Option("--out", help="new run folder")],
    epochs: Annotated[int, typer.Option(help="maximum epochs")] = 60,
    batch: Annotated[int, typer.Option(help="batch size")] = 16,
    lr: Annotated[float, typer.Option(help="peak learning rate (one-cycle)")] = 2e-3,
    patience: Annotated[int, typer.Option(help="stop after this many epochs without a better val HC")] = 15,
    max_per_dataset: Annotated[int | None, typer.Option(help="cap each dataset's train images")] = None,
    init: Annotated[
        Path | None, typer.Option(help="start from this head model (file or run) instead of random weights")
    ] = None,
    input_size: Annotated[
        str, typer.Option(help="width x height the network sees a framed image at")
    ] = "192x144",
    widths: Annotated[str, typer.Option(help="the U-Net's channels at each level, comma-separated")] = (
        "8,16,32,64,64"
    ),
    zoom_views: Annotated[
        int, typer.Option(help="frames round the head kept per training image, beside the whole image")
    ] = 1,
    zoom_margin: Annotated[
        str, typer.Option(help="range of those frames' margins, times the head's box: LOW,HIGH")
    ] = "1.1,1.6",
    seed: Seed = 0,
) -> None:
    """Train the head model (skull outline segmentation, then an ellipse fit) on train, pick on val."""
    from neurosono.core.atomic import OutputExistsError
    from neurosono.data.format import DatasetFormatError
    from neurosono.measure.train import HeadDataError, HeadTrainConfig, train_head_model

    try:
        width, height = (int(v) for v in input_size.lower().split("x"))
        channels = tuple(int(v) for v in widths.split(","))
        low, high = (float(v) for v in zoom_margin.split(","))
    except ValueError:
        raise fail(
            f"--input-size {input_size!r} / --widths {widths!r} / --zoom-margin {zoom_margin!r}: "
            "give e.g. 192x144, 8,16,32,64,64 and 1.1,1.6",
            EXIT_BAD_INPUT,
        ) from None
    step = 2 ** (len(channels) - 1)  # each level halves the size
    fits = width % step == 0 and height % step == 0 and min(width, height) >= 2 * step
    if len(channels) < 2 or min(channels) < 1 or not fits:
        raise fail(
            f"--input-size {input_size} / --widths {widths}: give two or more positive widths and a "
            f"size in multiples of {step} (each of the {len(channels) - 1} poolings halves it)",
            EXIT_BAD_INPUT,
        )
    if zoom_views < 0 or not 1.0 <= low <= high:
        raise fail(
            f"--zoom-views {zoom_views} / --zoom-margin {zoom_margin}: give zero or more views and "
            "margins LOW,HIGH with 1 <= LOW <= HIGH",
            EXIT_BAD_INPUT,
        )
    config = HeadTrainConfig(
        epochs,
        batch,
        lr,
        patience=patience,
        seed=seed,
        max_per_dataset=max_per_dataset,
        init_from=str(init) if init else None,
        input_size=(width, height),
        widths=channels,
        zoom_views=zoom_views,
        zoom_margin=(low, high),
    )
    try:
        record = train_head_model(datasets, out_dir, config)
    except OutputExistsError as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except (HeadDataError, DatasetFormatError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    m = record["val_metrics"]
    out.print(
        f"head model in {out_dir}: best epoch {record['best_epoch']}, val HC MAE {m['hc_mae_mm']} mm, "
        f"Dice {m['dice']} ({m['n']} images), {record['train_seconds']:.0f} s"
    )


def train_structures(
    datasets: Annotated[
        list[Path], typer.Argument(help="datasets with region boxes and true structure sizes")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="new run folder")],
    epochs: Annotated[int, typer.Option(help="maximum epochs")] = 50,
    batch: Annotated[int, typer.Option(help="batch size")] = 64,
    lr: Annotated[float, typer.Option(help="peak learning rate (one-cycle)")] = 2e-3,
    patience: Annotated[int, typer.Option(help="stop after this many epochs without a better val MAE")] = 50,
    max_cases: Annotated[int | None, typer.Option(help="cap each dataset's train cases")] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="start from this structure model (file or run) instead of random weights"),
    ] = None,
    balance_sizes: Annotated[
        float,
        typer.Option(
            help="draw each window with weight density**-P of its true size (0: as they come, "
            "0.5: square-root balance, 1: rare sizes as often as common ones)"
        ),
    ] = 0.0,
    seed: Seed = 0,
) -> None:
    """Train the structure model (atrium, TCD, cisterna magna, CSP width in stage 1's boxes) on
    train, pick on val."""
    from neurosono.core.atomic import OutputExistsError
    from neurosono.data.format import DatasetFormatError
    from neurosono.measure.structures_train import (
        StructureDataError,
        StructureTrainConfig,
        train_structure_model,
    )

    config = StructureTrainConfig(
        epochs,
        batch,
        lr,
        patience=patience,
        seed=seed,
        max_cases=max_cases,
        init_from=str(init) if init else None,
        balance_sizes=balance_sizes,
    )
    try:
        record = train_structure_model(datasets, out_dir, config)
    except OutputExistsError as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except (StructureDataError, DatasetFormatError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    m = record["val_metrics"]
    per = ", ".join(f"{k} {v}" for k, v in m["mae_mm"].items())
    in_view = f", in-view call right on {m['in_view_accuracy']:.1%}" if "in_view_accuracy" in m else ""
    out.print(
        f"structure model in {out_dir}: best epoch {record['best_epoch']}, val MAE (mm) {per} "
        f"({m['n']} windows){in_view}, {record['train_seconds']:.0f} s"
    )
