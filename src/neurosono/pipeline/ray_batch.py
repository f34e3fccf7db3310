"""``predict --batch --engine ray``: the batch of ``pipeline/batch.py`` on Ray Data.

read (the cases) -> decode, stage 1, stage 2, biometry (one actor per worker, models loaded
once per actor) -> write (the driver, row by row as they arrive, in the input's order).
Decoding happens in the actor that predicts, so images never cross Ray's object store.
The rows are those of the local engine: the same ``predict_row``, the same results file,
resumed the same way, bad files reported at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from neurosono.pipeline.batch import (
    RESULT_COLUMNS,
    BatchCase,
    BatchSummary,
    ResultsFile,
    pending_cases,
    source_cases,
)

CASES_PER_BATCH = 4  # per actor call: small, so rows reach the results file steadily


def _encode(case: BatchCase) -> str:
    return json.dumps(
        {
            "case_id": case.case_id,
            "tv": str(case.tv.resolve()) if case.tv else None,
            "tc": str(case.tc.resolve()) if case.tc else None,
            "spacing_mm": case.spacing_mm,
            "ga_weeks": case.ga_weeks,
        }
    )


def _decode(text: str) -> BatchCase:
    data = json.loads(text)
    return BatchCase(
        data["case_id"],
        Path(data["tv"]) if data["tv"] else None,
        Path(data["tc"]) if data["tc"] else None,
        data["spacing_mm"],
        data["ga_weeks"],
    )


def predictor_class(model: str | None, runtime: str, frame: int | None, threads: int) -> type:
    """The Ray actor class: it loads the pipeline once, then predicts batches of encoded cases.

    Its settings are baked into the class (no constructor arguments): Ray can then restart a
    lost actor without keeping arguments alive in its object store.
    """

    class CasePredictor:
        def __init__(self) -> None:
            import torch

            from neurosono.pipeline.predict import Pipeline

            torch.set_num_threads(threads)
            self.pipeline = Pipeline.load(model, runtime=runtime, threads=threads, notify=lambda _: None)

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            from neurosono.pipeline.batch import predict_row

            rows = [predict_row(self.pipeline, _decode(text), frame) for text in batch["case"]]
            return {c: np.array([row.get(c, "") for row in rows], dtype=object) for c in RESULT_COLUMNS}

    return CasePredictor


def predict_batch_ray(
    model: str | Path | None,
    runtime: str,
    source: Path,
    results: Path,
    frame: int | None = None,
    address: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    progress: bool = False,
    notify: Callable[[str], None] | None = None,
    on_row: Callable[[dict[str, str]], None] | None = None,
) -> BatchSummary:
    """Predict every case of ``source`` not already in ``results`` on ``workers`` Ray actors.

    ``address``: a running cluster (see ``docs/scale.md``); without it a local cluster of
    ``workers`` x ``threads_per_worker`` CPUs starts here. ``workers`` defaults to the
    cluster's CPUs / ``threads_per_worker``. ``model`` and the images must be readable at
    the same path on every node. ``on_row``: called with each row as it is written.
    """
    from neurosono.core.cluster import cluster_cpus, start_ray
    from neurosono.core.progress import track

    cases = source_cases(source)
    failures: list[str] = []
    with ResultsFile(results) as out:
        todo = pending_cases(out, cases)
        if not todo:
            return BatchSummary(len(cases), failures, 0)
        # a local cluster just large enough for the workers asked for (default: every core)
        ray = start_ray(address, workers * threads_per_worker if workers and not address else None)
        workers = workers or max(1, cluster_cpus(ray) // threads_per_worker)
        if notify:
            threads = f"{threads_per_worker} thread" + ("s" if threads_per_worker > 1 else "")
            notify(f"Ray: {workers} workers x {threads}, {len(todo)} cases to predict")
        shown = {case.case_id: (str(case.tv or ""), str(case.tc or "")) for case in todo}
        dataset = ray.data.from_items(
            [{"case": _encode(case)} for case in todo],
            # a block per batch of cases, and at least one per worker
            override_num_blocks=min(max(-(-len(todo) // CASES_PER_BATCH), workers), len(todo), 4096),
        ).map_batches(
            predictor_class(
                None if model is None else str(Path(model).resolve()), runtime, frame, threads_per_worker
            ),
            batch_size=CASES_PER_BATCH,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads_per_worker,
        )
        for row in track(dataset.iter_rows(), "predicting cases (Ray)", len(todo), progress):
            row = {column: str(row[column]) for column in RESULT_COLUMNS}
            # the paths as the cases file gives them, as the local engine writes them
            row["tv_image"], row["tc_image"] = shown[row["case_id"]]
            out.write(row)
            if on_row:
                on_row(row)
            if row["error"]:
                failures.append(f"{row['case_id']}: {row['error']}")
    return BatchSummary(len(cases), failures, len(todo))
