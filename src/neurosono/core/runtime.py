"""The machine's cores, and onnxruntime set up the way every neurosono model runs."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def onnx_runner(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # onnxruntime's idle worker threads spin by default, taking the cores from torch's
    # threads (ultralytics' pre- and post-processing) and from Python between runs: on
    # 2 cores, stage 1 + 2 took 92-132 ms per case spinning and 51-56 ms not spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
