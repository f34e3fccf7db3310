"""Scoring measurements against a dataset's own: ``neurosono measure eval``.

For each measurement column the dataset has (``hc_mm``, ``bpd_mm``, ..., ``atrium_mm``,
``tcd_mm``, ``cisterna_magna_mm``, ``csp_width_mm``; a structure recorded as 0 mm is not
there and is left out): the mean absolute
error, the bias (mean of measured - true) and the 95% limits of agreement (Bland-Altman:
bias +- 1.96 SD of the differences), over the cases where both exist; the share of cases
where the measurement is absent is reported beside them. CIs are bootstrap percentile
intervals by source group. Where the true head outline is known (a head mask or phantom
geometry), the Dice of the fitted head ellipse with it. With stage 1 (a detector), the
structures are measured in its boxes and each finding hint is scored against the finding
the true measurements give: sensitivity and specificity.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neurosono.core.images import read_grey
from neurosono.core.metrics import mean_with_ci, proportion_with_ci
from neurosono.core.progress import track
from neurosono.data.format import Dataset
from neurosono.measure.ellipse import dice
from neurosono.measure.head import HEAD_MEASUREMENTS, measure_image
from neurosono.measure.standards import (
    ATRIUM_LIMITS_MM,
    CISTERNA_MAGNA_LIMITS_MM,
    CSP_MIN_MM,
    HC_CENTILE_LIMITS,
    STANDARDS,
    TCD_LOW_CENTILE,
)
from neurosono.measure.structures import STRUCTURE_NAMES
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
    atrium = _true_value(case, "atrium_mm")
    if atrium is not None and atrium > 0:  # 0: no atrium to measure (a monoventricle)
        truth["ventriculomegaly"] = atrium >= ATRIUM_LIMITS_MM["mild"]
    cisterna = _true_value(case, "cisterna_magna_mm")
    if cisterna is not None:
        truth["cisterna_magna_enlarged"] = cisterna > CISTERNA_MAGNA_LIMITS_MM[1]
        truth["cisterna_magna_small"] = cisterna < CISTERNA_MAGNA_LIMITS_MM[0]
    tcd = _true_value(case, "tcd_mm")
    if tcd is not None and case.ga_weeks is not None:
        centile = STANDARDS["tcd_mm"].centile(tcd, case.ga_weeks)
        if centile is not None:
            truth["tcd_small"] = centile < TCD_LOW_CENTILE
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


def hint_scores(rows: list[tuple[str, bool | None, bool, str]], n_boot: int, seed: int) -> dict:
    """Sensitivity and specificity per hint from (finding, hinted, true, group) rows, over the
    cases the hint answered; ``hinted`` None is a case it could not answer (its measurement
    absent), counted apart so that a finding the measurement misses altogether stays visible."""
    result = {}
    for finding in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == finding]
        answered = [r for r in mine if r[1] is not None]
        positives = [(r[1], r[3]) for r in answered if r[2]]
        negatives = [(not r[1], r[3]) for r in answered if not r[2]]
        result[finding] = {
            "sensitivity": proportion_with_ci(*_columns(positives), n_boot, seed),
            "specificity": proportion_with_ci(*_columns(negatives), n_boot, seed),
            "n_positive": len(positives),
            "n_negative": len(negatives),
            "n_positive_unanswered": sum(1 for r in mine if r[1] is None and r[2]),
            "n_negative_unanswered": sum(1 for r in mine if r[1] is None and not r[2]),
        }
    return result


def describe_hint_score(finding: str, score: dict) -> str:
    """One line for a hint's score: sensitivity, specificity, and the cases it could not answer."""

    def ci(entry: dict) -> str:
        if entry["value"] is None:
            return "n/a"
        return f"{entry['value']:.3f}, 95% CI {entry['ci95'][0]:.3f}-{entry['ci95'][1]:.3f}"

    sens, spec = score["sensitivity"], score["specificity"]
    line = (
        f"hint {finding}: sensitivity {sens['count']} ({ci(sens)}), specificity {spec['count']} ({ci(spec)})"
    )
    unanswered = score.get("n_positive_unanswered", 0) + score.get("n_negative_unanswered", 0)
    if unanswered:
        line += (
            f"; not answered on {unanswered} (measurement absent; "
            f"{score['n_positive_unanswered']} with the finding)"
        )
    return line


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
    structure_model=None,
) -> dict:
    """Measure every case of the split with the head ``model`` (TV image) and score it (see
    above). With a ``detector``, stage 1 runs on the TV and TC images: the head is framed on
    its head box as the pipeline frames it, the hints are scored, and with a
    ``structure_model`` the structures are measured in its boxes and scored too."""
    dataset = Dataset.load(dataset_path)
    cases = [c for c in (dataset.split(split) if split else dataset.cases) if c.tv_image]
    if not cases:
        raise ValueError(f"{dataset.root}: no cases with a TV image in split {split or 'all'}")
    columns = HEAD_MEASUREMENTS + (STRUCTURE_NAMES if structure_model is not None and detector else ())
    pairs: dict[str, tuple[list, list, list]] = {m: ([], [], []) for m in columns}
    present: dict[str, list[tuple[bool, str]]] = {m: [] for m in columns}
    dices, dice_groups = [], []
    hint_rows: list[tuple[str, bool, bool, str]] = []
    windows: dict[str, list[tuple[str, float]]] = {}  # measurement -> (window read in, |error|)
    for case in track(cases, "measuring", enabled=progress):
        # each image is read once: stage 1's copies serve the head model and the truth too
        images = _plane_images(dataset, case) if detector is not None else {}
        tv = images["tv"].pixels if images else read_grey(dataset.image_path(case.tv_image))
        truth = head_truth(dataset, case, tv)
        image = truth.image if truth else tv
        if detector is None:
            measured = measure_image(model, image, case.spacing_mm("tv"))
            values = measured.values
        else:
            measured, biometry = _with_stage1(case, model, image, images, detector, structure_model)
            values = biometry.values
            hint_rows.extend(_hint_rows(case, biometry))
            boxes = biometry.structures.boxes if biometry.structures else {}
        for m in columns:
            true = _true_value(case, m)
            if true is None or (m in STRUCTURE_NAMES and true <= 0):
                continue
            got = values.get(m)
            present[m].append((got is not None, case.group))
            if got is not None:
                for column, value in zip(pairs[m], (got, true, case.group), strict=True):
                    column.append(value)
                if detector is not None and m in boxes:
                    windows.setdefault(m, []).append((boxes[m].window, abs(got - true)))
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
            kinds = {kind for kind, _ in windows.get(m, [])}
            if len(kinds) > 1:  # read in more than one kind of window: each one's share and error
                result[m]["by_window"] = {
                    kind: {
                        "n": len(errors := [e for k, e in windows[m] if k == kind]),
                        "mae": round(float(np.mean(errors)), 3),
                    }
                    for kind in sorted(kinds)
                }
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


