"""Tables printed by more than one command: cross-validation results and metric comparisons."""

from __future__ import annotations

import json

from rich import box
from rich.table import Table

from neurosono.cli.common import EXIT_BAD_INPUT, cell, fail, out

CV_KEYS = ("auc", "sensitivity", "specificity", "f1")  # all of them are in --json
SHORT = {"auc": "AUC", "sensitivity": "sens.", "specificity": "spec.", "f1": "F1", "accuracy": "acc."}
# Kind names in result files written before the kinds had one name each.
LEGACY_KINDS = {"baseline": "whole-image", "headcrop": "head-crop"}
KIND_ORDER = ("whole-image", "head-crop", "hexanet")


def kinds_in(result: dict) -> list[tuple[str, dict]]:
    """(kind, its results) in a cross-validation result, older names included."""
    found = {LEGACY_KINDS.get(k, k): v for k, v in result.items() if isinstance(v, dict) and "per_fold" in v}
    return [(k, found[k]) for k in KIND_ORDER if k in found]


def print_cross_validation(results: list[dict]) -> None:
    """Per kind, one table: its folds, mean ± sd over folds, and the pooled out-of-fold metrics over
    cases and over source groups (value above its 95% CI). Results must share their folds."""
    if len({json.dumps(r.get("folds"), sort_keys=True) for r in results}) > 1:
        raise fail("the results come from different folds; they cannot share one table", EXIT_BAD_INPUT)
    first = results[0]
    scheme = first.get("scheme_text") or first.get("scheme", "")
    counts = f": {first['n_cases']} cases in {first['n_groups']} source groups" if "n_cases" in first else ""
    out.print(
        f"{first.get('dataset', 'cross-validation')}{counts}, {scheme}; pooled out of fold: value over its "
        "95% CI, over cases and by source group"
    )
    for result in results:
        for kind, entry in kinds_in(result):
            table = Table(title=kind, box=box.SIMPLE_HEAD)
            table.add_column("", no_wrap=True)
            table.add_column("n (abn.)", no_wrap=True)
            for key in CV_KEYS:
                table.add_column(SHORT[key], no_wrap=True)
            for fold in entry["per_fold"]:
                values = [f"{fold[k]:.3f}" if fold.get(k) is not None else "-" for k in CV_KEYS]
                table.add_row(f"fold {fold['fold']}", f"{fold['n']} ({fold['n_abnormal']})", *values)
            spread = entry["mean_sd"]
            table.add_row(
                "mean ± sd",
                "",
                *[
                    f"{spread[k]['mean']:.3f}\n± {spread[k]['sd']:.3f}" if k in spread else "-"
                    for k in CV_KEYS
                ],
            )
            for unit, key in (("pooled", "pooled_out_of_fold"), ("by group", "pooled_by_group")):
                pooled = entry.get(key)
                if pooled:
                    n = f"{pooled['n_normal'] + pooled['n_abnormal']} ({pooled['n_abnormal']})"
                    table.add_row(unit, n, *[cell(pooled.get(k), stacked=True) for k in CV_KEYS])
            out.print(table)
    for result in results:
        _print_detection_notes(result)


def _mean_sd(entry: dict | None) -> str:
    return f"{entry['mean']:.3f}\n± {entry['sd']:.3f}" if entry else "-"


def _print_detection_notes(result: dict) -> None:
    if "transfer" in result:
        t = result["transfer"]
        row = ", ".join(
            f"{name} {v['found_fraction']:.2f} (median conf {v['median_best_confidence']:.2f})"
            for name, v in t["regions"].items()
        )
        out.print(
            f"six-region detector on these images, share found at conf {t['conf']}: {row}; "
            f"regions per image {t['regions_found_per_image']['mean']:.2f}"
        )
    if "head_detection" in result:
        h = result["head_detection"]
        share = next((v for k, v in h.items() if k.startswith("fraction_at_")), None)
        out.print(
            f"head detector: {h['n_no_head']} image(s) without a head box, median confidence "
            f"{h['median_confidence']:.2f}, {share:.2f} at conf >= 0.25"
        )


def print_comparison(title: str, models: dict[str, dict], keys: tuple[str, ...]) -> None:
    """metric | each model's value, count and CI: HexaNet beside the whole-image baseline."""
    table = Table(title=title)
    table.add_column("metric")
    for name in models:
        table.add_column(f"{name} (95% CI)")
    for key in keys:
        table.add_row(key, *[cell(m.get(key), count=True) for m in models.values()])
    out.print(table)


def print_calibration(record: dict) -> None:
    """What ``classify calibrate`` chose, against what the run had."""
    before, data, metrics = record["from"], record["dataset"], record["metrics"]
    auc = metrics["auc"]
    out.print(
        f"calibrated on {data['name']}, split {data['split']} ({data['n_cases']} cases), "
        f"detector {record['detector_sha256'][:12]}"
    )
    out.print(
        f"threshold {before['threshold']:.4f} -> {record['threshold']:.4f} ({record['threshold_rule']})"
    )
    old_support = "(none)" if before["min_support"] is None else f"{before['min_support']:.4f}"
    out.print(f"support threshold {old_support} -> {record['min_support']:.4f}")
    out.print(
        f"on those cases: AUC {auc['value']:.3f} (95% CI {auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f}), "
        f"sensitivity {metrics['sensitivity']['count']}, specificity {metrics['specificity']['count']}"
    )
