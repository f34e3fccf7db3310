"""``neurosono measure ...``: head biometry with centiles and finding hints; train and score it.

``neurosono measure PATH...`` measures images, pair folders or datasets; ``measure eval``
scores against a dataset's own measurements; ``measure train`` trains the head model and
``measure train-structures`` the structure model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from typer.core import TyperGroup

from neurosono.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OUTPUT,
    EXIT_PARTIAL,
    BootSeed,
    DetectorOpt,
    JsonOut,
    NBoot,
    Split,
    chosen_split,
    err,
    fail,
    out,
    write_json,
)


class _MeasureGroup(TyperGroup):
    """``measure PATH...`` runs the hidden ``images`` command; ``measure eval|train`` as named."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["images", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_MeasureGroup,
    help="Biometry (HC, BPD, OFD, cephalic index; atrium, TCD, cisterna magna, CSP width) with "
    "centiles for age and finding hints.\n\n"
    "neurosono measure PATH... measures images (as TV images), folders of NAME_tv/NAME_tc pairs, "
    "cases.csv files or dataset folders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
HeadModelOpt = Annotated[
    Path | None, typer.Option("--model", help="head model run [default: the shipped one]")
]
StructuresOpt = Annotated[
    Path | None,
    typer.Option("--structures", help="structure model run [default: the shipped one]"),
]
NoStructuresOpt = Annotated[
    bool, typer.Option("--no-structures", help="measure the head only (no atrium, TCD, cisterna magna, CSP)")
]


