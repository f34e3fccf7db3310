"""Phantom generator speed: cases per second and the time for a study-sized cohort.

Target: >= 10 cases/s on 2 CPU cores at 512 px; a 319-case cohort in < 40 s.
Run: .venv/bin/python benchmarks/bench_synth.py [--cases 319] [--size 512] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from neurosono.phantom.cohort import CohortConfig, default_workers, generate_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=319)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    args = parser.parse_args()
    workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_cohort(
            Path(tmp) / "cohort", CohortConfig(cases=args.cases, seed=args.seed, size=args.size), workers
        )
        elapsed = time.perf_counter() - start
        size_mb = sum(f.stat().st_size for f in (Path(tmp) / "cohort").rglob("*") if f.is_file()) / 1e6
    print(f"cpu cores available: {len(os.sched_getaffinity(0))}, workers: {workers}")
    print(f"cohort: {args.cases} cases x 2 images at {args.size} px, seed {args.seed}")
    print(f"wall time: {elapsed:.1f} s  ({args.cases / elapsed:.1f} cases/s, {size_mb:.0f} MB written)")
    print(
        f"targets: >= 10 cases/s -> {'met' if args.cases / elapsed >= 10 else 'NOT met'}; "
        f"319 cases < 40 s -> {'met' if elapsed * 319 / args.cases < 40 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
