"""``neurosono classify ...``: train, evaluate and cross-validate stage-2 classifiers of any kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from neurosono.cli.common import (
    DEFAULT,
    EXIT_BAD_INPUT,
    EXIT_OUTPUT,
    METRIC_KEYS,
    BootSeed,
    CropScale,
    CvScheme,
    DetectorOpt,
    HeadDetectorOpt,
    HeadSize,
    JsonOut,
    Kind,
    NBoot,
    Seed,
    Split,
    WithholdGa,
    chosen_split,
    fail,
    group,
    load_dataset,
    metric_table,
    out,
    split_model_arg,
    write_json,
)
from neurosono.cli.tables import print_calibration, print_cross_validation

app = group("Stage 2: classifiers (HexaNet, whole-image, head crop): train, evaluate, cross-validate.")
Epochs = Annotated[
    int | None, typer.Option(help="maximum epochs (early stopping on validation AUC) [default: 60]")
]
Patience = Annotated[int | None, typer.Option(help="early-stopping patience in epochs [default: 12]")]


@app.command("train")
def train(
    dataset: Annotated[Path, typer.Argument(help="dataset folder (train and val splits are used)")],
    out_dir: Annotated[Path, typer.Option("--out", help="new run folder")],
    kind: Annotated[Kind, typer.Option(help="classifier kind")] = Kind.hexanet,
    detector: DetectorOpt = None,
    head_detector: HeadDetectorOpt = None,
    seed: Seed = DEFAULT,
    epochs: Epochs = None,
    patience: Patience = None,
    batch: Annotated[int, typer.Option(help="batch size")] = 16,
    share_branches: Annotated[
        bool, typer.Option(help="hexanet: one Mini-ResNet shared by all regions")
    ] = False,
    target_sensitivity: Annotated[
        float | None, typer.Option(help="choose the threshold for this validation sensitivity (screening)")
    ] = None,
    head_size: Annotated[
        HeadSize,
        typer.Option(
            help="hexanet: region sizes relative to the regions' span, the skull, or stage 1's head box"
        ),
    ] = (HeadSize.span),
    crop_scale: Annotated[
        CropScale, typer.Option(help="hexanet: crops round the box, head-scaled, or age-scaled (with --ga)")
    ] = CropScale.box,
    ga: Annotated[
        bool, typer.Option("--ga/--no-ga", help="also read each case's gestational age (cases.csv ga_weeks)")
    ] = False,
    baseline: Annotated[
        bool, typer.Option(help="hexanet: also train the whole-image baseline beside it")
    ] = True,
    init: Annotated[
        str | None,
        typer.Option(
            help="fine-tune from a run of the same kind and inputs, or 'shipped' [default: from scratch]"
        ),
    ] = None,
    lr: Annotated[float, typer.Option(help="learning rate (AdamW)")] = 1e-3,
) -> None:
    """Train a classifier; early stopping and the threshold use the val split, never the test split."""
    from neurosono.classify.config import ClassifyTrainConfig
    from neurosono.classify.train import train_classifier
    from neurosono.core.atomic import OutputExistsError
    from neurosono.core.distributed import distributed, finish
    from neurosono.detect.model import DetectorFileError

    place = distributed()
    try:
        config = ClassifyTrainConfig(
            **_budget(seed, epochs, patience),
            batch=batch,
            lr=lr,
            share_branches=share_branches,
            target_sensitivity=target_sensitivity,
            head_size=head_size.value,
            gestational_age=ga,
            crop_scale=crop_scale.value,
        )
        run_dir = train_classifier(
            dataset, out_dir, kind.value, config, detector, head_detector, baseline, init=init
        )
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except (DetectorFileError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    finally:
        finish()
    if not place.main:
        return  # under torchrun, the first process reports
    record = json.loads((run_dir / "classifier.json").read_text())
    auc = record["val_metrics"]["auc"]
    out.print(
        f"run: {run_dir}  best epoch {record['best_epoch']}, validation AUC {auc['value']:.3f} "
        f"(95% CI {auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f}), threshold {record['threshold']:.3f}"
    )


def _budget(seed: int, epochs: int | None, patience: int | None) -> dict:
    return {"seed": seed, **{k: v for k, v in (("epochs", epochs), ("patience", patience)) if v is not None}}


@app.command("eval")
def evaluate(
    paths: Annotated[list[Path], typer.Argument(metavar="DATASET", help="dataset folder")],
    model: Annotated[
        Path | None, typer.Option(help="classifier run folder or file [default: shipped, for the dataset]")
    ] = None,
    detector: Annotated[
        Path | None, typer.Option(help="hexanet: six-region detector [default: the one it was trained with]")
    ] = None,
    split: Split = "test",
    json_out: JsonOut = None,
    report_dir: Annotated[
        Path | None, typer.Option("--out", help="folder for metrics.json, predictions.csv, ROC, reliability")
    ] = None,
    n_boot: NBoot = 1000,
    seed: BootSeed = DEFAULT,
    withhold_ga: WithholdGa = False,
    scheme: Annotated[str, typer.Option(hidden=True)] = "holdout",
    folds: Annotated[int, typer.Option(hidden=True)] = 3,
    baseline: Annotated[bool, typer.Option(hidden=True)] = True,
    epochs: Annotated[int | None, typer.Option(hidden=True)] = None,
    patience: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """AUC, sensitivity, specificity, F1, accuracy, PPV, NPV with bootstrap, Wilson and DeLong CIs."""
    legacy, rest = split_model_arg(paths, "a dataset folder")
    if len(rest) != 1:
        raise fail("expected one DATASET (and --model for the classifier)", EXIT_BAD_INPUT)
    if scheme != "holdout":  # the older spelling of 'classify cv --like RUN'
        kinds = [Kind.hexanet] + ([Kind.whole_image] if baseline else [])
        cv(
            rest[0],
            kinds,
            model or legacy,
            CvScheme(scheme),
            folds,
            DEFAULT,
            epochs,
            patience,
            16,
            detector,
            None,
            n_boot,
            json_out,
        )
        return
    from neurosono.evaluate.classifier import evaluate_classifier_run

    dataset = load_dataset(rest[0])
    try:
        metrics = evaluate_classifier_run(
            dataset, model or legacy, chosen_split(split), detector, n_boot, seed, report_dir, withhold_ga
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    title = (
        f"{metrics['classifier_kind']} on {dataset.spec.name}, split {split}: "
        f"{metrics['n_abnormal']} abnormal, {metrics['n_normal']} normal"
    )
    out.print(metric_table(title, metrics, METRIC_KEYS))
    out.print(f"threshold {metrics['threshold']:.3f} ({metrics['threshold_rule']})")
    out.print(f"gestational age: {metrics['gestational_age']}")
    write_json(json_out, metrics)


@app.command("calibrate")
def calibrate(
    model: Annotated[Path, typer.Argument(help="HexaNet run folder (classifier.pt and classifier.json)")],
    dataset: Annotated[Path, typer.Argument(help="dataset folder whose split chooses the thresholds")],
    out_dir: Annotated[Path, typer.Option("--out", help="new run folder (the weights copied unchanged)")],
    detector: Annotated[
        Path | None,
        typer.Option("--detector", help="the stage 1 to calibrate behind [default: the run's, else shipped]"),
    ] = None,
    split: Annotated[str, typer.Option(help="the cases that choose the thresholds (never test)")] = "val",
    target_sensitivity: Annotated[
        float | None,
        typer.Option(help="choose the threshold for this sensitivity [default: the run's own rule]"),
    ] = None,
) -> None:
    """Choose a HexaNet's decision and support thresholds again through another stage 1.

    The same two rules as training (its threshold rule on the split's scores; the support
    under the lowest 0.5% of the split's cases), the weights unchanged, into a new folder."""
    from neurosono.classify.calibrate import calibrate_classifier
    from neurosono.core.atomic import OutputExistsError
    from neurosono.core.checkpoints import ModelFileError

    if split == "test":
        raise fail("thresholds are never chosen on the test split; use val (or train)", EXIT_BAD_INPUT)
    try:
        record = calibrate_classifier(
            model, load_dataset(dataset).root, out_dir, detector, split, target_sensitivity
        )
    except (OutputExistsError, PermissionError) as exc:
        raise fail(str(exc), EXIT_OUTPUT) from None
    except (ModelFileError, ValueError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    print_calibration(record)
    out.print(f"run: {out_dir}")


@app.command("cv")
def cv(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    kind: Annotated[
        list[Kind] | None,
        typer.Option(help="kinds to compare on the same folds (repeat) [default: hexanet, whole-image]"),
    ] = None,
    like: Annotated[Path | None, typer.Option(help="repeat this run's configuration (and detector)")] = None,
    scheme: Annotated[
        CvScheme, typer.Option(help="k folds by source group, or leave one centre out")
    ] = CvScheme.kfold,
    folds: Annotated[int, typer.Option(help="folds for kfold")] = 5,
    seed: Seed = DEFAULT,
    epochs: Epochs = None,
    patience: Patience = None,
    batch: Annotated[int, typer.Option(help="batch size")] = 16,
    detector: DetectorOpt = None,
    head_detector: HeadDetectorOpt = None,
    n_boot: NBoot = 1000,
    json_out: JsonOut = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="every fold fine-tunes from this run (or 'shipped'), which must never have seen "
            "the dataset [default: from scratch]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Cross-validate: every kind retrained per fold, thresholds from an inner validation part."""
    from neurosono.classify.crossval import cross_validate_like

    ds = load_dataset(dataset)
    kinds = [k.value for k in kind] if kind else ["hexanet", "whole-image"]
    try:
        result = cross_validate_like(
            ds,
            kinds,
            scheme.value,
            folds,
            like,
            _budget(seed, epochs, patience),
            batch,
            detector,
            head_detector,
            n_boot,
            init=init,
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    write_json(json_out, result)
    print_cross_validation([result])


@app.command("table")
def table(
    results: Annotated[
        list[Path], typer.Argument(metavar="RESULT.json...", help="'classify cv --json' outputs")
    ],
) -> None:
    """One table from several cross-validation results over the same folds."""
    loaded = []
    for path in results:
        try:
            loaded.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise fail(f"{path}: {exc}", EXIT_BAD_INPUT) from None
    print_cross_validation(loaded)
