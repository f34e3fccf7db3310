"""The pipeline's two stages on onnxruntime, from an ONNX export folder (``onnx_files``).

Stage 1 runs ``detector.onnx`` inside ultralytics' own predictor, so letterboxing, the
confidence filter and NMS are the very code the torch path runs; stage 2 runs
``hexanet.onnx``. Without a folder, the shipped models' export in the cache folder is
used, written on first use.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neurosono import __version__
from neurosono.classify.gestation import N_GA_SCALARS
from neurosono.core.atomic import OutputExistsError
from neurosono.core.checkpoints import file_sha256
from neurosono.core.runtime import model_runner
from neurosono.detect.env import config_dir, configure_ultralytics
from neurosono.detect.model import Detector, dark_threshold, read_record
from neurosono.detect.predict import MAX_DET, NMS_IOU, OPERATING_CONF
from neurosono.measure.onnx import GRAPH_REVISION
from neurosono.pipeline.bundle import biometry_model_files, default_model_dir, model_files
from neurosono.pipeline.export import export_onnx
from neurosono.pipeline.onnx_files import MANIFEST, OnnxModelError, read_manifest


def _notify_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class OnnxHexaNet:
    """hexanet.onnx on onnxruntime: (crops, scalars, case scalars) -> (logits [B], drop-one logits [B, R]).

    Exports of models without case-level inputs have no ``case_scalars`` input; theirs
    ([B, 0]) are ignored.
    """

    def __init__(self, path: Path, threads: int | None = None, engine: str = "onnxruntime") -> None:
        self.path = path
        self.runner = model_runner(path, threads, engine)
        shapes = {i.name: i.shape for i in self.runner.get_inputs()}
        self.n_regions = int(shapes["crops"][1])
        self.n_scalars = int(shapes["scalars"][2])
        self.n_case_scalars = int(shapes["case_scalars"][1]) if "case_scalars" in shapes else 0

    def __call__(
        self, crops: np.ndarray, scalars: np.ndarray, case_scalars: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        feed = {
            "crops": np.ascontiguousarray(crops, np.float32),
            "scalars": np.ascontiguousarray(scalars, np.float32),
        }
        if self.n_case_scalars:
            feed["case_scalars"] = np.ascontiguousarray(case_scalars, np.float32)
        logit, drop = self.runner.run(["logit", "drop_one_logits"], feed)
        return logit, drop


def load_onnx_detector(
    folder: Path, manifest: dict, threads: int | None = None, engine: str = "onnxruntime"
) -> Detector:
    """detector.onnx inside ultralytics' predictor (same pre- and post-processing as torch)."""
    configure_ultralytics()
    from ultralytics import YOLO

    path = folder / manifest["detector"]["file"]
    imgsz = int(manifest["detector"]["imgsz"])
    yolo = YOLO(str(path), task="detect")
    # Set the predictor up once (on a blank image, with predict_images' arguments), then give
    # its ONNX backend a runner on every core: ultralytics builds its own with the defaults.
    blank = np.zeros((imgsz, imgsz, 3), np.uint8)
    torch_threads = torch.get_num_threads()
    yolo.predict(
        [blank], imgsz=imgsz, conf=OPERATING_CONF, iou=NMS_IOU, max_det=MAX_DET, device="cpu", verbose=False
    )
    torch.set_num_threads(torch_threads)  # ultralytics' device setup sets it to every core
    backend = getattr(yolo.predictor.model, "backend", None)
    if backend is None or not hasattr(backend, "session"):
        raise RuntimeError("ultralytics did not load detector.onnx with onnxruntime")
    backend.session = model_runner(path, threads, engine)
    names = yolo.predictor.model.names
    # Exports written before the detector's own region list was recorded: stage 2's regions.
    detector_regions = list(manifest["detector"].get("regions", manifest["regions"]))
    if [names[i] for i in sorted(names)] != detector_regions:
        raise OnnxModelError(f"{path}: its class names {names} do not match {MANIFEST}'s regions")
    return Detector(
        yolo=yolo,
        regions=detector_regions,
        planes={k: list(v) for k, v in manifest["planes"].items()},
        imgsz=imgsz,
        path=path,
        sha256=manifest["detector"]["source_sha256"],
        dark_below=manifest["detector"].get("dark_below"),
    )


@dataclass
class OnnxParts:
    detector: Detector
    stage2: OnnxHexaNet
    meta: dict
    info: dict
    head_model: object | None  # OnnxNet, called like the torch head model
    structure_model: object | None


def default_export_dir(detector_sha256: str, classifier_sha256: str) -> Path:
    """Cache folder for the shipped models' export, keyed by their source SHA-256s."""
    return config_dir().parent / "onnx" / f"{detector_sha256[:16]}-{classifier_sha256[:16]}"