@app.command("images", hidden=True)
def images(
    paths: Annotated[list[Path], typer.Argument(help="images, pair folders, cases.csv files or datasets")],
    ga_weeks: Annotated[
        str | None, typer.Option(help="gestational age (21.4 or 21+3) for every case")
    ] = None,
    spacing_mm: Annotated[float | None, typer.Option(help="pixel spacing for images that carry none")] = None,
    model: HeadModelOpt = None,
    structures: StructuresOpt = None,
    no_structures: NoStructuresOpt = False,
    detector: Annotated[
        bool, typer.Option(help="run stage 1 (the structures are measured in its boxes; the CSP hint)")
    ] = True,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="write one row per case")] = None,
    json_out: JsonOut = None,
    overlay: Annotated[Path | None, typer.Option(help="folder for the TV images with callipers")] = None,
) -> None:
    """Measure the head (TV image) and the structures (in stage 1's boxes), with centiles,
    estimated age and hints."""
    from neurosono.classify.gestation import parse_ga
    from neurosono.core.checkpoints import ModelFileError
    from neurosono.measure.case import Measurer

    try:
        ga = parse_ga(ga_weeks)
        cases = _gather(paths)
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    try:
        measurer = Measurer.load(model, detector=detector, structures=False if no_structures else structures)
    except (ModelFileError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    rows, records, failures = _measure_all(measurer, cases, ga, spacing_mm, overlay)
    _print_rows(rows)
    try:
        if csv_out is not None:
            _write_csv(csv_out, rows)
        write_json(json_out, {"cases": records, "failures": failures})
    except OSError as exc:
        raise fail(f"cannot write results ({exc})", EXIT_OUTPUT) from None
    for line in failures:
        err.print(f"  {line}")
    if failures:
        raise typer.Exit(EXIT_PARTIAL)


def _gather(paths: list[Path]) -> list:
    from neurosono.core.images import IMAGE_EXTENSIONS
    from neurosono.pipeline.batch import BatchCase, cases_from

    cases = []
    for path in paths:
        if path.is_file() and path.name == "cases.csv":
            cases.extend(cases_from(path))
        elif path.is_dir() and (path / "cases.csv").is_file():
            cases.extend(cases_from(path / "cases.csv"))
        elif path.is_dir():
            pairs = cases_from(path)
            singles = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
            cases.extend(pairs or [BatchCase(p.stem, p, None) for p in singles])
        elif path.is_file():
            cases.append(BatchCase(path.stem, path, None))
        else:
            raise ValueError(f"{path}: no such file or folder")
    if not cases:
        raise ValueError(f"{', '.join(map(str, paths))}: no images found")
    return cases


def _measure_all(measurer, cases, ga, spacing_mm, overlay):
    from neurosono.core.atomic import atomic_write_bytes
    from neurosono.core.images import read_image
    from neurosono.core.progress import track
    from neurosono.measure.overlay import draw_biometry

    rows, records, failures = [], [], []
    for case in track(cases, "measuring"):
        try:
            loaded = {}
            for plane, path in (("tv", case.tv), ("tc", case.tc)):
                if path is not None:
                    loaded[plane] = read_image(path)
                    given = (case.spacing_mm or {}).get(plane) or spacing_mm
                    if loaded[plane].spacing_mm is None and given:
                        loaded[plane].spacing_mm = float(given)
            biometry = measurer.measure(loaded, case.ga_weeks if case.ga_weeks is not None else ga)
        except ValueError as exc:
            failures.append(f"{case.case_id}: {exc}")
            continue
        rows.append({"case_id": case.case_id, **biometry.flat()})
        records.append({"case_id": case.case_id, **biometry.to_dict()})
        if overlay is not None:
            import cv2

            overlay.mkdir(parents=True, exist_ok=True)
            # The TV image carries the head and its own structures; the TC one the cerebellum's.
            for plane, suffix in (("tv", "biometry"), ("tc", "tc_structures")):
                if plane in loaded and (plane == "tv" or biometry.structures is not None):
                    _, png = cv2.imencode(".png", draw_biometry(loaded[plane].pixels, biometry, plane))
                    atomic_write_bytes(overlay / f"{case.case_id}_{suffix}.png", png.tobytes())
    return rows, records, failures


def _print_rows(rows: list[dict]) -> None:
    table = Table(title="biometry in mm (HC/OFD outer border, BPD outer-inner)")
    # Column (header): the values every row has, headers short enough for a terminal.
    shown = "case_id hc_mm hc_mm_centile:hc_c bpd_mm ofd_mm cephalic_index:CI atrium_mm tcd_mm"
    shown += " cisterna_magna_mm:cm_mm csp_width_mm:csp_mm ga_weeks hints"
    pairs = [(c.split(":") * 2)[:2] for c in shown.split()]
    columns, short = [c for c, _ in pairs], dict(pairs)
    for column in columns:
        table.add_column(short.get(column, column))
    for row in rows[:50]:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    out.print(table)
    if len(rows) > 50:
        out.print(f"... and {len(rows) - 50} more (see --csv)")


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    from neurosono.core.atomic import atomic_write_text

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    out.print(f"results: {path}")


@app.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="dataset with measurement columns (hc_mm, bpd_mm, ...)")],
    model: HeadModelOpt = None,
    structures: StructuresOpt = None,
    no_structures: NoStructuresOpt = False,
    split: Split = "test",
    json_out: JsonOut = None,
    n_boot: NBoot = 1000,
    seed: BootSeed = 0,
    hints: Annotated[
        bool, typer.Option(help="also score the hints against the findings the true measurements give")
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="write Bland-Altman plots (PNG) here")] = None,
    stage1: Annotated[
        bool,
        typer.Option(help="run stage 1 and frame the head on its fetal_head box, as the pipeline does"),
    ] = False,
    detector_file: DetectorOpt = None,
) -> None:
    """Score measured against true measurements: MAE, bias, limits of agreement, Dice; CIs by
    source group. The structures are scored where the dataset records them (stage 1 runs)."""
    from neurosono.core.checkpoints import ModelFileError
    from neurosono.data.format import Dataset, DatasetFormatError
    from neurosono.evaluate.biometry import describe_hint_score, evaluate_biometry, recorded_measurements
    from neurosono.measure.headnet import load_head_model
    from neurosono.measure.structures import STRUCTURE_NAMES, load_structure_model
    from neurosono.models import PHANTOM_STRUCTURE_MODEL, REAL_HEAD_MODEL

    try:
        head, _ = load_head_model(model or REAL_HEAD_MODEL)
        recorded = set() if no_structures else recorded_measurements(Dataset.load(dataset), STRUCTURE_NAMES)
        structure_model = None
        if recorded or structures is not None:
            structure_model = load_structure_model(structures or PHANTOM_STRUCTURE_MODEL)[0]
        detector = None
        if hints or stage1 or structure_model is not None or detector_file is not None:
            from neurosono.detect.model import load_detector
            from neurosono.models import DEFAULT_DETECTOR

            detector = load_detector(detector_file or DEFAULT_DETECTOR)
        result = evaluate_biometry(
            dataset,
            head,
            chosen_split(split),
            n_boot,
            seed,
            detector=detector,
            plot=plot,
            structure_model=structure_model,
        )
        if not hints:
            result.pop("hints", None)
    except (ModelFileError, DatasetFormatError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    table = Table(title=f"{result['dataset']} ({result['split']}, {result['n_cases']} cases)")
    for column in ("measurement", "MAE (95% CI)", "bias (95% CI)", "LoA 95%", "n", "measured"):
        table.add_column(column)
    for name, entry in result.items():
        if isinstance(entry, dict) and "mae" in entry:
            mae, bias = entry["mae"], entry["bias"]
            table.add_row(
                name,
                f"{mae['value']:.2f} ({mae['ci95'][0]:.2f}-{mae['ci95'][1]:.2f})",
                f"{bias['value']:+.2f} ({bias['ci95'][0]:+.2f} to {bias['ci95'][1]:+.2f})",
                f"{entry['loa95'][0]:+.2f} to {entry['loa95'][1]:+.2f}",
                str(entry["n"]),
                entry["measured"]["count"],
            )
    out.print(table)
    for name, entry in result.items():
        for kind, part in (entry.get("by_window", {}) if isinstance(entry, dict) else {}).items():
            out.print(f"{name} read in the {kind} window: {part['n']} cases, MAE {part['mae']:.2f} mm")
    if "dice" in result:
        d = result["dice"]
        out.print(f"head Dice {d['value']:.4f} ({d['ci95'][0]:.4f}-{d['ci95'][1]:.4f}), n {d['n']}")
    for finding, score in result.get("hints", {}).items():
        out.print(describe_hint_score(finding, score))
    write_json(json_out, result)


# The training commands live beside this module (they share its group).
from neurosono.cli.measure_train import train, train_structures  # noqa: E402

app.command("train")(train)
app.command("train-structures")(train_structures)
