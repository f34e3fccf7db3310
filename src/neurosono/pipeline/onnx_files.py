"""The ONNX export folder, written down once: its file names, its manifest and how it is checked,
and how onnxruntime runs every part of it.

An export folder holds ``detector.onnx`` (stage 1), ``hexanet.onnx`` (stage 2 with its
drop-one attributions) and ``onnx.json``: regions, planes, threshold and its rule, how stage
2's inputs are made, the notice, the SHA-256 of the source files and of the ONNX files
(checked at every load), imgsz, opset, package versions, and the largest difference from
torch measured when the files were written.
"""

from __future__ import annotations

import json
from pathlib import Path

from neurosono.core.checkpoints import ModelFileError, file_sha256
from neurosono.core.runtime import onnx_runner  # noqa: F401  (re-exported: the pipeline runs its files with it)

FORMAT = "neurosono-onnx-v1"
MANIFEST = "onnx.json"
DETECTOR_ONNX = "detector.onnx"
HEXANET_ONNX = "hexanet.onnx"
OPSET = 17  # onnxruntime >= 1.14 runs it; ultralytics' minimum for detection is 9 (11 with NMS)
DETECTOR_BATCH = 1  # with fixed_size: images per detector run (TV and TC go one after the other)


class OnnxModelError(ModelFileError):
    """An ONNX model folder is missing, incomplete, or does not match its manifest."""


def read_manifest(folder: str | Path) -> dict:
    """onnx.json of an ONNX export, after checking the files it names are there and unchanged."""
    folder = Path(folder)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise OnnxModelError(
            f"{folder}: no ONNX export here ({MANIFEST}, {DETECTOR_ONNX}, {HEXANET_ONNX}); create one with "
            f"'neurosono export --format onnx --model MODEL --out {folder}'"
        )
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as exc:
        raise OnnxModelError(f"{manifest_file}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OnnxModelError(f"{manifest_file}: not a neurosono ONNX manifest (format {FORMAT!r} expected)")
    for part in ("detector", "hexanet"):
        path = folder / manifest[part]["file"]
        if not path.is_file():
            raise OnnxModelError(f"{path}: missing (named in {manifest_file})")
        if file_sha256(path) != manifest[part]["sha256"]:
            raise OnnxModelError(f"{path}: changed since export (SHA-256 differs from {manifest_file})")
    return manifest
