"""``neurosono realism``: the realism scoreboard of the phantom models against real images."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from neurosono.cli.common import (
    DEFAULT,
    EXIT_BAD_INPUT,
    LOOKS,
    DetectorOpt,
    JsonOut,
    Look,
    NBoot,
    Seed,
    cell,
    fail,
    load_dataset,
    load_detector_or_fail,
    out,
    write_json,
)


def realism(
    real: Annotated[list[Path], typer.Argument(metavar="REAL_DATASET...", help="imported real datasets")],
    phantom: Annotated[
        Path | None, typer.Option(help="phantom dataset to compare [default: a cohort generated here]")
    ] = None,
    phantom_cases: Annotated[int, typer.Option(help="cases of the generated phantom cohort")] = 160,
    look: Annotated[Look, typer.Option(help="look of the generated phantom cohort")] = Look.realistic,
    detector: DetectorOpt = None,
    hexanet: Annotated[
        Path | None,
        typer.Option(help="HexaNet run whose rule says when not to answer [default: shipped]"),
    ] = None,
    most: Annotated[int, typer.Option(help="images per side for the phantom-vs-real discriminators")] = 320,
    epochs: Annotated[int, typer.Option(help="epochs of the CNN discriminator per fold")] = 8,
    sheet: Annotated[Path | None, typer.Option("--png", help="also write a side-by-side sheet here")] = None,
    seed: Seed = DEFAULT,
    n_boot: NBoot = 1000,
    json_out: JsonOut = None,
) -> None:
    """Score the phantom models against real images: head boxes, plane evidence, discriminators."""
    from neurosono.classify.kinds import load_classifier
    from neurosono.evaluate.realism import realism_scoreboard, side_by_side
    from neurosono.models import DEFAULT_DETECTOR, DEFAULT_HEXANET

    datasets = [load_dataset(p) for p in real]
    det = load_detector_or_fail(detector, DEFAULT_DETECTOR)
    try:
        stage2 = load_classifier(hexanet or DEFAULT_HEXANET).meta
    except (ValueError, OSError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    with tempfile.TemporaryDirectory() as tmp:
        if phantom is None:
            from neurosono.phantom.cohort import REALISTIC, CohortConfig, generate_cohort

            code = LOOKS[look]
            config = CohortConfig(cases=phantom_cases, seed=seed, look=code, tt=code == REALISTIC)
            cohort = generate_cohort(Path(tmp) / "phantom", config)
        else:
            cohort = load_dataset(phantom)
        try:
            board = realism_scoreboard(
                datasets, cohort, det, n_boot, seed, most, epochs, progress=True, stage2=stage2
            )
        except ValueError as exc:
            raise fail(str(exc), EXIT_BAD_INPUT) from None
        if sheet is not None:
            side_by_side(datasets, cohort, sheet)
            out.print(f"sheet: {sheet}")
    print_scoreboard(board)
    write_json(json_out, board)


def print_scoreboard(board: dict) -> None:
    table = Table(title=f"realism: {', '.join(board['real_datasets'])} against {board['phantom_dataset']}")
    table.add_column("measure")
    table.add_column("value (95% CI)")
    for name, entry in board["head_map50"].items():
        table.add_row(
            f"fetal_head mAP@0.5 on {name}", cell(entry) if entry.get("value") is not None else entry["note"]
        )
    plane = board["stage1_plane_auc"]
    table.add_row(
        f"stage-1 plane AUC, real TC vs TV ({plane.get('n_tc', 0)} / {plane.get('n_tv', 0)})", cell(plane)
    )
    table.add_row("stage-1 plane AUC, phantom TC vs TV", cell(board["phantom_plane_auc"]))
    for plane_name, region in (("tc", "cerebellum"), ("tv", "cerebellum"), ("tv", "lateral_ventricle")):
        entry = board["regions_found"].get(plane_name, {}).get(region)
        if entry:
            table.add_row(f"{region} found on real {plane_name.upper()} images", cell(entry, count=True))
    for key, where in (("indeterminate_share", "real"), ("phantom_indeterminate_share", "phantom")):
        if board.get(key):
            table.add_row(f"{where} TV/TC images not answered (indeterminate)", cell(board[key], count=True))
    table.add_row("statistics discriminator AUC (phantom vs real)", cell(board["statistics_auc"]))
    table.add_row("CNN discriminator AUC (phantom vs real)", cell(board["discriminator_auc"]))
    table.add_row("style check AUC (normal vs abnormal phantoms)", cell(board["style_check_auc"]))
    out.print(table)
