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


class _Port:
    """An input or output as onnxruntime describes it: name, shape (str for a dynamic axis), type."""

    def __init__(self, port) -> None:
        self.name = port.get_any_name()
        self.shape = [
            d.get_length() if d.is_static else f"d{i}" for i, d in enumerate(port.get_partial_shape())
        ]
        self.type = (
            "tensor(float)"
            if port.get_element_type().get_type_name() == "f32"
            else str(port.get_element_type())
        )


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO's CPU plugin behind onnxruntime's session interface
    (``run``, ``get_inputs``, ``get_outputs``), so every caller of an onnxruntime session
    (ultralytics' ONNX backend, stage 2, the biometry networks) runs it unchanged.

    fp32 graphs run in fp32 (``INFERENCE_PRECISION_HINT``: on CPUs with bf16 units OpenVINO
    would otherwise compute in bf16); graphs with QuantizeLinear/DequantizeLinear pairs run
    their int8 kernels. One infer request, used under a lock: a pipeline is one caller.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import threading

        try:
            import openvino as ov
        except ImportError:
            raise ValueError("--runtime openvino needs OpenVINO: pip install 'neurosono[openvino]'") from None

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads or cpu_cores(),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()
        self.inputs = [_Port(p) for p in self.compiled.inputs]
        self.outputs = [_Port(p) for p in self.compiled.outputs]

    def get_inputs(self) -> list[_Port]:
        return self.inputs

    def get_outputs(self) -> list[_Port]:
        return self.outputs

    def get_providers(self) -> list[str]:
        return ["OpenVINO CPU"]

    def run(self, output_names, feed: dict):
        with self.lock:
            results = self.request.infer(feed)
            by_name = {port.get_any_name(): value for port, value in results.items()}
            names = output_names or [o.name for o in self.outputs]
            return [by_name[name].copy() for name in names]


ENGINES = ("onnxruntime", "openvino")


def model_runner(path: Path, threads: int | None = None, engine: str = "onnxruntime"):
    """An ONNX file ready to run on ``engine``: an onnxruntime session, or an OpenVINO
    compiled model behind the same interface."""
    if engine == "openvino":
        return OpenVinoSession(path, threads)
    if engine != "onnxruntime":
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    return onnx_runner(path, threads)
