"""The server under load, on loopback: ``neurosono serve`` against the batch path, same run.

A fresh phantom cohort (seed 608, used nowhere else); ``neurosono serve`` started as a real
process on a free loopback port; the page's first load timed; then REQUESTS requests to
``POST /api/v1/predict`` (TV + TC, age and spacing from cases.csv) from CLIENTS concurrent
clients, cycling over the cases. Reported: failed requests (any answer but 200), lost ones
(no answer at all), latency p50/p95, throughput; then, with the server stopped, the batch
path (``pipeline.batch.run_batch``, the code of ``predict --batch``) over the same cases, twice,
and the server's throughput as a share of it.

Targets: 0 failed or lost; p95 <= 1.0 s at 8 clients on 2 cores; throughput >= 80% of the
batch path; the page's first load <= 1 s.

Run: .venv/bin/python benchmarks/bench_serve.py [--requests 200] [--clients 8] [--cases 40]
     [--runtime onnx|torch] [--workers 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from neurosono.phantom.cohort import CohortConfig, generate_cohort

SEED = 608  # not used by any other cohort in this project
P95_TARGET_S = 1.0
SHARE_TARGET = 0.80
FIRST_LOAD_TARGET_S = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int, runtime: str, workers: int, queue: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "neurosono", "serve", "--port", str(port), "--runtime", runtime,
               "--workers", str(workers), "--queue", str(queue)]  # fmt: skip
    log = open(os.devnull, "w")  # noqa: SIM115 - the process owns it until it ends
    process = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"neurosono serve exited with {process.returncode}")
        time.sleep(0.3)
    process.kill()
    raise SystemExit("neurosono serve did not become ready in 300 s")


def multipart(files: dict[str, bytes], fields: dict[str, str]) -> tuple[bytes, dict]:
    """A multipart/form-data body and its header, as a browser sends them."""
    boundary = "neurosono-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    for name, data in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def load(url: str, cases: list[dict], requests: int, clients: int) -> dict:
    """``requests`` POSTs from ``clients`` threads; per request its status (None: lost) and time."""
    results: list[tuple[int | None, float]] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=120) as session:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                case = cases[index % len(cases)]
                started = time.perf_counter()
                try:
                    response = session.post(url, content=case["body"], headers=case["headers"])
                    status = response.status_code
                except httpx.HTTPError:
                    status = None
                with lock:
                    results.append((status, time.perf_counter() - started))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    seconds = np.array([s for _, s in results])
    statuses = [c for c, _ in results]
    return {
        "requests": requests,
        "answered": len(results),
        "failed": sum(1 for c in statuses if c is not None and c != 200),
        "lost": requests - sum(1 for c in statuses if c is not None),
        "statuses": {str(c): statuses.count(c) for c in sorted(set(statuses), key=str)},
        "p50_s": round(float(np.percentile(seconds, 50)), 3),
        "p95_s": round(float(np.percentile(seconds, 95)), 3),
        "max_s": round(float(seconds.max()), 3),
        "wall_s": round(wall, 2),
        "cases_per_s": round(requests / wall, 2),
    }


def batch_throughput(root: Path, runtime: str) -> dict:
    from neurosono.pipeline.batch import cases_from, run_batch
    from neurosono.pipeline.predict import Pipeline

    pipeline = Pipeline.load(runtime=runtime, notify=lambda m: None)
    batch = cases_from(root / "cases.csv")
    list(run_batch(pipeline, batch[:4], root / "warm-up.csv"))
    started = time.perf_counter()  # the cases twice: a longer, steadier measurement
    done = sum(1 for rep in range(2) for _ in run_batch(pipeline, batch, root / f"batch{rep}.csv"))
    wall = time.perf_counter() - started
    return {"cases": done, "wall_s": round(wall, 2), "cases_per_s": round(done / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        root = Path(work) / "cohort"
        generate_cohort(root, CohortConfig(cases=args.cases, seed=SEED), workers=1)
        cases = []  # each body encoded once: the clients share the server's two cores
        with (root / "cases.csv").open() as handle:
            for row in csv.DictReader(handle):
                files = {p: (root / row[f"{p}_image"]).read_bytes() for p in ("tv", "tc")}
                fields = {"ga_weeks": row["ga_weeks"], "spacing_mm": row["tv_pixel_spacing_mm"]}
                body, headers = multipart(files, fields)
                cases.append({"body": body, "headers": headers})
        port = free_port()
        process = start_server(port, args.runtime, args.workers, queue=max(16, args.clients))
        try:
            base = f"http://127.0.0.1:{port}"
            first = []
            for _ in range(5):
                started = time.perf_counter()
                page = httpx.get(base + "/")
                for asset in ("/static/style.css", "/static/common.js", "/static/case.js"):
                    httpx.get(base + asset)
                first.append(time.perf_counter() - started)
                assert page.status_code == 200
            load(base + "/api/v1/predict", cases, 2 * args.workers, args.workers)  # warm the path
            served = load(base + "/api/v1/predict", cases, args.requests, args.clients)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        batch = batch_throughput(root, args.runtime)
    report = {
        "runtime": args.runtime,
        "workers": args.workers,
        "clients": args.clients,
        "cores": os.cpu_count(),
        "page_first_load_s": {"first": round(first[0], 3), "median": round(float(np.median(first)), 3)},
        "server": served,
        "batch": batch,
        "share_of_batch": round(served["cases_per_s"] / batch["cases_per_s"], 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    report["targets"] = {
        "no_failed_or_lost": served["failed"] == 0 and served["lost"] == 0,
        "p95_le_1s": served["p95_s"] <= P95_TARGET_S,
        "share_ge_0.8": report["share_of_batch"] >= SHARE_TARGET,
        "first_load_le_1s": first[0] <= FIRST_LOAD_TARGET_S,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
