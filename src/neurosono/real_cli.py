"""Command line for real-image work (issue 6): ``data merge``, ``data dedupe`` and ``neurosono real``.

Registered on the main app by :func:`register`; shares its exit codes and consoles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

real_app = typer.Typer(
    help="Real-image models: head detector, single-image classifier, variant comparison.",
    no_args_is_help=True,
)

METRIC_KEYS = ("auc", "sensitivity", "specificity", "f1", "accuracy")


def _cli():
    from neurosono import cli

    return cli


def data_merge(
    datasets: Annotated[list[Path], typer.Argument(metavar="DATASET...", help="two or more dataset folders")],
    out_dir: Annotated[Path, typer.Option("--out", help="new dataset folder")],
    name: Annotated[str | None, typer.Option(help="name of the merged dataset")] = None,
    max_side: Annotated[
        int | None, typer.Option(help="shrink larger images to this side (spacing scaled to match)")
    ] = None,
) -> None:
    """Merge datasets with the same regions; case ids and source groups are prefixed by dataset name."""
    from neurosono.data.atomic import OutputExistsError
    from neurosono.data.check import check_dataset
    from neurosono.data.format import DatasetFormatError

    cli = _cli()
    from neurosono.data.merge import merge_datasets

    try:
        merged = merge_datasets(datasets, out_dir, name, max_side)
    except (OutputExistsError, PermissionError) as exc:
        raise cli.fail(str(exc), cli.EXIT_OUTPUT) from None
    except DatasetFormatError as exc:
        raise cli.fail(str(exc), cli.EXIT_BAD_INPUT) from None
    report = check_dataset(out_dir)
    groups = len({c.group for c in merged.cases})
    cli.out.print(
        f"merged {len(merged.cases)} cases in {groups} source groups to {out_dir}; "
        f"check: {len(report.errors)} errors, {len(report.warnings)} warnings"
    )
    if not report.ok:
        raise typer.Exit(cli.EXIT_INVALID_DATA)


def data_dedupe(
    dataset: Annotated[Path, typer.Argument(help="dataset folder")],
    out_dir: Annotated[Path, typer.Option("--out", help="new dataset folder")],
) -> None:
    """Keep one case per source image (drops Roboflow's augmented copies)."""
    from neurosono.data.atomic import OutputExistsError
    from neurosono.data.format import DatasetFormatError
    from neurosono.data.merge import one_image_per_source

    cli = _cli()
    try:
        kept, dropped = one_image_per_source(dataset, out_dir)
    except (OutputExistsError, PermissionError) as exc:
        raise cli.fail(str(exc), cli.EXIT_OUTPUT) from None
    except DatasetFormatError as exc:
        raise cli.fail(str(exc), cli.EXIT_BAD_INPUT) from None
    n_abnormal = sum(c.label == "abnormal" for c in kept.cases)
    cli.out.print(
        f"kept {len(kept.cases)} cases ({n_abnormal} abnormal) in {len({c.group for c in kept.cases})} "
        f"source groups, dropped {dropped} copies -> {out_dir}"
    )


def _config(seed: int, epochs: int, patience: int, batch: int):
    from neurosono.classify.train import ClassifyTrainConfig

    return ClassifyTrainConfig(seed=seed, epochs=epochs, patience=patience, batch=batch)


def _detector(path: Path | None, what: str):
    from neurosono.detect.model import DetectorFileError, load_detector

    cli = _cli()
    if path is None:
        return None
    try:
        return load_detector(path)
    except DetectorFileError as exc:
        raise cli.fail(f"{what}: {exc}", cli.EXIT_BAD_INPUT) from None


def _cell(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    return f"{entry['value']:.3f} ({entry['ci95'][0]:.2f}-{entry['ci95'][1]:.2f})"


def print_comparison(results: list[dict]) -> None:
    """One table: each variant's pooled out-of-fold metrics (images and source groups) and fold mean ± sd."""
    from neurosono.classify.compare import VARIANTS

    cli = _cli()
    schemes = {r["scheme"] for r in results}
    folds = {json.dumps(r["folds"], sort_keys=True) for r in results}
    if len(schemes) > 1 or len(folds) > 1:
        raise cli.fail(
            "the results come from different folds; they cannot share one table", cli.EXIT_BAD_INPUT
        )
    first = results[0]
    table = Table(
        title=f"{first['dataset']}: {first['n_cases']} cases in {first['n_groups']} source groups, "
        f"{first['scheme']}"
    )
    table.add_column("variant")
    table.add_column("unit")
    for key in METRIC_KEYS:
        table.add_column(key)
    for result in results:
        for variant in VARIANTS:
            if variant not in result:
                continue
            entry = result[variant]
            for unit, pooled in (("images", "pooled_out_of_fold"), ("groups", "pooled_by_group")):
                table.add_row(variant, unit, *[_cell(entry[pooled].get(k)) for k in METRIC_KEYS])
            mean_sd = entry["mean_sd"]
            table.add_row(
                variant,
                "fold mean ± sd",
                *[
                    f"{mean_sd[k]['mean']:.3f} ± {mean_sd[k]['sd']:.3f}" if k in mean_sd else "-"
                    for k in METRIC_KEYS
                ],
            )
    cli.out.print(table)
    for result in results:
        if "transfer" in result:
            t = result["transfer"]
            row = ", ".join(
                f"{name} {v['found_fraction']:.2f} (median conf {v['median_best_confidence']:.2f})"
                for name, v in t["regions"].items()
            )
            cli.out.print(
                f"six-region detector on these images, share found at conf {t['conf']}: {row}; "
                f"regions per image {t['regions_found_per_image']['mean']:.2f}"
            )
        if "head_detection" in result:
            h = result["head_detection"]
            cli.out.print(
                f"head detector: {h['n_no_head']} image(s) without a head box, median confidence "
                f"{h['median_confidence']:.2f}, {h['fraction_at_0.25']:.2f} at conf >= 0.25"
            )


@real_app.command("compare")
def real_compare(
    dataset: Annotated[Path, typer.Argument(help="single-image dataset (e.g. imported fbau)")],
    variants: Annotated[str, typer.Option(help="comma-separated: baseline, headcrop, hexanet")] = (
        "baseline,headcrop,hexanet"
    ),
    head_detector: Annotated[
        Path | None, typer.Option(help="head detector for headcrop (default: the shipped real one)")
    ] = None,
    region_detector: Annotated[
        Path | None, typer.Option(help="six-region detector for hexanet (default: the shipped phantom one)")
    ] = None,
    folds: Annotated[int, typer.Option(help="folds (stratified, by source group)")] = 5,
    seed: Annotated[int, typer.Option(help="seed for folds and training")] = 0,
    epochs: Annotated[int, typer.Option(help="maximum epochs per fold")] = 20,
    patience: Annotated[int, typer.Option(help="early-stopping patience (epochs)")] = 6,
    batch: Annotated[int, typer.Option(help="batch size")] = 16,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    json_out: Annotated[Path | None, typer.Option("--json", help="write all results here")] = None,
) -> None:
    """Group-aware k-fold comparison of whole-image, head-crop and HexaNet variants, with CIs."""
    from neurosono.classify.compare import compare_variants
    from neurosono.data.atomic import atomic_write_text
    from neurosono.data.split import SplitError
    from neurosono.detect.model import RegionMismatchError
    from neurosono.evaluate.real import HEAD_DETECTOR, REAL_DIR
    from neurosono.models import DEFAULT_DETECTOR

    cli = _cli()
    chosen = tuple(v.strip() for v in variants.split(",") if v.strip())
    ds = cli._load_dataset(dataset)
    head = (
        _detector(head_detector or REAL_DIR / HEAD_DETECTOR, "head detector")
        if "headcrop" in chosen
        else None
    )
    regions = (
        _detector(region_detector or DEFAULT_DETECTOR, "region detector") if "hexanet" in chosen else None
    )
    try:
        result = compare_variants(
            ds,
            _config(seed, epochs, patience, batch),
            folds=folds,
            head_detector=head,
            region_detector=regions,
            variants=chosen,
            n_boot=n_boot,
            progress=True,
        )
    except (RegionMismatchError, SplitError, ValueError) as exc:
        raise cli.fail(str(exc), cli.EXIT_BAD_INPUT) from None
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2))
    print_comparison([result])


