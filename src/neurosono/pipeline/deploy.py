"""Both stages as ONNX, and the pipeline on onnxruntime.

from neurosono.pipeline.deploy import export_onnx
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
  from torch (P(abnormal) by up to 0.065 on phantom cases cropped to 412x512).
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
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from neurosono import __version__
from neurosono.checkpoints import ModelFileError
from neurosono.classify.gestation import N_GA_SCALARS
from neurosono.data.atomic import OutputExistsError, atomic_write_text, staged_directory
from neurosono.detect.env import config_dir, configure_ultralytics, cpu_cores
from neurosono.detect.evaluate import MAX_DET
from neurosono.detect.model import Detector, file_sha256

FORMAT = "neurosono-onnx-v1"
MANIFEST = "onnx.json"
DETECTOR_ONNX = "detector.onnx"
HEXANET_ONNX = "hexanet.onnx"
OPSET = 17  # onnxruntime >= 1.14 runs it; ultralytics' minimum for detection is 9 (11 with NMS)
DETECTOR_BATCH = 1  # with fixed_size: images per detector run (TV and TC go one after the other)
# Largest difference from torch accepted when exporting (a broken export is far off):
# raw detector outputs (pixels and scores, values up to imgsz) and HexaNet logits.
DETECTOR_ATOL = 0.05
HEXANET_ATOL = 1e-4


class OnnxModelError(ModelFileError):
    """An ONNX model folder is missing, incomplete, or does not match its manifest."""


def _notify_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- export


def export_onnx(
    model_dir: str | Path | None = None,
    out: str | Path = "onnx",
    overwrite: bool = False,
    fixed_size: bool = False,
) -> Path:
    """Export a model folder (default: the shipped phantom models) to ``out``; returns ``out``.

    ``out`` is built under a temporary name and renamed into place when complete. An
    existing ``out`` is refused unless ``overwrite``, and even then only when it is an
    earlier ONNX export (holds ``onnx.json``) or empty. ``fixed_size``: see the module
    docstring.
    """
    from neurosono.pipeline.predict import default_model_dir

    folder = Path(model_dir) if model_dir else default_model_dir()
    out = Path(out)
    replace = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if replace and not overwrite:
        raise OutputExistsError(f"{out}: already exists; choose a new --out or pass --overwrite")
    if replace and not (out / MANIFEST).is_file():
        raise OutputExistsError(f"{out}: exists and is not a neurosono ONNX export; refusing to replace it")
    target = out.parent / f".{out.name}.{os.getpid()}.new" if replace else out
    with staged_directory(target) as staging:
        write_export(folder, staging, fixed_size)
    if replace:
        old = out.parent / f".{out.name}.{os.getpid()}.old"
        os.replace(out, old)
        os.replace(target, out)
        shutil.rmtree(old, ignore_errors=True)
    return out


def write_export(model_dir: Path, folder: Path, fixed_size: bool = False) -> dict:
    """Write detector.onnx, hexanet.onnx and onnx.json into an existing (staging) folder."""
    from neurosono.classify.train import head_size_of
    from neurosono.pipeline.predict import load_torch_parts

    detector, classifier, meta, info = load_torch_parts(model_dir)
    detector_check = export_detector(detector, folder / DETECTOR_ONNX, fixed_size)
    hexanet_check, shapes = export_hexanet(classifier, folder / HEXANET_ONNX)
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
        "head_size": head_size_of(meta),
        "crop_fractions": meta.get("crop_fractions"),
        "age_crop_fractions": meta.get("age_crop_fractions"),
        "case_inputs": list(meta.get("case_inputs", [])),
        "ga_weeks_range": meta.get("ga_weeks_range"),
        "notice": info["notice"],
        "trained_on": info["trained_on"],
        "detector": {
            "file": DETECTOR_ONNX,
            "sha256": file_sha256(folder / DETECTOR_ONNX),
            "source_sha256": info["detector_sha256"],
            "imgsz": detector.imgsz,
            "fixed_size": fixed_size,
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
        },
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=False); the detector through ultralytics' ONNX exporter",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _versions() -> dict:
    from importlib import metadata

    versions = {"neurosono": __version__, "python": sys.version.split()[0]}
    for package in ("torch", "ultralytics", "onnx", "onnxruntime", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def _session(path: Path, threads: int | None = None):
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


def export_detector(detector: Detector, target: Path, fixed_size: bool) -> float:
    import copy

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
    got = _session(target).run(None, {"images": image.numpy()})[0]
    diff = float(np.max(np.abs(got - expected)))
    if got.shape != expected.shape or not diff <= DETECTOR_ATOL:
        raise RuntimeError(f"detector.onnx differs from the torch detector (max abs diff {diff:.3g})")
    return diff


def export_hexanet(classifier: torch.nn.Module, target: Path) -> tuple[float, dict]:
    from neurosono.pipeline.stage2 import drop_one_model, example_inputs

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
    got = _session(target).run(None, {name: t.numpy() for name, t in zip(names, example, strict=True)})
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


# ---------------------------------------------------------------------------- load


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


class OnnxHexaNet:
    """hexanet.onnx on onnxruntime: (crops, scalars, case scalars) -> (logits [B], drop-one logits [B, R]).

    Exports of models without case-level inputs have no ``case_scalars`` input; theirs
    ([B, 0]) are ignored.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = path
        self.session = _session(path, threads)
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
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
        logit, drop = self.session.run(["logit", "drop_one_logits"], feed)
        return logit, drop


