"""Both stages exported as ONNX (``neurosono export --format onnx``).

from neurosono.pipeline.export import export_onnx
export_onnx(out="deploy/phantom-onnx")  # the shipped models: detector.onnx, hexanet.onnx, onnx.json
pipeline = Pipeline.load("deploy/phantom-onnx", runtime="onnx")

* ``detector.onnx``: stage 1 through ultralytics' own exporter, at the detector's
  ``imgsz``; onnxruntime runs it inside ultralytics' predictor, so letterboxing,
  confidence filtering and NMS are the very code the torch path runs. By default its
  height, width and batch are dynamic: ultralytics then letterboxes an image to
  ``imgsz`` on its long side and pads the short side only to a multiple of the
  stride, exactly as on torch. ``fixed_size=True`` gives a fixed [1, 3, imgsz, imgsz]
  input (for runtimes that need static shapes); ultralytics must then pad every image
  to a square, which torch does not, so results on non-square images differ a little
  from torch (see docs/deployment.md).
* ``hexanet.onnx``: stage 2 as :class:`~neurosono.pipeline.stage2.DropOneHexaNet`
  (HexaNet plus every drop-one-region logit in one pass): inputs ``crops``
  [B, R, 1, 64, 64] float32 and ``scalars`` [B, R, S], outputs ``logit`` [B] and
  ``drop_one_logits`` [B, R]; batch dynamic, R and S taken from the model.
* ``onnx.json``: regions, planes, threshold and its rule, notice, the SHA-256 of the
  source files and of the ONNX files, imgsz, opset, package versions, and the largest
  difference from torch measured when the files were written.

Both graphs come from torch's TorchScript-based exporter (``dynamo=False``), the one
ultralytics uses for the detector too: one exporter for both files, and no onnxscript
dependency, which the torch.export-based exporter (torch's default since 2.9) needs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from neurosono.core.atomic import OutputExistsError, atomic_write_text, staged_directory
from neurosono.core.checkpoints import file_sha256
from neurosono.core.provenance import package_versions
from neurosono.detect.env import configure_ultralytics
from neurosono.detect.model import Detector
from neurosono.pipeline.bundle import default_model_dir, load_torch_parts
from neurosono.pipeline.onnx_files import (
    DETECTOR_BATCH,
    DETECTOR_ONNX,
    FORMAT,
    HEXANET_ONNX,
    MANIFEST,
    OPSET,
    onnx_runner,
)
from neurosono.pipeline.stage2 import drop_one_model, example_inputs

T = TypeVar("T")

# Largest difference from torch accepted when exporting (a broken export is far off):
# raw detector outputs (pixels and scores, values up to imgsz) and HexaNet logits.
DETECTOR_ATOL = 0.05
HEXANET_ATOL = 1e-4


def export_onnx(
    model_dir: str | Path | None = None,
    out: str | Path = "onnx",
    overwrite: bool = False,
    fixed_size: bool = False,
) -> Path:
    """Export a model folder (default: the shipped phantom models) to ``out``; returns ``out``.

    ``out`` is written as :func:`export_folder` writes every export (an existing one only
    replaced with ``overwrite``). ``fixed_size``: see the module docstring.
    """
    folder = Path(model_dir) if model_dir else default_model_dir()
    export_folder(out, overwrite, lambda staging: write_export(folder, staging, fixed_size))
    return Path(out)


def export_folder(out: str | Path, overwrite: bool, write: Callable[[Path], T]) -> T:
    """Build an export folder with ``write(staging)`` and put it at ``out``; returns what
    ``write`` returns.

    ``out`` is built under a temporary name and renamed into place when complete. An
    existing ``out`` is refused unless ``overwrite``, and even then only when it is an
    earlier ONNX export (holds ``onnx.json``) or empty.
    """
    out = Path(out)
    replace = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if replace and not overwrite:
        raise OutputExistsError(f"{out}: already exists; choose a new --out or pass --overwrite")
    if replace and not (out / MANIFEST).is_file():
        raise OutputExistsError(f"{out}: exists and is not a neurosono ONNX export; refusing to replace it")
    target = out.parent / f".{out.name}.{os.getpid()}.new" if replace else out
    with staged_directory(target) as staging:
        result = write(staging)
    if replace:
        old = out.parent / f".{out.name}.{os.getpid()}.old"
        os.replace(out, old)
        os.replace(target, out)
        shutil.rmtree(old, ignore_errors=True)
    return result


def write_export(model_dir: Path, folder: Path, fixed_size: bool = False) -> dict:
    """Write detector.onnx, hexanet.onnx and onnx.json into an existing (staging) folder."""
    parts = load_torch_parts(model_dir)
    detector, meta, info = parts.detector, parts.hexanet.meta, parts.info
    detector_check = export_detector(detector, folder / DETECTOR_ONNX, fixed_size)
    hexanet_check, shapes = export_hexanet(parts.hexanet.model, folder / HEXANET_ONNX)
    manifest = {
        "format": FORMAT,
        "name": info["name"],
        "source": str(model_dir),
        "regions": list(meta["regions"]),
        "planes": {k: list(v) for k, v in meta["planes"].items()},
        "threshold": float(meta["threshold"]),
        "threshold_rule": meta.get("threshold_rule", ""),
        # How stage 2's inputs are made (classify/train.py): the head size behind relative
        # region sizes, and case-level inputs such as the gestational age.
        "head_size": meta.get("head_size", "span"),
        "crop_fractions": meta.get("crop_fractions"),
        "age_crop_fractions": meta.get("age_crop_fractions"),
        "case_inputs": list(meta.get("case_inputs", [])),
        "ga_weeks_range": meta.get("ga_weeks_range"),
        "indeterminate": meta.get("indeterminate"),  # when not to answer (classify/domain.py)
        "notice": info["notice"],
        "trained_on": info["trained_on"],
        "detector": {
            "file": DETECTOR_ONNX,
            "sha256": file_sha256(folder / DETECTOR_ONNX),
            "source_sha256": info["detector_sha256"],
            "regions": list(detector.regions),  # what it finds (stage 2 reads the brain regions)
            "imgsz": detector.imgsz,
            "fixed_size": fixed_size,
            "dark_below": detector.dark_below,  # darker images are stretched first (detect/predict.py)
            "input": {
                "images": [DETECTOR_BATCH, 3, detector.imgsz, detector.imgsz]
                if fixed_size
                else ["batch", 3, "height", "width"]
            },
            "max_abs_diff_vs_torch": detector_check,
        },
        "hexanet": {
            "file": HEXANET_ONNX,
            "sha256": file_sha256(folder / HEXANET_ONNX),
            "source_sha256": info["classifier_sha256"],
            "n_regions": shapes["n_regions"],
            "n_scalars": shapes["n_scalars"],
            "n_case_scalars": shapes["n_case_scalars"],
            "inputs": {
                "crops": ["batch", shapes["n_regions"], 1, shapes["crop"], shapes["crop"]],
                "scalars": ["batch", shapes["n_regions"], shapes["n_scalars"]],
                **({"case_scalars": ["batch", shapes["n_case_scalars"]]} if shapes["n_case_scalars"] else {}),
            },
            "outputs": {"logit": ["batch"], "drop_one_logits": ["batch", shapes["n_regions"]]},
            "max_abs_diff_vs_torch": hexanet_check,
            # the detector its thresholds were chosen behind (training or `classify calibrate`)
            "detector_sha256": meta.get("detector_sha256"),
        },
        "biometry": export_biometry_files(model_dir, folder),
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=False); the detector through ultralytics' ONNX exporter",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_biometry_files(model_dir: Path, folder: Path) -> dict:
    """head.onnx and structures.onnx for the biometry models the folder's pipeline uses (its
    own, else the shipped ones): per file, its hash, its source's hash and its difference
    from torch. Empty when there is no head model."""
    from neurosono.measure.onnx import GRAPH_REVISION, HEAD_ONNX, STRUCTURES_ONNX, export_biometry
    from neurosono.pipeline.bundle import load_biometry_models

    head, structures, hashes = load_biometry_models(model_dir)
    if head is None:
        return {}
    checks = export_biometry(head, structures, folder)
    return {
        name: {
            "file": file,
            "sha256": file_sha256(folder / file),
            "source_sha256": hashes[f"{name}_sha256"],
            "max_abs_diff_vs_torch": checks[file],
            "graph_revision": GRAPH_REVISION,
        }
        for name, file in (("head", HEAD_ONNX), ("structures", STRUCTURES_ONNX))
        if file in checks
    }


def export_detector(detector: Detector, target: Path, fixed_size: bool) -> float:
    configure_ultralytics()
    from ultralytics.engine.exporter import Exporter

    model = copy.deepcopy(detector.yolo.model)  # the exporter fuses and re-flags the model it gets
    model.task = "detect"
    model.pt_path = str(target.with_suffix(".pt"))  # the exporter writes <pt_path stem>.onnx beside it
    with _quiet():
        written = Exporter(
            overrides={
                "format": "onnx",
                "imgsz": detector.imgsz,
                "batch": DETECTOR_BATCH,
                "device": "cpu",
                "opset": OPSET,
                # No onnxslim pass: onnxruntime optimises the graph itself when it loads it
                # (measured: same speed), and the export is seconds faster without it.
                "simplify": False,
                "dynamic": not fixed_size,
                "nms": False,
                "verbose": False,
                "mode": "export",
            }
        )(model=model)
    if Path(written).resolve() != target.resolve():
        raise RuntimeError(f"ultralytics wrote {written}, expected {target}")
    # Raw outputs of torch and onnxruntime on the same input (non-square when it may be).
    generator = torch.Generator().manual_seed(0)
    width = detector.imgsz if fixed_size else max(32, detector.imgsz * 3 // 4 // 32 * 32)
    image = torch.rand(DETECTOR_BATCH, 3, detector.imgsz, width, generator=generator)
    reference = copy.deepcopy(detector.yolo.model).eval()
    with torch.no_grad():
        expected = reference(image)
    expected = (expected[0] if isinstance(expected, (list, tuple)) else expected).numpy()
    got = onnx_runner(target).run(None, {"images": image.numpy()})[0]
    diff = float(np.max(np.abs(got - expected)))
    if got.shape != expected.shape or not diff <= DETECTOR_ATOL:
        raise RuntimeError(f"detector.onnx differs from the torch detector (max abs diff {diff:.3g})")
    return diff


def export_hexanet(classifier: torch.nn.Module, target: Path) -> tuple[float, dict]:
    wrapper = drop_one_model(classifier)
    R, S, C, crop = wrapper.n_regions, wrapper.n_scalars, wrapper.n_case_scalars, wrapper.crop
    # A model with case-level inputs (the gestational age) gets a third input.
    names = ["crops", "scalars", "case_scalars"][: 3 if C else 2]
    example = example_inputs(R, S, batch=2, crop=crop, n_case_scalars=C)
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            wrapper,
            example,
            str(target),
            dynamo=False,  # see the module docstring
            opset_version=OPSET,
            input_names=names,
            output_names=["logit", "drop_one_logits"],
            dynamic_axes={
                **{name: {0: "batch"} for name in names},
                "logit": {0: "batch"},
                "drop_one_logits": {0: "batch"},
            },
        )
    _fix_output_dims(target, {"drop_one_logits": {1: R}})
    # Another batch size than the one traced, so the dynamic axis is exercised.
    example = example_inputs(R, S, batch=3, crop=crop, seed=1, n_case_scalars=C)
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(*example)]
    got = onnx_runner(target).run(None, {name: t.numpy() for name, t in zip(names, example, strict=True)})
    diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
    if not diff <= HEXANET_ATOL:
        raise RuntimeError(f"hexanet.onnx differs from torch HexaNet (max abs diff {diff:.3g})")
    return diff, {"n_regions": R, "n_scalars": S, "n_case_scalars": C, "crop": crop}


def _fix_output_dims(path: Path, dims: dict[str, dict[int, int]]) -> None:
    """Write fixed sizes the tracer left symbolic (the R of drop_one_logits) into the graph."""
    import onnx

    model = onnx.load(str(path))
    for output in model.graph.output:
        for axis, size in dims.get(output.name, {}).items():
            output.type.tensor_type.shape.dim[axis].dim_value = size
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet():
    """Exporters' deprecation and tracer warnings are about their internals, not the user's input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