@real_app.command("transfer")
def real_transfer(
    dataset: Annotated[Path, typer.Argument(help="single-image dataset with the six default regions")],
    region_detector: Annotated[
        Path | None, typer.Option(help="six-region detector (default: the shipped phantom one)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the measurements here")] = None,
) -> None:
    """How the six-region (phantom-trained) detector fares on real images: regions found, confidences."""
    from neurosono.classify.compare import measure_transfer
    from neurosono.data.atomic import atomic_write_text
    from neurosono.detect.model import RegionMismatchError
    from neurosono.models import DEFAULT_DETECTOR

    cli = _cli()
    ds = cli._load_dataset(dataset)
    detector = _detector(region_detector or DEFAULT_DETECTOR, "region detector")
    try:
        result = measure_transfer(ds, detector, progress=True)
    except RegionMismatchError as exc:
        raise cli.fail(str(exc), cli.EXIT_BAD_INPUT) from None
    table = Table(title=f"six-region detector on {ds.spec.name}: {result['n_images']} images")
    for column in ("region", f"found (conf >= {result['conf']})", "normal", "abnormal", "median best conf"):
        table.add_column(column)
    for name, v in result["regions"].items():
        by = v["found_fraction_by_label"]
        table.add_row(
            name,
            f"{v['found_fraction']:.2f}",
            "-" if by["normal"] is None else f"{by['normal']:.2f}",
            "-" if by["abnormal"] is None else f"{by['abnormal']:.2f}",
            f"{v['median_best_confidence']:.3f}",
        )
    cli.out.print(table)
    per = result["regions_found_per_image"]
    cli.out.print(f"regions found per image: mean {per['mean']:.2f}, histogram {per['histogram']}")
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2))


