"""Scoring measurements against a dataset's own: ``neurosono measure eval``.

For each measurement column the dataset has (``hc_mm``, ``bpd_mm``, ...): the mean absolute
error, the bias (mean of measured - true) and the 95% limits of agreement (Bland-Altman:
bias +- 1.96 SD of the differences), over the cases where both exist; the share of cases
where the measurement is absent is reported beside them. CIs are bootstrap percentile
intervals by source group. Where the true head outline is known (a head mask or phantom
geometry), the Dice of the fitted head ellipse with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurosono.core.images import read_grey
from neurosono.core.metrics import mean_with_ci, proportion_with_ci
from neurosono.core.progress import track
from neurosono.data.format import Dataset
from neurosono.measure.ellipse import dice
from neurosono.measure.head import HEAD_MEASUREMENTS, measure_head
from neurosono.measure.headnet import predict_maps
from neurosono.measure.truth import head_truth


def agreement(measured: list[float], true: list[float], groups: list[str], n_boot: int, seed: int) -> dict:
    diff = np.asarray(measured, float) - np.asarray(true, float)
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
    bias = float(diff.mean())
    return {
        "mae": mean_with_ci(np.abs(diff), groups, n_boot, seed),
        "bias": mean_with_ci(diff, groups, n_boot, seed),
        "loa95": [round(bias - 1.96 * sd, 3), round(bias + 1.96 * sd, 3)],
        "n": len(diff),
    }


def evaluate_biometry(
    dataset_path: str | Path,
    model,
    split: str | None = "test",
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    batch: int = 8,
) -> dict:
    """Measure every TV image of the split with the head ``model`` and score it (see above)."""
    dataset = Dataset.load(dataset_path)
    cases = [c for c in (dataset.split(split) if split else dataset.cases) if c.tv_image]
    if not cases:
        raise ValueError(f"{dataset.root}: no cases with a TV image in split {split or 'all'}")
    pairs: dict[str, tuple[list, list, list]] = {m: ([], [], []) for m in HEAD_MEASUREMENTS}
    present: dict[str, list[tuple[bool, str]]] = {m: [] for m in HEAD_MEASUREMENTS}
    dices, dice_groups = [], []
    for start in track(range(0, len(cases), batch), "measuring", enabled=progress):
        chunk = cases[start : start + batch]
        truths = [head_truth(dataset, c) for c in chunk]
        images = [
            t.image if t else read_grey(dataset.image_path(c.tv_image))
            for t, c in zip(truths, chunk, strict=True)
        ]
        for case, truth, maps in zip(chunk, truths, predict_maps(model, images), strict=True):
            measured = measure_head(maps, case.spacing_mm("tv"))
            for m in HEAD_MEASUREMENTS:
                true = _true_value(case, m)
                if true is None:
                    continue
                got = measured.values.get(m)
                present[m].append((got is not None, case.group))
                if got is not None:
                    for column, value in zip(pairs[m], (got, true, case.group), strict=True):
                        column.append(value)
            if truth is not None:
                shape = truth.head.shape
                fitted = measured.outer.mask(shape) if measured.outer else np.zeros(shape, bool)
                dices.append(dice(fitted, truth.head))
                dice_groups.append(case.group)
    result: dict = {"dataset": dataset.spec.name, "split": split or "all", "n_cases": len(cases)}
    for m, (got, true, groups) in pairs.items():
        if present[m]:
            result[m] = agreement(got, true, groups, n_boot, seed) if got else {"n": 0}
            hits, groups_all = zip(*present[m], strict=True)
            result[m]["measured"] = proportion_with_ci(hits, groups_all, n_boot, seed)
    if dices:
        result["dice"] = {**mean_with_ci(dices, dice_groups, n_boot, seed), "n": len(dices)}
    return result


def _true_value(case, column: str) -> float | None:
    try:
        return float(case.extra[column])
    except (KeyError, ValueError):
        return None
