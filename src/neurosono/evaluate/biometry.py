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
from neurosono.measure.head import HEAD_MEASUREMENTS, measure_image
from neurosono.measure.standards import CSP_MIN_MM, HC_CENTILE_LIMITS, STANDARDS
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


def true_hints(case) -> dict[str, bool]:
    """The findings a hint should report, from a dataset's true measurements (where recorded)."""
    truth: dict[str, bool] = {}
    width = _true_value(case, "csp_width_mm")
    if width is not None:
        truth["csp_not_seen"] = width < CSP_MIN_MM
    hc = _true_value(case, "hc_mm")
    if hc is not None and case.ga_weeks is not None:
        centile = STANDARDS["hc_mm"].centile(hc, case.ga_weeks)
        if centile is not None:
            truth["hc_small"], truth["hc_large"] = (
                centile < HC_CENTILE_LIMITS[0],
                centile > HC_CENTILE_LIMITS[1],
            )
    return truth


def hint_scores(rows: list[tuple[str, bool, bool, str]], n_boot: int, seed: int) -> dict:
    """Sensitivity and specificity per hint from (finding, hinted, true, group) rows."""
    result = {}
    for finding in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == finding]
        positives = [(r[1], r[3]) for r in mine if r[2]]
        negatives = [(not r[1], r[3]) for r in mine if not r[2]]
        result[finding] = {
            "sensitivity": proportion_with_ci(*_columns(positives), n_boot, seed),
            "specificity": proportion_with_ci(*_columns(negatives), n_boot, seed),
            "n_positive": len(positives),
            "n_negative": len(negatives),
        }
    return result


def _columns(pairs):
    return ([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else ([], None)


def evaluate_biometry(
    dataset_path: str | Path,
    model,
    split: str | None = "test",
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    detector=None,
    plot: str | Path | None = None,
) -> dict:
    """Measure every TV image of the split with the head ``model`` and score it (see above).
    With a ``detector``, the hints are scored too (stage 1 on the TV and TC images for the CSP)."""
    dataset = Dataset.load(dataset_path)
    cases = [c for c in (dataset.split(split) if split else dataset.cases) if c.tv_image]
    if not cases:
        raise ValueError(f"{dataset.root}: no cases with a TV image in split {split or 'all'}")
    pairs: dict[str, tuple[list, list, list]] = {m: ([], [], []) for m in HEAD_MEASUREMENTS}
    present: dict[str, list[tuple[bool, str]]] = {m: [] for m in HEAD_MEASUREMENTS}
    dices, dice_groups = [], []
    hint_rows: list[tuple[str, bool, bool, str]] = []
    for case in track(cases, "measuring", enabled=progress):
        truth = head_truth(dataset, case)
        image = truth.image if truth else read_grey(dataset.image_path(case.tv_image))
        measured = measure_image(model, image, case.spacing_mm("tv"))
        if detector is not None:
            hint_rows.extend(_case_hints(dataset, case, measured, detector))
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
    if hint_rows:
        result["hints"] = hint_scores(hint_rows, n_boot, seed)
    if plot is not None:
        drawn = {m: (got, true) for m, (got, true, _) in pairs.items() if len(got) > 1}
        if drawn:
            bland_altman_plot(drawn, result, Path(plot))
    return result


def bland_altman_plot(pairs: dict[str, tuple[list, list]], result: dict, out: Path) -> Path:
    """One Bland-Altman panel per measurement: difference against mean, bias and limits."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neurosono.core.atomic import atomic_write_bytes

    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.6), squeeze=False)
    for ax, (name, (got, true)) in zip(axes[0], pairs.items(), strict=True):
        got, true = np.asarray(got), np.asarray(true)
        ax.scatter((got + true) / 2, got - true, s=8, alpha=0.6)
        bias, (low, high) = result[name]["bias"]["value"], result[name]["loa95"]
        for level, style in ((bias, "-"), (low, "--"), (high, "--")):
            ax.axhline(level, color="k", linestyle=style, linewidth=0.8)
        unit = "" if name == "cephalic_index" else " (mm)"
        ax.set(
            xlabel=f"mean of measured and true{unit}",
            ylabel=f"measured - true{unit}",
            title=f"{name}: bias {bias:+.2f}, LoA {low:+.2f} to {high:+.2f}",
        )
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result['dataset']} ({result['split']}): Bland-Altman", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _case_hints(dataset: Dataset, case, measured, detector) -> list[tuple[str, bool, bool, str]]:
    from neurosono.core.images import read_image
    from neurosono.detect.predict import detect_planes
    from neurosono.measure.biometry import assemble
    from neurosono.measure.case import CSP_MIN_CONFIDENCE, csp_seen

    truth = true_hints(case)
    if not truth:
        return []
    images = {
        plane: read_image(dataset.image_path(rel)) for plane, rel in case.images() if plane in ("tv", "tc")
    }
    seen, why = csp_seen(detect_planes(detector, images, conf=CSP_MIN_CONFIDENCE), list(detector.regions))
    biometry = assemble(measured, case.ga_weeks, seen, why)
    return [
        (h.finding, bool(h.present), truth[h.finding], case.group)
        for h in biometry.hints
        if h.finding in truth and h.present is not None
    ]


def _true_value(case, column: str) -> float | None:
    try:
        return float(case.extra[column])
    except (KeyError, ValueError):
        return None
