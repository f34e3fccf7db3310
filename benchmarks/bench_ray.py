"""Batch throughput on Ray against the local batch engine, on this machine.

On a fresh phantom cohort (seed 616, used nowhere else), the same cases go through
``predict --batch`` twice: the local engine (one process, onnxruntime on every core) and
Ray (``--engine ray``: a local cluster of ``--workers`` actors, one onnxruntime thread
each). Both read the images, run both stages and the biometry, and write a results file.

Reported for each: the wall time from the call to the last row, including Ray's start-up
(cluster, actors, models loaded once per actor); and the steady throughput, from the first
row written to the last. Target: Ray with 2 workers >= 0.9x the local batch throughput
(steady). On two cores this measures Ray's overhead; on a cluster, throughput grows with
the actors (``docs/scale.md`` gives the arithmetic).

Run: .venv/bin/python benchmarks/bench_ray.py [--cases 160] [--workers 2] [--runtime onnx]
     [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from neurosono.phantom.cohort import CohortConfig, generate_cohort
from neurosono.pipeline.batch import run_batch
from neurosono.pipeline.predict import Pipeline
from neurosono.pipeline.ray_batch import predict_batch_ray

SEED = 616  # not used by any other cohort in this project
TARGET_RATIO = 0.9  # Ray (2 workers) over the local batch engine, steady throughput


def _rates(start: float, stamps: list[float]) -> dict:
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
    return {
        "cases": len(stamps),
        "wall_s": round(stamps[-1] - start, 2),
        "cases_per_s_with_startup": round(len(stamps) / (stamps[-1] - start), 2),
        "cases_per_s_steady": None if steady is None else round(steady, 2),
    }


def local_engine(cohort: Path, out: Path, runtime: str) -> dict:
    from neurosono.pipeline.batch import cases_from

    start = time.perf_counter()
    pipeline = Pipeline.load(None, runtime=runtime)
    stamps = [time.perf_counter() for _ in run_batch(pipeline, cases_from(cohort / "cases.csv"), out)]
    return _rates(start, stamps)


def ray_engine(cohort: Path, out: Path, runtime: str, workers: int) -> dict:
    stamps: list[float] = []
    start = time.perf_counter()
    predict_batch_ray(
        None,
        runtime,
        cohort / "cases.csv",
        out,
        workers=workers,
        on_row=lambda _: stamps.append(time.perf_counter()),
    )
    return _rates(start, stamps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=160)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx", "int8"))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    Pipeline.load(None, runtime=args.runtime)  # writes the cached export once, before any actor
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        generate_cohort(cohort, CohortConfig(cases=args.cases, seed=args.seed))
        local = local_engine(cohort, Path(tmp) / "local.csv", args.runtime)
        print(f"local: {local}")
        ray = ray_engine(cohort, Path(tmp) / "ray.csv", args.runtime, args.workers)
        print(f"ray: {ray}")
    ratio = ray["cases_per_s_steady"] / local["cases_per_s_steady"]
    report = {
        "machine": {"cores": os.cpu_count()},
        "cohort": {"seed": args.seed, "cases": args.cases, "size": 512},
        "runtime": args.runtime,
        "local": local,
        "ray": {**ray, "workers": args.workers, "threads_per_worker": 1},
        "ray_over_local_steady": round(ratio, 3),
        "target": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
    }
    print(f"{'':24s}{'local':>10s}{'ray':>10s}")
    for key in ("wall_s", "cases_per_s_with_startup", "cases_per_s_steady"):
        print(f"{key:24s}{local[key]:>10}{ray[key]:>10}")
    print(f"ray / local (steady): {ratio:.3f} (target >= {TARGET_RATIO})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
