"""The biometry networks on onnxruntime: ``head.onnx`` and ``structures.onnx``.

:class:`OnnxNet` stands in for the torch module wherever the measuring code calls one (it
takes and returns torch tensors), so the head and structure measurements run the same
code on either runtime; :func:`export_biometry` writes both files and checks them
against torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from neurosono.core.atomic import atomic_write_bytes
from neurosono.measure.structures import CROP_PX, FOSSA_DEPTH

OPSET = 17
# Raised when the exported graphs change for the same weights (2: the head's upsampling has
# constant scales), so cached exports of an older graph are written again.
GRAPH_REVISION = 2
HEAD_ONNX = "head.onnx"
STRUCTURES_ONNX = "structures.onnx"


class OnnxNet:
    """An ONNX file on onnxruntime, called like the torch module it was exported from."""

    def __init__(self, path: str | Path, threads: int | None = None, engine: str = "onnxruntime") -> None:
        from neurosono.core.runtime import model_runner

        self.path = Path(path)
        self.runner = model_runner(self.path, threads, engine)
        first = self.runner.get_inputs()[0]
        self.input = first.name
        height, width = first.shape[-2:]
        self.input_size = (int(width), int(height))  # the framed image's size, as the torch module's
        self.n_out = self.runner.get_outputs()[0].shape[-1]  # the structure network's outputs

    @property
    def reads_fossa(self) -> bool:
        """Whether a structure network has the posterior-fossa window's outputs, as the torch one."""
        return isinstance(self.n_out, int) and self.n_out > FOSSA_DEPTH

    def eval(self) -> OnnxNet:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.runner.run(None, {self.input: np.ascontiguousarray(x.numpy(), np.float32)})
        return torch.from_numpy(out)


def _export(model: torch.nn.Module, shape: tuple[int, ...], target: Path) -> float:
    """Export ``model`` (input [B, *shape]) to ``target``; the largest difference from torch."""
    import io

    model = model.eval()
    example = torch.randn(2, *shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes are about itself
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["out"],
            dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}},
        )
    atomic_write_bytes(target, buffer.getvalue())
    with torch.no_grad():
        expected = model(example)
    return float((OnnxNet(target, threads=1)(example) - expected).abs().max())


def export_biometry(head_model, structure_model, folder: str | Path) -> dict:
    """Write head.onnx (and structures.onnx, with a structure model) into ``folder``; returns
    each file's largest difference from torch on random input."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = head_model.input_size
    checks = {HEAD_ONNX: _export(head_model, (1, height, width), folder / HEAD_ONNX)}
    if structure_model is not None:
        checks[STRUCTURES_ONNX] = _export(structure_model, (1, CROP_PX, CROP_PX), folder / STRUCTURES_ONNX)
    return checks
