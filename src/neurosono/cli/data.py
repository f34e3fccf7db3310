"""``neurosono data ...``: check, split, import, merge, dedupe, export-coco, preview."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from neurosono.cli.common import (
    DEFAULT,
    EXIT_BAD_INPUT,
    EXIT_INVALID_DATA,
    EXIT_OUTPUT,
    ImportFormat,
    JsonOut,
    Scheme,
    Seed,
    fail,
    group,
    load_dataset,
    out,
    write_json,
)

app = group("Dataset tools: check, split, import, merge, dedupe, export, preview.")


@app.command("check")
def check(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    json_out: JsonOut = None,
    max_shown: Annotated[int, typer.Option(help="problems to print (all go to --json)")] = 200,
) -> None:
    """Validate a dataset and list every problem with its file (and line). Modifies nothing."""
    from neurosono.data.check import check_dataset

    report = check_dataset(dataset, progress=True)
    for problem in report.errors[:max_shown] + report.warnings[: max(0, max_shown - len(report.errors))]:
        style = "red" if problem.severity == "error" else "yellow"
        out.print(f"[{style}]{escape(str(problem))}[/]", markup=True)
    if len(report.problems) > max_shown:
        out.print(f"... {len(report.problems) - max_shown} more (use --json)")
    out.print(
        f"{dataset}: {report.n_cases} cases, {report.n_images} images, {report.n_boxes} boxes; "
        f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    )
    write_json(json_out, report.to_dict())
    if not report.ok:
        raise typer.Exit(EXIT_INVALID_DATA)


@app.command("split")
def split(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    scheme: Annotated[
        Scheme,
        typer.Option(
            help="holdout (65/20/15 into 'split'), kfold or center (leave-one-centre-out, into 'fold')"
        ),
    ] = Scheme.holdout,
    seed: Seed = DEFAULT,
    folds: Annotated[int, typer.Option(help="number of folds for kfold")] = 3,
    fractions: Annotated[str, typer.Option(help="train,val,test fractions for holdout")] = "0.65,0.20,0.15",
    overwrite: Annotated[
        bool, typer.Option(help="replace an existing assignment (a backup is kept)")
    ] = False,
) -> None:
    """Write case-level, label-stratified, group-aware splits into cases.csv."""
    from neurosono.core.atomic import OutputExistsError
    from neurosono.data.format import DatasetFormatError
    from neurosono.data.split import SplitError, column_of, summary, write_split

    load_dataset(dataset)  # a readable dataset, or a one-line error
    try:
        parts = tuple(float(f) for f in fractions.split(","))
        cases, backup = write_split(dataset, scheme.value, seed, folds, parts, overwrite)  # type: ignore[arg-type]
    except OutputExistsError as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except (SplitError, DatasetFormatError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    if backup:
        out.print(f"previous cases.csv kept as {backup}")
    column = column_of(scheme.value)
    table = Table(title=f"{scheme.value} split" + (f" (seed {seed})" if scheme != Scheme.center else ""))
    for name in (column, "normal", "abnormal", "total"):
        table.add_column(name, justify="right")
    for part, counts in summary(cases, column).items():
        table.add_row(part, str(counts["normal"]), str(counts["abnormal"]), str(sum(counts.values())))
    out.print(table)


@app.command("import")
def import_(
    fmt: Annotated[ImportFormat, typer.Argument(metavar="FORMAT", help="the source's format")],
    src: Annotated[Path, typer.Argument(help="source folder")],
    out_arg: Annotated[Path | None, typer.Argument(metavar="[OUT]", hidden=True)] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="new dataset folder")] = None,
    name: Annotated[str | None, typer.Option(help="dataset name (default: the source folder's)")] = None,
) -> None:
    """Import a public data set into the neurosono format (single-image cases, source groups kept)."""
    from neurosono.data.check import check_dataset
    from neurosono.data.importers import import_dataset

    target = out_dir or out_arg
    if target is None:
        raise fail("give the new dataset folder with --out", EXIT_BAD_INPUT)
    dataset = _write_dataset(lambda: import_dataset(fmt.value, src, target, name))
    report = check_dataset(target)
    n_abnormal = sum(c.label == "abnormal" for c in dataset.cases)
    groups = len({c.group for c in dataset.cases})
    out.print(
        f"imported {len(dataset.cases)} cases ({n_abnormal} abnormal) in {groups} source groups "
        f"to {target}; check: {len(report.errors)} errors, {len(report.warnings)} warnings"
    )
    if not report.ok:
        raise typer.Exit(EXIT_INVALID_DATA)


def _write_dataset(make):
    """Run a dataset writer: an existing or unwritable output is exit 3, a bad source exit 2."""
    from neurosono.core.atomic import OutputExistsError
    from neurosono.data.format import DatasetFormatError

    try:
        return make()
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except DatasetFormatError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None


@app.command("merge")
def merge(
    datasets: Annotated[list[Path], typer.Argument(metavar="DATASET...", help="two or more dataset folders")],
    out_dir: Annotated[Path, typer.Option("--out", help="new dataset folder")],
    name: Annotated[str | None, typer.Option(help="name of the merged dataset")] = None,
    max_side: Annotated[
        int | None, typer.Option(help="shrink larger images to this side (spacing scaled to match)")
    ] = None,
) -> None:
    """Merge datasets with the same regions; case ids and source groups are prefixed by dataset name."""
    from neurosono.data.check import check_dataset
    from neurosono.data.merge import merge_datasets

    merged = _write_dataset(lambda: merge_datasets(datasets, out_dir, name, max_side))
    report = check_dataset(out_dir)
    groups = len({c.group for c in merged.cases})
    out.print(
        f"merged {len(merged.cases)} cases in {groups} source groups to {out_dir}; "
        f"check: {len(report.errors)} errors, {len(report.warnings)} warnings"
    )
    if not report.ok:
        raise typer.Exit(EXIT_INVALID_DATA)


@app.command("dedupe")
def dedupe(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    out_dir: Annotated[Path, typer.Option("--out", help="new dataset folder")],
) -> None:
    """Keep one case per source image (drops Roboflow's augmented copies)."""
    from neurosono.data.merge import one_image_per_source

    kept, dropped = _write_dataset(lambda: one_image_per_source(dataset, out_dir))
    n_abnormal = sum(c.label == "abnormal" for c in kept.cases)
    out.print(
        f"kept {len(kept.cases)} cases ({n_abnormal} abnormal) in {len({c.group for c in kept.cases})} "
        f"source groups, dropped {dropped} copies -> {out_dir}"
    )


@app.command("export-coco")
def export_coco(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    json_out: Annotated[Path | None, typer.Option("--json", help="COCO JSON file to write")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", hidden=True)] = None,
    split: Annotated[str | None, typer.Option(help="only this split")] = None,
) -> None:
    """Write the dataset's boxes as COCO detection JSON."""
    from neurosono.core.images import ImageReadError
    from neurosono.data.coco import export_coco as write_coco

    target = json_out or out_file
    if target is None:
        raise fail("give the COCO file to write with --json", EXIT_BAD_INPUT)
    ds = load_dataset(dataset)
    try:
        coco = write_coco(ds, target, split)
    except (ImageReadError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except OSError as exc:
        raise fail(f"{target}: cannot write ({exc.strerror or exc})", EXIT_OUTPUT) from None
    out.print(f"wrote {len(coco['images'])} images, {len(coco['annotations'])} boxes to {target}")


@app.command("preview")
def preview(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    png: Annotated[Path | None, typer.Option("--png", help="PNG contact sheet to write")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", hidden=True)] = None,
    cases: Annotated[int, typer.Option(help="cases to show")] = 16,
) -> None:
    """Write a contact sheet: TV beside TC for each case, with boxes and findings."""
    from neurosono.data.preview import write_contact_sheet

    target = png or out_file
    if target is None:
        raise fail("give the PNG to write with --png", EXIT_BAD_INPUT)
    write_contact_sheet(load_dataset(dataset), target, n_cases=cases)
    out.print(f"contact sheet: {target}")
