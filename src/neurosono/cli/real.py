"""``neurosono real ...``: the older spellings of the real-image commands, kept for one release.

Hidden from ``--help``; each calls the stage command that replaced it (listed in CHANGELOG.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from neurosono.cli import classify, detect
from neurosono.cli.common import (
    DEFAULT,
    EXIT_BAD_INPUT,
    METRIC_KEYS,
    HeadDetectorOpt,
    JsonOut,
    Kind,
    NBoot,
    Split,
    Task,
    chosen_split,
    fail,
    group,
    load_dataset,
    out,
    write_json,
)

app = group("Older spellings of the real-image commands (see 'classify' and 'detect').")


@app.command("compare")
def compare(
    dataset: Annotated[Path, typer.Argument()],
    variants: Annotated[str, typer.Option()] = "baseline,headcrop,hexanet",
    head_detector: HeadDetectorOpt = None,
    region_detector: Annotated[Path | None, typer.Option()] = None,
    folds: Annotated[int, typer.Option()] = 5,
    seed: Annotated[int, typer.Option()] = DEFAULT,
    epochs: Annotated[int, typer.Option()] = 20,
    patience: Annotated[int, typer.Option()] = 6,
    batch: Annotated[int, typer.Option()] = 16,
    n_boot: NBoot = 1000,
    json_out: JsonOut = None,
) -> None:
    """Now 'classify cv DATASET --kind ...'."""
    from neurosono.classify.kinds import kind_class

    try:
        kinds = [Kind(kind_class(v.strip()).kind) for v in variants.split(",") if v.strip()]
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    classify.cv(
        dataset,
        kinds,
        None,
        classify.CvScheme.kfold,
        folds,
        seed,
        epochs,
        patience,
        batch,
        region_detector,
        head_detector,
        n_boot,
        json_out,
    )


@app.command("transfer")
def transfer(
    dataset: Annotated[Path, typer.Argument()],
    region_detector: Annotated[Path | None, typer.Option()] = None,
    json_out: JsonOut = None,
) -> None:
    """Now 'detect transfer DATASET'."""
    detect.transfer(dataset, region_detector, json_out)


@app.command("table")
def table(results: Annotated[list[Path], typer.Argument()]) -> None:
    """Now 'classify table RESULT.json...'."""
    classify.table(results)


@app.command("train")
def train(
    dataset: Annotated[Path, typer.Argument()],
    out_dir: Annotated[Path, typer.Option("--out")],
    kind: Annotated[str, typer.Option()] = "head-crop",
    head_detector: HeadDetectorOpt = None,
    seed: Annotated[int, typer.Option()] = DEFAULT,
    epochs: Annotated[int, typer.Option()] = 20,
    patience: Annotated[int, typer.Option()] = 6,
    batch: Annotated[int, typer.Option()] = 16,
) -> None:
    """Now 'classify train DATASET --kind head-crop|whole-image'."""
    classify.train(
        dataset,
        out_dir,
        Kind(kind),
        None,
        head_detector,
        seed,
        epochs,
        patience,
        batch,
        False,
        None,
        classify.HeadSize.span,
        classify.CropScale.box,
        False,
        False,
    )


@app.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Argument()],
    model: Annotated[Path | None, typer.Option()] = None,
    split: Split = "all",
    task: Annotated[Task, typer.Option()] = Task.auto,
    json_out: JsonOut = None,
    n_boot: NBoot = 1000,
    seed: Annotated[int, typer.Option()] = DEFAULT,
) -> None:
    """Now 'detect eval' (head detector) and 'classify eval' (classifier)."""
    from neurosono.evaluate.real import evaluate_real
    from neurosono.models import REAL_DIR

    ds = load_dataset(dataset)
    try:
        result = evaluate_real(
            ds, model or REAL_DIR, chosen_split(split), task.value, n_boot, seed, progress=True
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    rows = Table(title=f"real-image models on {ds.spec.name}, split {split}")
    for column in ("model", "metric", "value", "count", "95% CI"):
        rows.add_column(column)
    for name, entry, keys in (
        ("head detector", result.get("detector"), ("map50", "map50_95", "precision", "recall")),
        (
            f"classifier ({result.get('classifier', {}).get('classifier_kind')})",
            result.get("classifier"),
            METRIC_KEYS[:5],
        ),
    ):
        for key in keys if entry else ():
            m = entry.get(key)
            if isinstance(m, dict) and m.get("value") is not None:
                count = m.get("count") or (f"{entry['n_images']} images" if "n_images" in entry else "")
                rows.add_row(name, key, f"{m['value']:.3f}", count, f"{m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}")
    out.print(rows)
    write_json(json_out, result)
