"""``neurosono run``: the main job, from a dataset (or a phantom cohort) to a self-contained report."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from neurosono.cli.common import DEFAULT, EXIT_BAD_INPUT, EXIT_OUTPUT, Seed, fail, out


def run(
    dataset: Annotated[
        Path | None,
        typer.Argument(
            help="dataset folder with train/val/test splits [default: a phantom cohort made here]"
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="run folder (new, or an earlier run of this command to resume)")
    ] = Path("runs/demo"),
    quick: Annotated[
        bool, typer.Option(help="60 small cases, 1 detector epoch: an end-to-end check")
    ] = False,
    cases: Annotated[int | None, typer.Option(help="phantom cases to generate [default: 319]")] = None,
    seed: Seed = DEFAULT,
    init: Annotated[
        str, typer.Option(help="detector to fine-tune: shipped, scratch, or a detector run folder or .pt")
    ] = "shipped",
    init_old: Annotated[str | None, typer.Option("--detector-init", hidden=True)] = None,
    detector_epochs: Annotated[int | None, typer.Option(help="stage-1 epochs [default: 3]")] = None,
    hexanet_epochs: Annotated[int | None, typer.Option(help="stage-2 maximum epochs [default: 30]")] = None,
    hexanet_init: Annotated[
        str,
        typer.Option(
            help="HexaNet to fine-tune: shipped (where every case has its age and spacings), "
            "scratch, or a HexaNet run folder"
        ),
    ] = "shipped",
) -> None:
    """The main job: train both stages, evaluate on the test split, write a self-contained report.html.

    Stages already done with the same configuration are kept, so an interrupted run resumes.
    """
    from neurosono.core.atomic import OutputExistsError
    from neurosono.pipeline.run import QUICK, RunConfig, run_pipeline

    overrides = {"cases": cases, "detector_epochs": detector_epochs, "hexanet_epochs": hexanet_epochs}
    config = replace(
        QUICK if quick else RunConfig(),
        seed=seed,
        detector_init=init_old or init,
        hexanet_init=hexanet_init,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    started = time.perf_counter()
    try:
        record = run_pipeline(out_dir, dataset, config, progress=True, log=out.print)
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    metrics = json.loads((out_dir / "evaluation" / "metrics.json").read_text())
    m, hexanet = metrics["detector"]["map50"], metrics["hexanet"]
    out.print(f"stage 1 test mAP@0.5 {m['value']:.3f} (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})")
    auc = hexanet.get("auc")
    if auc and auc.get("value") is not None:
        line = (
            f"stage 2 test AUC {auc['value']:.3f} (95% CI {auc['ci95'][0]:.2f}-{auc['ci95'][1]:.2f}), "
            f"sensitivity {hexanet['sensitivity']['count']}, specificity {hexanet['specificity']['count']}"
        )
        if "baseline" in metrics:
            line += f"; whole-image baseline AUC {metrics['baseline']['auc']['value']:.3f}"
        out.print(line)
    out.print(f"report: {record['report']}  ({time.perf_counter() - started:.0f} s)")
