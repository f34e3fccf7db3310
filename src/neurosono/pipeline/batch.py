"""Batch prediction over a cases.csv or a folder, resumable, never stopped by one bad file."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from neurosono.core.atomic import atomic_write_bytes
from neurosono.core.images import IMAGE_EXTENSIONS, read_image
from neurosono.data.format import load_cases
from neurosono.pipeline.predict import Pipeline, Prediction

RESULT_COLUMNS = (
    "case_id",
    "tv_image",
    "tc_image",
    "ga_weeks",
    "p_abnormal",
    "decision",
    "threshold",
    "support",
    "hc_mm",
    "bpd_mm",
    "ofd_mm",
    "cephalic_index",
    "hints",
    "warnings",
    "error",
)


@dataclass(frozen=True)
class BatchCase:
    case_id: str
    tv: Path | None
    tc: Path | None
    spacing_mm: dict[str, float | None] | None = None
    ga_weeks: float | None = None


def cases_from(source: Path) -> list[BatchCase]:
    """A neurosono cases.csv (paths relative to it; its ga_weeks column, where filled, goes to
    models that use the gestational age) or a folder of NAME_tv.* / NAME_tc.* images."""
    if source.is_file():
        root = source.parent
        return [
            BatchCase(
                c.case_id,
                root / c.tv_image if c.tv_image else None,
                root / c.tc_image if c.tc_image else None,
                {plane: c.spacing_mm(plane) for plane in ("tv", "tc")},
                c.ga_weeks,
            )
            for c in load_cases(source)
        ]
    pairs: dict[str, dict[str, Path]] = {}
    for path in sorted(source.iterdir()):
        match = re.match(r"^(.*?)[_-](tv|tc)$", path.stem, re.IGNORECASE)
        if match and path.suffix.lower() in IMAGE_EXTENSIONS:
            pairs.setdefault(match.group(1), {})[match.group(2).lower()] = path
    return [BatchCase(name, p.get("tv"), p.get("tc")) for name, p in sorted(pairs.items())]


def done_case_ids(results: Path) -> set[str]:
    """Cases already predicted in a results file being resumed (it must have our columns)."""
    if not results.exists():
        return set()
    with results.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != RESULT_COLUMNS:
            raise ValueError(
                f"{results}: its columns ({', '.join(reader.fieldnames)}) are not those of this "
                "version's results; give a new --csv file"
            )
        return {row["case_id"] for row in reader if not row.get("error")}


def run_batch(
    pipeline: Pipeline, cases: list[BatchCase], results: Path, frame: int | None = None
) -> Iterator[tuple[BatchCase, str | None]]:
    """Predict each case not already done, appending one row per case (flushed as it goes)."""
    done = done_case_ids(results)
    new_file = not results.exists()
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, RESULT_COLUMNS, lineterminator="\n")
        if new_file:
            writer.writeheader()
        for case in cases:
            if case.case_id in done:
                continue
            row = {
                "case_id": case.case_id,
                "tv_image": str(case.tv or ""),
                "tc_image": str(case.tc or ""),
                "ga_weeks": "" if case.ga_weeks is None else f"{case.ga_weeks:g}",
            }
            error = None
            try:
                # cases.csv often has the age: only a model that uses it gets it (no warning per row).
                ga = case.ga_weeks if pipeline.uses_ga else None
                result = pipeline.predict(
                    case.tv, case.tc, frame=frame, spacing_mm=case.spacing_mm, ga_weeks=ga
                )
                row.update(
                    p_abnormal=f"{result.p_abnormal:.4f}",
                    decision=result.decision,
                    threshold=f"{result.threshold:.4f}",
                    support="" if result.support is None else f"{result.support:.4f}",
                    warnings="; ".join(result.warnings),
                    **biometry_columns(result.biometry),
                )
            except (ValueError, OSError) as exc:
                error = str(exc)
                row["error"] = error
            writer.writerow(row)
            handle.flush()
            yield case, error


def biometry_columns(biometry: dict | None) -> dict[str, str]:
    """The head measurements and the hints found, for a results row ('' where absent)."""
    if biometry is None:
        return {}
    row = {
        m: f"{biometry['values'][m]:g}"
        for m in ("hc_mm", "bpd_mm", "ofd_mm", "cephalic_index")
        if m in biometry["values"]
    }
    row["hints"] = ";".join(h["finding"] for h in biometry["hints"] if h["present"])
    return row


@dataclass
class BatchSummary:
    n_cases: int
    failures: list[str]  # "case_id: problem", for the cases that could not be predicted


def predict_batch(
    pipeline: Pipeline, source: Path, results: Path, frame: int | None = None, progress: bool = False
) -> BatchSummary:
    """Predict every case of ``source`` (a cases.csv or a folder of pairs) into ``results``,
    resuming a results file already there; bad files are listed, never stop the batch."""
    from neurosono.core.progress import track

    if not source.exists():
        raise ValueError(f"{source}: does not exist")
    cases = cases_from(source)
    failures = [
        f"{case.case_id}: {error}"
        for case, error in track(
            run_batch(pipeline, cases, results, frame), "predicting cases", len(cases), progress
        )
        if error
    ]
    return BatchSummary(len(cases), failures)


def write_overlays(result: Prediction, folder: Path) -> list[Path]:
    """Each input image with what the prediction found on it (``pipeline/overlay.py``)."""
    from neurosono.pipeline.overlay import overlay_png

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for plane, info in result.inputs.items():
        png = overlay_png(read_image(info["path"]).bgr(), result, plane)
        target = folder / f"{Path(info['path']).stem}_overlay.png"
        atomic_write_bytes(target, png)
        written.append(target)
    return written