def _plane_images(dataset: Dataset, case) -> dict:
    """The case's TV and TC images as stage 1 reads them, each with its pixel spacing."""
    from neurosono.core.images import read_image

    images = {
        plane: read_image(dataset.image_path(rel)) for plane, rel in case.images() if plane in ("tv", "tc")
    }
    for plane, loaded in images.items():
        loaded.spacing_mm = loaded.spacing_mm or case.spacing_mm(plane)
    return images


def _with_stage1(case, model, image: np.ndarray, images: dict, detector, structure_model):
    """The head measured as the pipeline measures it (framed on stage 1's head box) and the
    case's biometry with stage 1 run on its TV and TC ``images`` (CSP seen, structures)."""
    from neurosono.detect.predict import detect_planes
    from neurosono.measure.case import DETECTION_CONFIDENCE, biometry_with, head_box

    detections = detect_planes(detector, images, conf=DETECTION_CONFIDENCE)
    names = list(detector.regions)
    measured = measure_image(model, image, case.spacing_mm("tv"), head_box(detections, names))
    return measured, biometry_with(measured, images, case.ga_weeks, detections, names, structure_model)


def _hint_rows(case, biometry) -> list[tuple[str, bool | None, bool, str]]:
    """(finding, hinted, true, group) for each hint the case's true measurements can judge
    (hinted None: the hint could not answer); a finding's grades, borderline included, count
    as the finding."""
    truth = true_hints(case)
    rows = []
    for hint in biometry.hints:
        finding = hint.finding.removesuffix("_borderline")
        finding = "ventriculomegaly" if finding.startswith("ventriculomegaly") else finding
        if finding in truth:
            hinted = None if hint.present is None else bool(hint.present)
            rows.append((finding, hinted, truth[finding], case.group))
    return rows


def recorded_measurements(dataset: Dataset, names: tuple[str, ...]) -> set[str]:
    """Which of the measurement columns ``names`` the dataset's cases record."""
    columns: set[str] = set()
    for case in dataset.cases:
        columns.update(case.extra)
    return columns & set(names)


def _true_value(case, column: str) -> float | None:
    try:
        return float(case.extra[column])
    except (KeyError, ValueError):
        return None


BIOMETRY_JSON = "biometry.json"
BLAND_ALTMAN_PNG = "bland_altman.png"


def evaluate_run_biometry(
    dataset_path: str | Path,
    detector_file: str | Path,
    out_dir: str | Path,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict | None:
    """The shipped head and structure models on a run's split, measured in the run's own
    stage-1 boxes: ``biometry.json`` and ``bland_altman.png`` in ``out_dir``. None (nothing
    written) where the dataset records no measurement or no head model is shipped."""
    from neurosono.core.atomic import atomic_write_text
    from neurosono.detect.model import load_detector
    from neurosono.measure.headnet import load_head_model
    from neurosono.measure.structures import load_structure_model
    from neurosono.models import PHANTOM_STRUCTURE_MODEL, REAL_HEAD_MODEL

    dataset = Dataset.load(dataset_path)
    recorded = recorded_measurements(dataset, HEAD_MEASUREMENTS + STRUCTURE_NAMES)
    if not recorded or not (REAL_HEAD_MODEL / "head.pt").is_file():
        return None
    head, _ = load_head_model(REAL_HEAD_MODEL)
    structures = None
    if (PHANTOM_STRUCTURE_MODEL / "structures.pt").is_file():
        structures, _ = load_structure_model(PHANTOM_STRUCTURE_MODEL)
    out_dir = Path(out_dir)
    result = evaluate_biometry(
        dataset_path,
        head,
        split,
        n_boot,
        seed,
        progress,
        detector=load_detector(detector_file),
        plot=out_dir / BLAND_ALTMAN_PNG,
        structure_model=structures,
    )
    result["models"] = {"head": "shipped", "structures": "shipped" if structures is not None else None}
    atomic_write_text(out_dir / BIOMETRY_JSON, json.dumps(result, indent=2) + "\n")
    return result