def cached_default_export(
    notify: Callable[[str], None] | None = None,
    int8: bool = False,
    build_int8: Callable[[Path, Path], object] | None = None,
) -> Path:
    """The shipped models' ONNX export in the cache folder, written on first use (``int8``:
    their int8 export, written by ``build_int8(model_dir, folder)``, which takes minutes)."""
    detector_file, classifier_file = model_files(default_model_dir())
    det_sha, cls_sha = file_sha256(detector_file), file_sha256(classifier_file)
    folder = default_export_dir(det_sha, cls_sha)
    if int8:
        folder = folder.with_name(folder.name + "-int8")
    with contextlib.suppress(OnnxModelError):
        manifest = read_manifest(folder)
        sources = (manifest["detector"]["source_sha256"], manifest["hexanet"]["source_sha256"])
        biometry = {k: v["source_sha256"] for k, v in manifest.get("biometry", {}).items()}
        revisions = {v.get("graph_revision") for v in manifest.get("biometry", {}).values()}
        current = (
            sources == (det_sha, cls_sha)
            and manifest["detector"].get("fixed_size") is False
            and manifest["detector"].get("dark_below") == dark_threshold(read_record(detector_file))
            and biometry == {name: file_sha256(f) for name, f in biometry_model_files(None).items()}
            and revisions <= {GRAPH_REVISION}
            and ("int8" in manifest) == int8
        )
        if current:
            return folder
    notify = notify or _notify_stderr
    notify(f"exporting the shipped models to ONNX{' int8' if int8 else ''} once, into {folder}")
    if folder.exists():  # stale or broken: replace it
        shutil.rmtree(folder)
    try:
        if int8:
            if build_int8 is None:
                raise OnnxModelError(f"{folder}: no int8 export of the shipped models yet")
            build_int8(default_model_dir(), folder)
        else:
            export_onnx(default_model_dir(), folder)
    except (OutputExistsError, OSError):
        # Another process may have written it meanwhile; use it if it is complete.
        read_manifest(folder)
    return folder


def load_onnx_biometry(
    folder: Path, manifest: dict, threads: int | None = None, engine: str = "onnxruntime"
) -> tuple:
    """(head model, structure model, their source hashes) of an export on onnxruntime;
    (None, None, {}) for an export without biometry files."""
    from neurosono.measure.onnx import OnnxNet

    entries = manifest.get("biometry", {})
    nets = {name: OnnxNet(folder / entry["file"], threads, engine) for name, entry in entries.items()}
    hashes = {f"{name}_sha256": entry["source_sha256"] for name, entry in entries.items()}
    return nets.get("head"), nets.get("structures"), hashes


def load_onnx_parts(
    model_dir: str | Path | None = None,
    notify: Callable[[str], None] | None = None,
    threads: int | None = None,
    biometry: bool = True,
    engine: str = "onnxruntime",
    int8: bool = False,
    build_int8: Callable[[Path, Path], object] | None = None,
) -> OnnxParts:
    """Detector, stage 2, HexaNet's record, model info and (with ``biometry``, where the export
    holds them) the biometry networks of an ONNX export, as the pipeline runs them.

    ``model_dir``: an ONNX export folder; None (or the shipped model folder) uses the
    shipped models' export in the cache, writing it on first use. ``threads``:
    onnxruntime's intra-op threads, every core by default (on a machine other jobs
    keep busy, one thread can be faster: see docs/deployment.md). ``engine``:
    ``"onnxruntime"`` or ``"openvino"`` (the same files compiled by OpenVINO). ``int8``: the
    folder must be an int8 export (for the shipped models, their int8 export in the cache).
    """
    if model_dir is None or _same(Path(model_dir), default_model_dir()):
        folder = cached_default_export(notify, int8, build_int8)
    else:
        folder = Path(model_dir)
    manifest = read_manifest(folder)
    if int8 and "int8" not in manifest:
        raise OnnxModelError(
            f"{folder}: not an int8 export; write one with 'neurosono export --format onnx --int8 --out DIR'"
        )
    if biometry:
        head, structures, hashes = load_onnx_biometry(folder, manifest, threads, engine)
    else:
        head, structures, hashes = None, None, {}
    detector = load_onnx_detector(folder, manifest, threads, engine)
    classifier = OnnxHexaNet(folder / manifest["hexanet"]["file"], threads, engine)
    if classifier.n_regions != len(manifest["regions"]):
        raise OnnxModelError(
            f"{classifier.path}: {classifier.n_regions} regions, {MANIFEST} names {len(manifest['regions'])}"
        )
    meta = {
        "regions": manifest["regions"],
        "planes": manifest["planes"],
        "threshold": manifest["threshold"],
        "threshold_rule": manifest["threshold_rule"],
        # Exports written before these keys existed: span head sizes, no case inputs.
        "head_size": manifest.get("head_size", "span"),
        "crop_fractions": manifest.get("crop_fractions"),
        "age_crop_fractions": manifest.get("age_crop_fractions"),
        "case_inputs": manifest.get("case_inputs", []),
        "ga_weeks_range": manifest.get("ga_weeks_range"),
        "indeterminate": manifest.get("indeterminate"),
        "detector_sha256": manifest["hexanet"].get("detector_sha256"),
    }
    if classifier.n_case_scalars != N_GA_SCALARS * len(meta["case_inputs"]):
        raise OnnxModelError(
            f"{classifier.path}: {classifier.n_case_scalars} case scalars, {MANIFEST} names "
            f"case inputs {meta['case_inputs']}"
        )
    info = {
        "name": manifest["name"],
        "neurosono_version": __version__,
        "detector_sha256": manifest["detector"]["source_sha256"],
        "classifier_sha256": manifest["hexanet"]["source_sha256"],
        "trained_on": manifest["trained_on"],
        "notice": manifest["notice"],
        **hashes,
        "runtime": "openvino" if engine == "openvino" else "onnx",
        "precision": "int8" if "int8" in manifest else "fp32",
    }
    return OnnxParts(detector, classifier, meta, info, head, structures)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