@real_app.command("table")
def real_table(
    results: Annotated[list[Path], typer.Argument(metavar="RESULT.json...", help="'real compare' outputs")],
) -> None:
    """One table from several 'real compare' runs over the same folds."""
    cli = _cli()
    loaded = []
    for path in results:
        try:
            loaded.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise cli.fail(f"{path}: {exc}", cli.EXIT_BAD_INPUT) from None
    print_comparison(loaded)


@real_app.command("train")
def real_train(
    dataset: Annotated[Path, typer.Argument(help="single-image dataset with train and val splits")],
    out_dir: Annotated[Path, typer.Option("--out", help="new run folder")],
    kind: Annotated[str, typer.Option(help="head-crop or whole-image")] = "head-crop",
    head_detector: Annotated[
        Path | None, typer.Option(help="head detector for head-crop (default: the shipped real one)")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    epochs: Annotated[int, typer.Option(help="maximum epochs")] = 20,
    patience: Annotated[int, typer.Option(help="early-stopping patience (epochs)")] = 6,
    batch: Annotated[int, typer.Option(help="batch size")] = 16,
) -> None:
    """Train a single-image normal/abnormal classifier (train split; val for early stop and threshold)."""
    from neurosono.classify.headcrop import train_single_image
    from neurosono.data.atomic import OutputExistsError
    from neurosono.detect.model import DetectorFileError
    from neurosono.evaluate.real import HEAD_DETECTOR, REAL_DIR

    cli = _cli()
    try:
        run = train_single_image(
            dataset,
            out_dir,
            kind,
            head_detector or (REAL_DIR / HEAD_DETECTOR if kind == "head-crop" else None),
            _config(seed, epochs, patience, batch),
        )
    except (OutputExistsError, PermissionError) as exc:
        raise cli.fail(str(exc), cli.EXIT_OUTPUT) from None
    except (DetectorFileError, ValueError) as exc:
        raise cli.fail(str(exc), cli.EXIT_BAD_INPUT) from None
    record = json.loads((run / "classifier.json").read_text())
    auc = record["val_metrics"]["auc"]
    cli.out.print(
        f"run: {run}  validation AUC {auc['value']:.3f} ({auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f}), "
        f"threshold {record['threshold']:.3f}"
    )


@real_app.command("eval")
def real_eval(
    dataset: Annotated[Path, typer.Argument(help="dataset folder (imported with 'neurosono data import')")],
    model: Annotated[
        Path | None, typer.Option(help="folder with head_detector.pt and classifier.pt (default: shipped)")
    ] = None,
    split: Annotated[str, typer.Option(help="split to evaluate ('all' for every case)")] = "all",
    task: Annotated[
        str,
        typer.Option(
            help="auto (head boxes -> detection; unboxed labelled cases -> classification), "
            "detection, classification or both"
        ),
    ] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="write metrics.json here")] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
) -> None:
    """Evaluate the real-image models on a dataset: mAP@0.5 and/or AUC, sensitivity, specificity, F1."""
    from neurosono.checkpoints import ModelFileError
    from neurosono.data.atomic import atomic_write_text
    from neurosono.detect.model import RegionMismatchError
    from neurosono.evaluate.real import REAL_DIR, evaluate_real

    cli = _cli()
    ds = cli._load_dataset(dataset)
    try:
        result = evaluate_real(
            ds, model or REAL_DIR, None if split == "all" else split, task, n_boot, seed, progress=True
        )
    except (ModelFileError, RegionMismatchError, ValueError) as exc:
        raise cli.fail(str(exc), cli.EXIT_BAD_INPUT) from None
    table = Table(title=f"real-image models on {ds.spec.name}, split {split}")
    for column in ("model", "metric", "value", "count", "95% CI"):
        table.add_column(column)
    methods = set()
    if "detector" in result:
        d = result["detector"]
        for key in ("map50", "map50_95", "precision", "recall"):
            m = d.get(key)
            if isinstance(m, dict) and m.get("value") is not None:
                table.add_row(
                    "head detector",
                    key,
                    f"{m['value']:.3f}",
                    f"{d['n_images']} images",
                    f"{m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}",
                )
                methods.add(m["method"])
    if "classifier" in result:
        c = result["classifier"]
        for key in ("auc", "sensitivity", "specificity", "f1", "accuracy"):
            m = c.get(key)
            if m and m["value"] is not None:
                table.add_row(
                    f"classifier ({c['classifier_kind']})",
                    key,
                    f"{m['value']:.3f}",
                    m.get("count", f"{c['n_abnormal']} abn., {c['n_normal']} norm."),
                    f"{m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}",
                )
                methods.add(m["method"])
    cli.out.print(table)
    for method in sorted(methods):
        cli.out.print(f"95% CI: {method}")
    if json_out:
        try:
            atomic_write_text(json_out, json.dumps(result, indent=2))
        except OSError as exc:
            raise cli.fail(f"{json_out}: cannot write ({exc.strerror})", cli.EXIT_OUTPUT) from None


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    data_app.command("merge")(data_merge)
    data_app.command("dedupe")(data_dedupe)
    app.add_typer(real_app, name="real")
