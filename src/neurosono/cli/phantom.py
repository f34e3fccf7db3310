"""``neurosono synth``: a phantom cohort of paired TV/TC images with boxes, findings and measurements."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from neurosono.cli.common import (
    DEFAULT,
    EXIT_BAD_INPUT,
    EXIT_OUTPUT,
    LOOKS,
    AddressOpt,
    Engine,
    Look,
    Seed,
    fail,
    out,
)

# The look and framing options, kept apart so that the command reads as what it does.
LookOpt = Annotated[
    Look,
    typer.Option(
        help="realistic: the head in its surroundings, as real scans show it; plain: small square heads"
    ),
]
TTOpt = Annotated[bool, typer.Option(help="add a transthalamic image to every case (realistic look)")]
WideZoom = Annotated[
    bool | None,
    typer.Option(
        "--wide-zoom/--no-wide-zoom",
        help="frame half the heads from a third of the width to all of it, as real scans do "
        "[default: on for the realistic look]",
        show_default=False,
    ),
]
ZoomRange = Annotated[
    str,
    typer.Option(
        help="the wide zoom's range: the fractions of the width the head fills, LOW,HIGH "
        "(above 1: heads larger than the image, cut at its edges)"
    ),
]
SquareShare = Annotated[
    float,
    typer.Option(
        help="share of the images stretched to squares, as some exported real sets are "
        "(their spacing is left blank)"
    ),
]

DisplayShare = Annotated[
    float,
    typer.Option(
        help="share of the images exported as public sets hold them: gain crushed or greys lifted, "
        "whole frames turned with filled corners (see --turn-boxes)"
    ),
]

TurnBoxes = Annotated[
    str,
    typer.Option(
        help="boxes of a turned frame: tight (each region boxed again) or loose (the box round each "
        "turned box, as augmentation tools leave them)"
    ),
]


def _zoom_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise fail(
            f"--zoom-range: give two fractions LOW,HIGH (e.g. 0.32,1), not {text!r}", EXIT_BAD_INPUT
        ) from None
    return low, high


def synth(
    out_arg: Annotated[Path | None, typer.Argument(metavar="[OUT]", hidden=True)] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="new folder for the cohort")] = None,
    cases: Annotated[int, typer.Option(help="number of cases (each one TV + one TC image)")] = 319,
    seed: Seed = DEFAULT,
    abnormal_fraction: Annotated[float, typer.Option(help="share of abnormal cases")] = 0.32,
    centers: Annotated[int, typer.Option(help="number of centres (machine styles)")] = 9,
    size: Annotated[int, typer.Option(help="image width in pixels")] = 512,
    look: LookOpt = Look.realistic,
    tt: TTOpt = False,
    wide_zoom: WideZoom = None,
    zoom_range: ZoomRange = "0.32,1",
    square_share: SquareShare = 0.0,
    display_share: DisplayShare = 0.0,
    turn_boxes: TurnBoxes = "tight",
    preview: Annotated[Path | None, typer.Option(help="also write a contact sheet PNG here")] = None,
    workers: Annotated[
        int, typer.Option(help="worker processes, or a local Ray cluster's CPUs (0: one per CPU core)")
    ] = 0,
    engine: Annotated[
        Engine,
        typer.Option(help="local: processes on this machine; ray: Ray tasks (a cluster with --address)"),
    ] = Engine.local,
    address: AddressOpt = None,
) -> None:
    """Generate a phantom cohort (same seed, same cohort, whatever the number of workers)."""
    from neurosono.core.atomic import OutputExistsError
    from neurosono.core.cluster import RayMissingError
    from neurosono.core.progress import track
    from neurosono.phantom.cohort import CohortConfig, generate_cohort

    target = out_dir or out_arg
    if target is None:
        raise fail("give the new cohort folder with --out", EXIT_BAD_INPUT)
    if address and engine is not Engine.ray:
        raise fail("--address goes with --engine ray", EXIT_BAD_INPUT)
    config = CohortConfig(
        cases,
        seed,
        abnormal_fraction,
        centers,
        size,
        LOOKS[look],
        tt,
        wide_zoom,
        _zoom_range(zoom_range),
        square_share,
        display_share,
        turn_boxes,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    start = time.perf_counter()
    try:
        progress = iter(track(range(cases), "rendering cases", total=cases))
        dataset = generate_cohort(
            target,
            config,
            workers=workers or None,
            on_case=lambda _: next(progress, None),
            engine=engine.value,
            address=address,
        )
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except RayMissingError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    elapsed = time.perf_counter() - start
    n_abnormal = sum(c.label == "abnormal" for c in dataset.cases)
    out.print(
        f"wrote {len(dataset.cases)} cases ({n_abnormal} abnormal, {len(dataset.cases) - n_abnormal} normal) "
        f"to {target} in {elapsed:.1f} s ({len(dataset.cases) / elapsed:.1f} cases/s)"
    )
    if preview is not None:
        from neurosono.data.preview import write_contact_sheet

        write_contact_sheet(dataset, preview)
        out.print(f"contact sheet: {preview}")