def load_onnx_detector(folder: Path, manifest: dict, threads: int | None = None) -> Detector:
    """detector.onnx inside ultralytics' predictor (same pre- and post-processing as torch)."""
    configure_ultralytics()
    from ultralytics import YOLO

    path = folder / manifest["detector"]["file"]
    imgsz = int(manifest["detector"]["imgsz"])
    yolo = YOLO(str(path), task="detect")
    # Set the predictor up once (on a blank image, with predict_paths' arguments), then give
    # its ONNX backend a session on every core: ultralytics builds its own with the defaults.
    blank = np.zeros((imgsz, imgsz, 3), np.uint8)
    torch_threads = torch.get_num_threads()
    yolo.predict([blank], imgsz=imgsz, conf=0.25, iou=0.6, max_det=MAX_DET, device="cpu", verbose=False)
    torch.set_num_threads(torch_threads)  # ultralytics' device setup sets it to every core
    backend = getattr(yolo.predictor.model, "backend", None)
    if backend is None or not hasattr(backend, "session"):
        raise RuntimeError("ultralytics did not load detector.onnx with onnxruntime")
    backend.session = _session(path, threads)
    names = yolo.predictor.model.names
    if [names[i] for i in sorted(names)] != list(manifest["regions"]):
        raise OnnxModelError(f"{path}: its class names {names} do not match {MANIFEST}'s regions")
    return Detector(
        yolo=yolo,
        regions=list(manifest["regions"]),
        planes={k: list(v) for k, v in manifest["planes"].items()},
        imgsz=imgsz,
        path=path,
        sha256=manifest["detector"]["source_sha256"],
    )


def default_export_dir(detector_sha256: str, classifier_sha256: str) -> Path:
    """Cache folder for the shipped models' export, keyed by their source SHA-256s."""
    return config_dir().parent / "onnx" / f"{detector_sha256[:16]}-{classifier_sha256[:16]}"


def cached_default_export(notify: Callable[[str], None] | None = None) -> Path:
    """The shipped models' ONNX export in the cache folder, written on first use."""
    from neurosono.pipeline.predict import default_model_dir, model_files

    detector_file, classifier_file = model_files(default_model_dir())
    det_sha, cls_sha = file_sha256(detector_file), file_sha256(classifier_file)
    folder = default_export_dir(det_sha, cls_sha)
    with contextlib.suppress(OnnxModelError):
        manifest = read_manifest(folder)
        sources = (manifest["detector"]["source_sha256"], manifest["hexanet"]["source_sha256"])
        if sources == (det_sha, cls_sha) and manifest["detector"].get("fixed_size") is False:
            return folder
    (notify or _notify_stderr)(f"exporting the shipped models to ONNX once, into {folder}")
    if folder.exists():  # stale or broken: replace it
        shutil.rmtree(folder)
    try:
        export_onnx(default_model_dir(), folder)
    except (OutputExistsError, OSError):
        # Another process may have written it meanwhile; use it if it is complete.
        read_manifest(folder)
    return folder


def load_onnx_pipeline(
    model_dir: str | Path | None = None,
    notify: Callable[[str], None] | None = None,
    threads: int | None = None,
):
    """A :class:`~neurosono.pipeline.predict.Pipeline` whose two stages run on onnxruntime.

    ``model_dir``: an ONNX export folder; None (or the shipped model folder) uses the
    shipped models' export in the cache, writing it on first use. ``threads``:
    onnxruntime's intra-op threads, every core by default (on a machine other jobs
    keep busy, one thread can be faster: see the README).
    """
    from neurosono.pipeline.predict import Pipeline, default_model_dir

    if model_dir is None or _same(Path(model_dir), default_model_dir()):
        folder = cached_default_export(notify)
    else:
        folder = Path(model_dir)
    manifest = read_manifest(folder)
    detector = load_onnx_detector(folder, manifest, threads)
    classifier = OnnxHexaNet(folder / manifest["hexanet"]["file"], threads)
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
        "runtime": "onnx",
    }
    return Pipeline(detector, classifier, meta, info, stage2=classifier)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
