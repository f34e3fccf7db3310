"""Batch prediction over a cases.csv or a folder, resumable, never stopped by one bad file."""

from __future__ import annotations

import csv
import os
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

# Written as numbers in a Parquet results file (a CSV holds text anyway).
NUMERIC_COLUMNS = frozenset(
    ("ga_weeks", "p_abnormal", "threshold", "support", "hc_mm", "bpd_mm", "ofd_mm", "cephalic_index")
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


class ResultsFile:
    """A batch's results: a CSV appended row by row, or a Parquet file.

    Parquet cannot be appended, so its rows go to a journal beside it (``.NAME.partial.csv``)
    as they come, and ``close`` writes the Parquet file (atomically) from the rows it already
    held and the journal's. A run that stops midway resumes from both.
    """

    def __init__(self, path: Path) -> None:
        if path.suffix.lower() not in (".csv", ".parquet"):
            raise ValueError(f"{path}: results must be a .csv or a .parquet file")
        self.path = path
        self.parquet = path.suffix.lower() == ".parquet"
        self.journal = path.with_name(f".{path.name}.partial.csv") if self.parquet else path
        self._handle = None
        self._writer = None

    def rows(self) -> list[dict[str, str]]:
        """Every row already written (a retried case keeps its newest row last)."""
        rows = _parquet_rows(self.path) if self.parquet and self.path.exists() else []
        return rows + _csv_rows(self.journal)

    def done_case_ids(self) -> set[str]:
        """Cases already predicted, without an error."""
        latest = {row["case_id"]: row for row in self.rows()}
        return {case_id for case_id, row in latest.items() if not row.get("error")}

    def write(self, row: dict[str, str]) -> None:
        if self._writer is None:
            new_file = not self.journal.exists()
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.journal.open("a", newline="")
            self._writer = csv.DictWriter(self._handle, RESULT_COLUMNS, lineterminator="\n")
            if new_file:
                self._writer.writeheader()
        self._writer.writerow(row)
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = self._writer = None
        if self.parquet and self.journal.exists():
            import pyarrow as pa
            import pyarrow.parquet as pq

            latest = {row["case_id"]: row for row in self.rows()}
            table = pa.Table.from_pylist(
                [_typed(row) for row in latest.values()],
                schema=pa.schema(
                    [(c, pa.float64() if c in NUMERIC_COLUMNS else pa.string()) for c in RESULT_COLUMNS]
                ),
            )
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, self.path)
            self.journal.unlink()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _typed(row: dict[str, str]) -> dict:
    """A results row for Parquet: numbers as floats (null where absent), text as text."""
    return {
        c: (float(row[c]) if row.get(c) else None) if c in NUMERIC_COLUMNS else (row.get(c) or "")
        for c in RESULT_COLUMNS
    }


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        _check_columns(path, reader.fieldnames)
        return list(reader)


def _parquet_rows(path: Path) -> list[dict[str, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
    _check_columns(path, table.column_names)
    return [
        {c: "" if v is None else str(v) for c, v in row.items()}  # the CSV rows' form
        for row in table.to_pylist()
    ]


def _check_columns(path: Path, columns) -> None:
    if columns is not None and tuple(columns) != RESULT_COLUMNS:
        raise ValueError(
            f"{path}: its columns ({', '.join(columns)}) are not those of this "
            "version's results; give a new results file"
        )


def source_cases(source: Path) -> list[BatchCase]:
    """The cases of a batch source (``cases_from``), which must exist."""
    if not source.exists():
        raise ValueError(f"{source}: does not exist")
    return cases_from(source)


def pending_cases(out: ResultsFile, cases: list[BatchCase]) -> list[BatchCase]:
    """The cases not yet predicted in ``out`` (a resumed run skips the others)."""
    done = out.done_case_ids()
    return [case for case in cases if case.case_id not in done]


def predict_row(pipeline: Pipeline, case: BatchCase, frame: int | None = None) -> dict[str, str]:
    """One case's results row; a file that cannot be read or predicted fills ``error``."""
    row = {
        "case_id": case.case_id,
        "tv_image": str(case.tv or ""),
        "tc_image": str(case.tc or ""),
        "ga_weeks": "" if case.ga_weeks is None else f"{case.ga_weeks:g}",
    }
    try:
        # cases.csv often has the age: only a model that uses it gets it (no warning per row).
        ga = case.ga_weeks if pipeline.uses_ga else None
        result = pipeline.predict(case.tv, case.tc, frame=frame, spacing_mm=case.spacing_mm, ga_weeks=ga)
        row.update(
            p_abnormal=f"{result.p_abnormal:.4f}",
            decision=result.decision,
            threshold=f"{result.threshold:.4f}",
            support="" if result.support is None else f"{result.support:.4f}",
            warnings="; ".join(result.warnings),
            **biometry_columns(result.biometry),
        )
    except (ValueError, OSError) as exc:
        row["error"] = str(exc)
    return row


def run_batch(
    pipeline: Pipeline, cases: list[BatchCase], results: Path, frame: int | None = None
) -> Iterator[tuple[BatchCase, str | None]]:
    """Predict each case not already done, writing one row per case as it goes."""
    with ResultsFile(results) as out:
        yield from _predict_into(out, pipeline, pending_cases(out, cases), frame)


def _predict_into(
    out: ResultsFile, pipeline: Pipeline, cases: list[BatchCase], frame: int | None
) -> Iterator[tuple[BatchCase, str | None]]:
    for case in cases:
        row = predict_row(pipeline, case, frame)
        out.write(row)
        yield case, row.get("error")


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
    n_predicted: int = 0  # by this run (the others were already in the results file)


def predict_batch(
    pipeline: Pipeline, source: Path, results: Path, frame: int | None = None, progress: bool = False
) -> BatchSummary:
    """Predict every case of ``source`` (a cases.csv or a folder of pairs) into ``results``,
    resuming a results file already there; bad files are listed, never stop the batch."""
    from neurosono.core.progress import track

    cases = source_cases(source)
    with ResultsFile(results) as out:
        todo = pending_cases(out, cases)
        outcomes = track(_predict_into(out, pipeline, todo, frame), "predicting cases", len(todo), progress)
        failures = [f"{case.case_id}: {error}" for case, error in outcomes if error]
    return BatchSummary(len(cases), failures, len(todo))


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
