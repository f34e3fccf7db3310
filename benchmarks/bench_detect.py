"""Stage-1 target: the shipped detector on a freshly generated phantom cohort.

Target: mAP@0.5 >= 0.95 overall and >= 0.90 for every region, on a cohort (TV, TC and TT
images, realistic look) whose seed was never used in training (the shipped model was
trained on seed 101).
Run: .venv/bin/python benchmarks/bench_detect.py [--seed 202] [--cases 319] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from neurosono.data.format import Dataset
from neurosono.detect.evaluate import evaluate_detector
from neurosono.detect.model import load_detector
from neurosono.models import DEFAULT_DETECTOR
from neurosono.phantom.cohort import CohortConfig, generate_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=202, help="cohort seed (never a training seed)")
    parser.add_argument("--cases", type=int, default=319)
    parser.add_argument("--model", type=Path, default=DEFAULT_DETECTOR)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    detector = load_detector(args.model)
    trained_on = detector.record.get("dataset", {}).get("name", "?")
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        generate_cohort(cohort, CohortConfig(cases=args.cases, seed=args.seed, tt=True))
        start = time.perf_counter()
        metrics = evaluate_detector(detector, Dataset.load(cohort), split=None, n_boot=args.n_boot)
        seconds = time.perf_counter() - start
    print(
        f"model: {args.model} (trained on {trained_on}); fresh cohort: seed {args.seed}, "
        f"{args.cases} cases, all {metrics['n_images']} images; evaluation {seconds:.0f} s"
    )

    def show(name: str, m: dict) -> None:
        print(f"  {name:28s} {m['value']:.3f}  (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})")

    for key in ("map50", "map50_95", "precision", "recall"):
        show(key, metrics[key])
    for region, m in metrics["per_region"].items():
        show(f"AP50 {region}", m["map50"])
    for plane, m in metrics["per_plane"].items():
        show(f"mAP50 {plane.upper()} plane", m["map50"])
    worst = min(m["map50"]["value"] for m in metrics["per_region"].values())
    print(
        f"target mAP50 >= 0.95: {'met' if metrics['map50']['value'] >= 0.95 else 'NOT met'}; "
        f"every region >= 0.90: {'met' if worst >= 0.90 else 'NOT met'} (worst {worst:.3f})"
    )
    print(f"CI method: {metrics['map50']['method']}")
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
