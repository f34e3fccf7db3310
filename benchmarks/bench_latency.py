"""Inference latency of the whole pipeline, torch against onnxruntime.

On a fresh phantom cohort (seed 606, used nowhere else), for each runtime: a warm-up,
then per case (TV + TC, images read from disk -> Prediction) the latency, split into
image decoding, stage 1 (detector on both images) and stage 2 (crops, HexaNet and the
drop-one attributions, the Prediction); median and p90 over the measured cases; then
the batch throughput through ``pipeline.batch.run_batch`` over the same cases.

Runtimes, side by side in one run (``--runtimes``, default all five):

* ``torch``: the shipped torch models;
* ``onnx``: their fp32 ONNX export on onnxruntime;
* ``int8``: the int8 export (``neurosono export --int8``: each file in int8 only where it
  keeps fp32's accuracy; ``--int8 DIR``, else written into a temporary folder first) on
  onnxruntime;
* ``openvino`` and ``openvino-int8``: the same fp32 and int8 files compiled by OpenVINO.

Targets: <= 100 ms per case on onnxruntime; stage 2 adds <= 15% over detection alone
(median stage 2 / median stage 1); <= 40 ms per case on int8 or OpenVINO. The machine's
load average is recorded with every run: figures measured while other jobs share the CPU are upper bounds.

The decision alone is timed (``Pipeline.load(..., biometry=False)``): what biometry adds
is ``benchmarks/bench_biometry.py``'s figure; ``--biometry`` times both together.

Run: .venv/bin/python benchmarks/bench_latency.py [--cases 64] [--warmup 8] [--json out.json]
     [--model DIR] [--onnx DIR] [--int8 DIR] [--runtimes torch,onnx,int8,openvino,openvino-int8]
     (default: the shipped models and their cached ONNX export)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neurosono.core.images import read_image
from neurosono.data.format import Dataset
from neurosono.detect.env import cpu_cores
from neurosono.phantom.cohort import CohortConfig, generate_cohort
from neurosono.pipeline.batch import cases_from, run_batch
from neurosono.pipeline.predict import Pipeline

SEED = 606  # not used by any other cohort in this project
LATENCY_TARGET_MS = 100.0  # per case on onnxruntime
FAST_TARGET_MS = 40.0  # per case on int8 or OpenVINO
RUNTIMES = ("torch", "onnx", "int8", "openvino", "openvino-int8")
STAGE2_TARGET = 0.15  # stage 2 time over stage 1 time


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def stats(values: list[float]) -> dict:
    ms = np.asarray(values) * 1000
    return {
        "median_ms": round(float(np.median(ms)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "mean_ms": round(float(np.mean(ms)), 2),
    }


def measure(
    pipeline: Pipeline, cohort: Path, cases: list, warmup: int, batch_dir: Path, threads: int
) -> dict:
    """Per-case timings (after ``warmup`` cases) and the batch throughput."""
    load_before = load_average()
    for case in cases[:warmup]:
        pipeline.predict(cohort / case.tv_image, cohort / case.tc_image)
    # ultralytics sets torch's threads to every core when it builds its predictor.
    torch.set_num_threads(threads)
    timings: dict[str, list[float]] = {"total": [], "decode": [], "stage1": [], "stage2": []}
    measured = cases[warmup:]
    for case in measured:
        t0 = time.perf_counter()
        images = {"tv": read_image(cohort / case.tv_image), "tc": read_image(cohort / case.tc_image)}
        t1 = time.perf_counter()
        detections = pipeline.detect(images)
        t2 = time.perf_counter()
        pipeline.classify(images, detections)
        t3 = time.perf_counter()
        for key, value in (("total", t3 - t0), ("decode", t1 - t0), ("stage1", t2 - t1), ("stage2", t3 - t2)):
            timings[key].append(value)
    load_mid = load_average()
    ids = {c.case_id for c in measured}
    batch_cases = [c for c in cases_from(cohort / "cases.csv") if c.case_id in ids]
    start = time.perf_counter()
    errors = [e for _, e in run_batch(pipeline, batch_cases, batch_dir / "results.csv") if e]
    batch_seconds = time.perf_counter() - start
    result = {key: stats(values) for key, values in timings.items()}
    result["stage2_over_stage1"] = round(
        result["stage2"]["median_ms"] / max(result["stage1"]["median_ms"], 1e-9), 4
    )
    result["n_cases"] = len(measured)
    result["batch"] = {
        "cases": len(batch_cases),
        "seconds": round(batch_seconds, 2),
        "cases_per_s": round(len(batch_cases) / batch_seconds, 2),
        "errors": len(errors),
    }
    result["load_average"] = {"before": load_before, "after_latency": load_mid, "after_batch": load_average()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=64, help="cases generated (warm-up + measured)")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--model", type=Path, default=None, help="torch model folder (default: shipped)")
    parser.add_argument("--onnx", type=Path, default=None, help="ONNX export (default: the cached one)")
    parser.add_argument("--int8", type=Path, default=None, help="int8 export (default: written first)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--biometry", action="store_true", help="measure the biometry too")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and onnxruntime threads (default: every core)"
    )
    args = parser.parse_args()
    if args.cases - args.warmup < 50:
        parser.error("measure at least 50 cases: --cases minus --warmup must be >= 50")
    threads = os.cpu_count() or 1
    torch.set_num_threads(args.threads or threads)
    report = {
        "machine": {
            "cpu": cpu_name(),
            "cores": threads,
            "torch_threads": torch.get_num_threads(),
            "onnxruntime_intra_op_threads": args.threads or cpu_cores(),
            "python": platform.python_version(),
        },
        "cohort": {"seed": args.seed, "cases": args.cases, "warmup": args.warmup, "size": 512},
        "biometry": args.biometry,
        "targets": {
            "onnx_median_ms": LATENCY_TARGET_MS,
            "stage2_over_stage1": STAGE2_TARGET,
            "int8_or_openvino_median_ms": FAST_TARGET_MS,
        },
        "runtimes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        start = time.perf_counter()
        generate_cohort(cohort, CohortConfig(cases=args.cases, seed=args.seed))
        print(f"cohort: {args.cases} cases (seed {args.seed}) in {time.perf_counter() - start:.1f} s")
        cases = Dataset.load(cohort).cases
        runtimes = args.runtimes.split(",")
        unknown = sorted(set(runtimes) - set(RUNTIMES))
        if unknown:
            parser.error(f"unknown runtimes {unknown}; choose from {', '.join(RUNTIMES)}")
        if args.model is not None and args.onnx is None and set(runtimes) - {"torch"}:
            parser.error("--model with an ONNX runtime needs --onnx (an export of that model)")
        int8_dir = args.int8
        if int8_dir is None and {"int8", "openvino-int8"} & set(runtimes):
            from neurosono.pipeline.quantize import export_int8

            start = time.perf_counter()
            int8_dir, record = export_int8(
                args.model, Path(tmp) / "int8", notify=lambda m: print(f"int8: {m}")
            )
            report["int8_export"] = {
                "seconds": round(time.perf_counter() - start, 1),
                **_int8_summary(record),
            }
        elif int8_dir is not None:
            from neurosono.pipeline.onnx_files import read_manifest

            report["int8_export"] = _int8_summary(read_manifest(int8_dir)["int8"])
        for runtime in runtimes:
            model = {"torch": args.model, "int8": int8_dir, "openvino-int8": int8_dir}.get(runtime, args.onnx)
            engine = {"openvino-int8": "openvino"}.get(runtime, runtime)  # Pipeline.load's runtime
            start = time.perf_counter()
            pipeline = Pipeline.load(model, runtime=engine, threads=args.threads, biometry=args.biometry)
            load_seconds = time.perf_counter() - start
            batch_dir = Path(tmp) / f"batch-{runtime}"
            result = measure(pipeline, cohort, cases, args.warmup, batch_dir, args.threads or threads)
            result["load_seconds"] = round(load_seconds, 2)
            report["runtimes"][runtime] = result
            print(f"{runtime}: done, load average {result['load_average']}")
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


def _int8_summary(record: dict) -> dict:
    return {
        "int8_files": record["int8_files"],
        "fp32_files": record["fp32_files"],
        "why_fp32": {f: e["failed"] for f, e in record["files"].items() if not e["int8"]},
        "check": record["check"],
    }


def print_table(report: dict) -> None:
    machine = report["machine"]
    print(
        f"\nmachine: {machine['cpu']}, {machine['cores']} CPU cores; threads: torch "
        f"{machine['torch_threads']}, onnxruntime intra-op {machine['onnxruntime_intra_op_threads']}"
    )
    runtimes = report["runtimes"]
    names = list(runtimes)
    rows = [
        ("per case, median ms", lambda r: f"{r['total']['median_ms']:.1f}"),
        ("per case, p90 ms", lambda r: f"{r['total']['p90_ms']:.1f}"),
        ("  image decoding, median ms", lambda r: f"{r['decode']['median_ms']:.1f}"),
        ("  stage 1 (detector), median ms", lambda r: f"{r['stage1']['median_ms']:.1f}"),
        ("  stage 2 (crops, HexaNet, attrib.), median ms", lambda r: f"{r['stage2']['median_ms']:.1f}"),
        ("stage 2 over stage 1", lambda r: f"{100 * r['stage2_over_stage1']:.1f}%"),
        ("batch throughput, cases/s", lambda r: f"{r['batch']['cases_per_s']:.2f}"),
        (
            "load average (1, 5, 15 min) at end",
            lambda r: " ".join(f"{x:.2f}" for x in r["load_average"]["after_batch"]),
        ),
        ("cases measured", lambda r: str(r["n_cases"])),
    ]
    width = 46
    print(f"{'':{width}s}" + "".join(f"{n:>15s}" for n in names))
    for label, cell in rows:
        print(f"{label:{width}s}" + "".join(f"{cell(runtimes[n]):>15s}" for n in names))
    if "int8_export" in report:
        summary = report["int8_export"]
        print(
            f"int8 files: {', '.join(summary['int8_files'])}; "
            f"fp32: {', '.join(summary['fp32_files']) or 'none'}"
        )
        for file, why in summary["why_fp32"].items():
            print(f"  {file} stays fp32: {'; '.join(why)}")
    targets = report["targets"]
    if "onnx" in runtimes:
        onnx = runtimes["onnx"]
        met = onnx["total"]["median_ms"] <= targets["onnx_median_ms"]
        print(
            f"target <= {targets['onnx_median_ms']:.0f} ms/case on onnxruntime: "
            f"{'met' if met else 'NOT met'} ({onnx['total']['median_ms']:.1f} ms median)"
        )
    fast = {n: r for n, r in runtimes.items() if n in ("int8", "openvino", "openvino-int8")}
    if fast:
        name, best = min(fast.items(), key=lambda item: item[1]["total"]["median_ms"])
        met = best["total"]["median_ms"] <= targets["int8_or_openvino_median_ms"]
        timed = "decision and biometry" if report["biometry"] else "decision only"
        print(
            f"target <= {targets['int8_or_openvino_median_ms']:.0f} ms/case on int8 or OpenVINO ({timed}): "
            f"{'met' if met else 'NOT met'} (fastest: {name}, {best['total']['median_ms']:.1f} ms median)"
        )
    for name, r in runtimes.items():
        met = r["stage2_over_stage1"] <= targets["stage2_over_stage1"]
        print(
            f"target stage 2 adds <= {100 * targets['stage2_over_stage1']:.0f}% over detection ({name}): "
            f"{'met' if met else 'NOT met'} ({100 * r['stage2_over_stage1']:.1f}%)"
        )


if __name__ == "__main__":
    main()
