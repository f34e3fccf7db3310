"""``neurosono eval``: both stages on one split (detector mAP; HexaNet beside the whole-image baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurosono.cli.common import (
    DEFAULT,
    EXIT_BAD_INPUT,
    METRIC_KEYS,
    BootSeed,
    DetectorOpt,
    JsonOut,
    NBoot,
    Split,
    WithholdGa,
    chosen_split,
    fail,
    load_dataset,
    out,
    split_model_arg,
    write_json,
)
from neurosono.cli.tables import print_comparison


def evaluate(
    paths: Annotated[list[Path], typer.Argument(metavar="DATASET", help="dataset folder with TV/TC cases")],
    model: Annotated[
        Path | None, typer.Option(help="HexaNet run folder (with its baseline/) [default: shipped]")
    ] = None,
    detector: DetectorOpt = None,
    split: Split = "test",
    json_out: JsonOut = None,
    report_dir: Annotated[
        Path | None, typer.Option("--out", help="folder for metrics.json, predictions.csv, plots, cases.json")
    ] = None,
    n_boot: NBoot = 1000,
    seed: BootSeed = DEFAULT,
    withhold_ga: WithholdGa = False,
) -> None:
    """Both stages on one split: detector mAP@0.5, then HexaNet against the whole-image baseline."""
    from neurosono.evaluate.two_stage import evaluate_two_stage

    legacy, rest = split_model_arg(paths, "a dataset folder")
    if len(rest) != 1:
        raise fail("expected one DATASET (and --model for the HexaNet run)", EXIT_BAD_INPUT)
    dataset = load_dataset(rest[0])
    try:
        result = evaluate_two_stage(
            dataset,
            model or legacy,
            chosen_split(split),
            detector,
            n_boot,
            seed,
            withhold_ga,
            report_dir,
            True,
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    m, hexanet = result["detector"]["map50"], result["hexanet"]
    out.print(
        f"stage 1 detector: mAP@0.5 {m['value']:.3f} (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}) "
        f"on {result['detector']['n_images']} images"
    )
    models = {
        "HexaNet": hexanet,
        **({"whole-image baseline": result["baseline"]} if "baseline" in result else {}),
    }
    counts = f"{hexanet['n_abnormal']} abnormal, {hexanet['n_normal']} normal"
    title = f"stage 2 on {dataset.spec.name}, split {split}: {counts}"
    print_comparison(title, models, METRIC_KEYS)
    out.print(f"gestational age: {hexanet['gestational_age']}")
    if hexanet.get("indeterminate"):
        flagged = hexanet["indeterminate"]
        out.print(
            f"indeterminate (support below {flagged['min_support']:.2f}): {flagged['count']} cases; "
            "the metrics score every case"
        )
    write_json(json_out, result)
