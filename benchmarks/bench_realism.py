"""Sim-to-real targets: the realism scoreboard of the shipped phantom models on real images.

The shipped models are trained on phantoms only; real labels here only measure. Targets, on
the real datasets given (group-held-out for the models, which never saw them):
  fetal_head mAP@0.5 >= 0.90 on fhead and on HC18; stage-1 plane AUC (real TC vs TV) >= 0.90;
  cerebellum found on >= 80% of real TC images and on <= 10% of real TV images;
  simple-statistics discriminator AUC <= 0.85 (the CNN discriminator is reported beside it);
  style check (normal vs abnormal phantoms from grey histograms) AUC < 0.75.
Run: .venv/bin/python benchmarks/bench_realism.py REAL_DATASET... [--json FILE] [--png FILE]
(import the real sets first: docs/real-data.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from neurosono.classify.kinds import load_classifier
from neurosono.data.format import Dataset
from neurosono.detect.model import load_detector
from neurosono.evaluate.realism import realism_scoreboard, side_by_side
from neurosono.models import DEFAULT_DETECTOR, DEFAULT_HEXANET
from neurosono.phantom.cohort import CohortConfig, generate_cohort


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("real", type=Path, nargs="+", help="imported real datasets (fbau, fhead, hc18)")
    parser.add_argument("--phantom-cases", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None, help="side-by-side sheet")
    args = parser.parse_args()
    detector = load_detector(DEFAULT_DETECTOR)
    stage2 = load_classifier(DEFAULT_HEXANET).meta
    datasets = [Dataset.load(p) for p in args.real]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = CohortConfig(cases=args.phantom_cases, seed=args.seed, tt=True)
        cohort = generate_cohort(Path(tmp) / "phantom", config)
        board = realism_scoreboard(datasets, cohort, detector, args.n_boot, args.seed, stage2=stage2)
        if args.png:
            side_by_side(datasets, cohort, args.png)
    print(
        f"realism of {DEFAULT_DETECTOR.name} against {', '.join(board['real_datasets'])} "
        f"({time.perf_counter() - start:.0f} s)"
    )

    def show(name: str, m: dict | None, target: str = "") -> None:
        if not m or m.get("value") is None:
            print(f"  {name:46s} n/a {m.get('note', '') if m else ''}")
            return
        count = f"  [{m['count']}]" if "count" in m else ""
        print(
            f"  {name:46s} {m['value']:.3f} (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f}){count}  {target}"
        )

    def verdict(ok: bool) -> str:
        return "target met" if ok else "target NOT met"

    for name, m in board["head_map50"].items():
        show(f"fetal_head mAP@0.5 on {name}", m, verdict((m.get("value") or 0) >= 0.90) + " (>= 0.90)")
    plane = board["stage1_plane_auc"]
    show("stage-1 plane AUC, real TC vs TV", plane, verdict((plane.get("value") or 0) >= 0.90) + " (>= 0.90)")
    show("stage-1 plane AUC, phantom TC vs TV", board["phantom_plane_auc"])
    found = board["regions_found"]
    tc = found.get("tc", {}).get("cerebellum")
    tv = found.get("tv", {}).get("cerebellum")
    show("cerebellum found on real TC images", tc, verdict(bool(tc) and tc["value"] >= 0.80) + " (>= 0.80)")
    show("cerebellum found on real TV images", tv, verdict(bool(tv) and tv["value"] <= 0.10) + " (<= 0.10)")
    for plane_name, regions in found.items():
        shares = ", ".join(f"{r} {m['value']:.2f}" for r, m in regions.items())
        print(f"    real {plane_name.upper()} ({next(iter(regions.values()))['n_images']} images): {shares}")
    stats = board["statistics_auc"]
    show("statistics discriminator AUC", stats, verdict(stats["value"] <= 0.85) + " (<= 0.85)")
    show("CNN discriminator AUC", board["discriminator_auc"])
    style = board["style_check_auc"]
    show("style check AUC (normal vs abnormal phantoms)", style, verdict(style["value"] < 0.75) + " (< 0.75)")
    show("real TV/TC images not answered", board.get("indeterminate_share"))
    show("phantom TV/TC images not answered", board.get("phantom_indeterminate_share"))
    if args.json:
        args.json.write_text(json.dumps(board, indent=2))


if __name__ == "__main__":
    main()
