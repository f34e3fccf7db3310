"""Pretraining target: do phantoms save labelling? Learning curves of the fetal-head detector.

For N = 10, 30, 100 and all real training images (split by source group), a detector
fine-tuned from the shipped phantom detector against one trained from scratch, same recipe,
scored on the same group-held-out test split. Target: phantom-pretrained with 30 real
images >= from scratch with 100. About an hour on 2 cores.
Run: .venv/bin/python benchmarks/bench_pretraining.py HEAD_DATASET --work NEW_FOLDER
     [--json FILE] [--png FILE]
HEAD_DATASET: fhead and HC18 merged and split by source group (docs/real-data.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from neurosono.evaluate.pretraining import CURVE_SIZES, curve_plot, learning_curve
from neurosono.models import DEFAULT_DETECTOR


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="new folder for the runs")
    parser.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR, help="phantom detector")
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    curve = learning_curve(
        args.dataset, args.work, args.detector, CURVE_SIZES, args.imgsz, args.seed, progress=True
    )
    print(
        f"learning curves on {curve['dataset']} ({time.perf_counter() - start:.0f} s; "
        f"{curve['n_val_images']} validation images; imgsz {curve['imgsz']})"
    )
    by = {(p["init"], p["n_train"]): p for p in curve["points"]}
    for p in curve["points"]:
        m = p["map50"]
        print(
            f"  {p['init']:8s} N={p['n_train']:4d} ({p['n_train_groups']} groups, {p['epochs']} epochs): "
            f"fetal_head mAP@0.5 {m['value']:.3f} (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})"
        )
    pre30, scratch100 = by.get(("phantom", 30)), by.get(("scratch", 100))
    if pre30 and scratch100:
        ok = pre30["map50"]["value"] >= scratch100["map50"]["value"]
        print(
            f"target phantom-pretrained N=30 >= scratch N=100: {'met' if ok else 'NOT met'} "
            f"({pre30['map50']['value']:.3f} vs {scratch100['map50']['value']:.3f})"
        )
    if args.json:
        args.json.write_text(json.dumps(curve, indent=2))
    if args.png:
        curve_plot(curve, args.png)


if __name__ == "__main__":
    main()
