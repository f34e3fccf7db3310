"""int8 deployment (``neurosono export --format onnx --int8``): both stages quantised by
onnxruntime's static quantisation, calibrated on phantom images, and accepted only when
they keep the fp32 export's accuracy on a cohort they were not calibrated on.

from neurosono.pipeline.quantize import export_int8
load = lambda folder: Pipeline.load(folder, runtime="onnx")   # how to run an export folder
export_int8(out="deploy/phantom-int8", load=load)   # the shipped models
pipeline = Pipeline.load("deploy/phantom-int8", runtime="int8")

How it is made:

* the fp32 export is written first (``export.write_export``); the pipeline runs it on the
  calibration cases and every input its ONNX files receive is recorded, so the
  calibration sees exactly what the quantised files will see (letterboxed images, region
  crops and their numbers, head images and structure crops);
* each file is pre-processed (``quant_pre_process``: shape inference and graph fusion)
  and quantised with ``quantize_static``: QDQ format, int8 weights per output channel,
  uint8 activations, min-max ranges. The detector's box and class decoding (the nodes of
  its Detect head after the last convolutions: anchors, strides, distribution focal
  loss, concatenation) stays fp32: in int8 one step of the coordinate scale is several
  pixels;
* the check runs the fp32 and the int8 pipeline on every case of a second cohort: stage
  1's mAP@0.5 against the cohort's boxes, P(abnormal), the decision, and the biometry.
  Every limit in :data:`LIMITS` must hold, or the export is refused and nothing is
  written. The figures go into ``onnx.json`` (``int8``).

Calibration and check cohorts default to phantom cohorts drawn from their own seeds
(:data:`CALIBRATION_SEED`, :data:`CHECK_SEED`), used nowhere else; a user's own cases can
be given instead (datasets in the project's format, with boxes for the mAP).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from neurosono.core.atomic import atomic_write_text
from neurosono.core.checkpoints import file_sha256
from neurosono.core.provenance import package_versions
from neurosono.data.format import Case, Dataset
from neurosono.pipeline.bundle import default_model_dir
from neurosono.pipeline.export import export_folder, write_export
from neurosono.pipeline.onnx_files import DETECTOR_ONNX, HEXANET_ONNX, MANIFEST, read_manifest

CALIBRATION_SEED = 707  # phantom cohorts of these seeds are used nowhere else in the project
CHECK_SEED = 808
CALIBRATION_CASES = 64
CHECK_CASES = 160

# The accuracy an int8 export must keep against fp32 on the check cohort.
LIMITS = {
    "map50_drop": 0.01,  # stage 1 mAP@0.5 (fp32 minus int8) at most
    "p_abnormal_max_diff": 0.02,  # |P(abnormal) int8 - fp32| on every case
    "same_decision_share": 0.99,  # cases with the same decision, at least
    "biometry_max_diff_mm": 1.0,  # every measurement both give, at most this far apart
}


class QuantizationRefusedError(RuntimeError):
    """The int8 files do not keep the fp32 accuracy within :data:`LIMITS`."""


@dataclass
class Recorder:
    """Stands in for an onnxruntime session and keeps a copy of every input it is given."""

    session: object
    feeds: list[dict[str, np.ndarray]]

    def run(self, output_names, feed, *args, **kwargs):
        self.feeds.append({name: np.array(value, copy=True) for name, value in feed.items()})
        return self.session.run(output_names, feed, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


class _Feeds:
    """onnxruntime's calibration reader over recorded inputs."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _sessions(pipeline) -> dict[str, tuple[object, str]]:
    """The pipeline's onnxruntime sessions by file name: (owner, attribute holding it)."""
    backend = pipeline.detector.yolo.predictor.model.backend
    found = {DETECTOR_ONNX: (backend, "session"), HEXANET_ONNX: (pipeline.stage2, "runner")}
    for net in (pipeline.head_model, pipeline.structure_model):
        if net is not None and hasattr(net, "runner"):
            found[Path(net.path).name] = (net, "runner")
    return found


def record_inputs(pipeline, cases: Iterable[tuple[Path, Case]]) -> dict[str, list[dict]]:
    """Run an onnxruntime pipeline on (dataset root, case) pairs; each ONNX file's inputs."""
    recorded: dict[str, list[dict]] = {}
    for name, (owner, attribute) in _sessions(pipeline).items():
        recorded[name] = []
        setattr(owner, attribute, Recorder(getattr(owner, attribute), recorded[name]))
    try:
        for root, case in cases:
            _predict(pipeline, root, case)
    finally:
        for owner, attribute in _sessions(pipeline).values():
            recorder = getattr(owner, attribute)
            if isinstance(recorder, Recorder):
                setattr(owner, attribute, recorder.session)
    return recorded


def _predict(pipeline, root: Path, case: Case):
    paths = {p: root / case.image(p) if case.image(p) else None for p in ("tv", "tc")}
    spacing = {p: case.spacing_mm(p) for p in ("tv", "tc")}
    return pipeline.predict(paths["tv"], paths["tc"], spacing_mm=spacing, ga_weeks=case.ga_weeks)


def decode_nodes(model_path: Path) -> list[str]:
    """The detector's box and class decoding: its Detect head's nodes after the last convolutions."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    head = convs[-1].name.split("/")[1]  # ultralytics' Detect module, e.g. 'model.24'
    branches = (f"/{head}/cv2", f"/{head}/cv3")  # its box and class convolutions
    return [n.name for n in graph.node if n.name.startswith(f"/{head}/") and not n.name.startswith(branches)]


def quantize_file(source: Path, target: Path, feeds: list[dict], keep_decoding: bool = False) -> int:
    """``source`` quantised to int8 into ``target``, ranges from ``feeds``; with ``keep_decoding``
    the detector's decoding stays fp32. Returns how many nodes were kept fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not feeds:
        raise ValueError(f"{source.name}: no calibration inputs were recorded")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / source.name
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # Named on the graph being quantised: pre-processing folds some of the source's nodes away.
        exclude = decode_nodes(prepared) if keep_decoding else []
        quantize_static(
            str(prepared),
            str(target),
            _Feeds(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
        )
    return len(exclude)


def _cohort(dataset: str | Path | None, seed: int, cases: int, folder: Path, notify) -> Dataset:
    if dataset is not None:
        return Dataset.load(dataset)
    from neurosono.phantom.cohort import CohortConfig, generate_cohort

    notify(f"generating a {cases}-case phantom cohort (seed {seed})")
    return generate_cohort(folder / f"phantom-seed{seed}", CohortConfig(cases=cases, seed=seed))


def _pairs(dataset: Dataset) -> list[tuple[Path, Case]]:
    return [(dataset.root, c) for c in dataset.cases if c.tv_image or c.tc_image]


def _measurements(prediction) -> dict[str, float]:
    """Every measurement in mm a prediction gives (its biometry's values but the cephalic index)."""
    values = (prediction.biometry or {}).get("values", {})
    return {name: float(v) for name, v in values.items() if name.endswith("_mm")}


@dataclass
class Reference:
    """The fp32 pipeline on the check cohort: stage 1's mAP@0.5 and every case's prediction."""

    map50: float
    predictions: list
    n_images: int


def _map50(pipeline, dataset: Dataset) -> tuple[float, int]:
    from neurosono.detect.evaluate import coco_map, collect

    coco, results = collect(pipeline.detector, dataset, None)
    return float(coco_map(coco, results)["map50"]), len(results)


def reference(fp32, dataset: Dataset) -> Reference:
    map50, n_images = _map50(fp32, dataset)
    return Reference(map50, [_predict(fp32, root, case) for root, case in _pairs(dataset)], n_images)


def check_int8(int8, dataset: Dataset, ref: Reference, detector_changed: bool = True) -> dict:
    """An int8 pipeline against the fp32 reference on every case of ``dataset``: the figures
    :data:`LIMITS` bound. ``detector_changed`` False: stage 1 is the fp32 file, its mAP is the reference's."""
    map50 = _map50(int8, dataset)[0] if detector_changed else ref.map50
    pairs = _pairs(dataset)
    p_diff, same, mm_diff, one_only = [], 0, [], 0
    for (root, case), a in zip(pairs, ref.predictions, strict=True):
        b = _predict(int8, root, case)
        p_diff.append(abs(a.p_abnormal - b.p_abnormal))
        same += a.decision == b.decision
        ma, mb = _measurements(a), _measurements(b)
        mm_diff += [abs(ma[k] - mb[k]) for k in ma.keys() & mb.keys()]
        one_only += len(ma.keys() ^ mb.keys())  # given by one and not the other
    p = np.asarray(p_diff)
    n = len(pairs)
    return {
        "n_cases": n,
        "n_images": ref.n_images,
        "map50_fp32": round(ref.map50, 4),
        "map50_int8": round(map50, 4),
        "map50_drop": round(ref.map50 - map50, 4),
        "p_abnormal_max_diff": round(float(p.max()), 4),
        "p_abnormal_p95_diff": round(float(np.percentile(p, 95)), 4),
        "p_abnormal_median_diff": round(float(np.median(p)), 5),
        "cases_p_abnormal_beyond_limit": int((p > LIMITS["p_abnormal_max_diff"]).sum()),
        "same_decision_share": round(same / n, 4),
        "different_decisions": n - same,
        "biometry_max_diff_mm": round(float(max(mm_diff)), 3) if mm_diff else None,
        "biometry_median_diff_mm": round(float(np.median(mm_diff)), 3) if mm_diff else None,
        "biometry_measured_by_one_only": one_only,
    }


def failed_limits(check: dict) -> list[str]:
    """The limits a check's figures break, each as a phrase."""
    failed = []
    if check["map50_drop"] > LIMITS["map50_drop"]:
        failed.append(f"stage 1 mAP@0.5 drops by {check['map50_drop']:.4f} (at most {LIMITS['map50_drop']})")
    if check["p_abnormal_max_diff"] > LIMITS["p_abnormal_max_diff"]:
        failed.append(
            f"P(abnormal) moves by up to {check['p_abnormal_max_diff']:.3f} "
            f"(on {check['cases_p_abnormal_beyond_limit']} of {check['n_cases']} cases beyond "
            f"{LIMITS['p_abnormal_max_diff']})"
        )
    if check["same_decision_share"] < LIMITS["same_decision_share"]:
        failed.append(
            f"{check['different_decisions']} of {check['n_cases']} decisions change "
            f"(at least {LIMITS['same_decision_share']:.0%} must stay)"
        )
    worst = check["biometry_max_diff_mm"]
    if worst is not None and worst > LIMITS["biometry_max_diff_mm"]:
        failed.append(f"a measurement moves by {worst:.2f} mm (at most {LIMITS['biometry_max_diff_mm']} mm)")
    if check["biometry_measured_by_one_only"]:
        failed.append(
            f"{check['biometry_measured_by_one_only']} measurements are given by one precision only"
        )
    return failed


def _variant(fp32_dir: Path, int8_dir: Path, files: list[str], folder: Path, note: dict) -> Path:
    """An export folder (new, or empty): the fp32 files, with ``files`` replaced by their int8 versions."""
    shutil.copytree(fp32_dir, folder, dirs_exist_ok=True)
    for file in files:
        shutil.copy2(int8_dir / file, folder / file)
    _write_manifest(folder, note)
    return folder


def _write_manifest(folder: Path, note: dict) -> None:
    """The folder's ``onnx.json`` with its files' hashes renewed and ``note`` as ``int8``."""
    manifest = json.loads((folder / MANIFEST).read_text())
    _rehash(manifest, folder)
    manifest["int8"] = note
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def export_int8(
    model_dir: str | Path | None = None,
    out: str | Path = "onnx-int8",
    overwrite: bool = False,
    calibration: str | Path | None = None,
    check: str | Path | None = None,
    notify: Callable[[str], None] | None = None,
    calibration_cases: int = CALIBRATION_CASES,
    check_cases: int = CHECK_CASES,
    load: Callable[[Path], object] | None = None,
) -> tuple[Path, dict]:
    """Quantise a model folder's export (default: the shipped models) into ``out``.

    Every ONNX file the pipeline runs is quantised, then tried alone against fp32 on the
    check cohort; a file whose int8 version breaks a limit of :data:`LIMITS` stays fp32,
    and the record says why. The files kept in int8 are checked together once more; while
    together they break a limit, the one that came closest to its limits alone goes back to
    fp32 (``dropped_together`` in its record). Refused (:class:`QuantizationRefusedError`,
    nothing written) when no file, or no combination, keeps the limits.
    ``calibration`` and ``check``: datasets (default: phantom cohorts of their own seeds, of
    ``calibration_cases`` and ``check_cases`` cases). ``out`` is written as
    ``export.export_folder`` writes every export. Returns ``out`` and the record written
    into its ``onnx.json`` as ``int8``. ``load``: an export folder to a pipeline on
    onnxruntime, ``lambda folder: Pipeline.load(folder, runtime="onnx")`` (passed in: this
    module sits below the Pipeline, which builds int8 exports with it).
    """
    if load is None:
        raise ValueError("export_int8 needs load: how to run an export folder (Pipeline.load)")
    if calibration is not None and check is not None and Path(calibration).resolve() == Path(check).resolve():
        raise ValueError(f"{check}: the check dataset must not be the calibration dataset")
    notify = notify or (lambda message: None)
    folder = Path(model_dir) if model_dir else default_model_dir()
    cohorts = (calibration, calibration_cases, check, check_cases)
    record = export_folder(
        out, overwrite, lambda staging: _write_int8(folder, staging, cohorts, load, notify)
    )
    return Path(out), record


def _write_int8(folder: Path, staging: Path, cohorts: tuple, load, notify) -> dict:
    """The int8 export of ``folder`` written into ``staging``; its record."""
    calibration, calibration_cases, check, check_cases = cohorts
    with tempfile.TemporaryDirectory(prefix="neurosono-int8-") as tmp:
        work = Path(tmp)
        fp32_dir, int8_dir = work / "fp32", work / "int8"
        fp32_dir.mkdir()
        int8_dir.mkdir()
        notify("exporting the fp32 files")
        write_export(folder, fp32_dir)
        calibration_set = _cohort(calibration, CALIBRATION_SEED, calibration_cases, work, notify)
        check_set = _cohort(check, CHECK_SEED, check_cases, work, notify)
        fp32 = load(fp32_dir)
        notify(f"recording the calibration inputs on {len(calibration_set.cases)} cases")
        files = _quantise_all(record_inputs(fp32, _pairs(calibration_set)), fp32_dir, int8_dir, notify)
        notify(f"running fp32 on the {len(check_set.cases)} check cases")
        ref = reference(fp32, check_set)
        for file in files:
            notify(f"checking {file} in int8 against fp32")
            trial = load(_variant(fp32_dir, int8_dir, [file], work / f"trial-{file}", {"trial": file}))
            figures = check_int8(trial, check_set, ref, file == DETECTOR_ONNX)
            failed = failed_limits(figures)
            files[file].update({"int8": not failed, "check": figures, "failed": failed})
            notify(f"{file}: " + ("int8 kept" if not failed else "stays fp32: " + "; ".join(failed)))
        folders = (fp32_dir, int8_dir, staging)
        kept, together = combine_int8_files(files, _kept(files), folders, check_set, ref, load, notify)
        record = {
            "method": "onnxruntime quantize_static: QDQ, int8 weights per output channel, uint8 "
            "activations, min-max calibration; the detector's box and class decoding kept fp32",
            "int8_files": kept,
            "fp32_files": [file for file in files if file not in kept],
            "files": files,
            "calibration": _describe(calibration_set, calibration is None, CALIBRATION_SEED),
            "check_dataset": _describe(check_set, check is None, CHECK_SEED),
            "limits": LIMITS,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": package_versions(),
        }
        record["check"] = together
        _write_manifest(staging, record)
        read_manifest(staging)
    return record


def combine_int8_files(
    files: dict, kept: list[str], folders: tuple, check_set, ref, load, notify
) -> tuple[list, dict]:
    """The kept int8 files checked together; while together they break a limit,
    the one that came closest to its limits alone goes back to fp32 and the rest are checked
    again. The files that stay int8 and their joint check figures; refused when none is left."""
    fp32_dir, int8_dir, staging = folders  # staging ends up holding the combination kept
    while True:
        _variant(fp32_dir, int8_dir, kept, staging, {"trial": kept})
        notify(f"checking the int8 files together ({', '.join(kept)})")
        together = check_int8(load(staging), check_set, ref, DETECTOR_ONNX in kept)
        failed = failed_limits(together)
        if not failed:
            return kept, together
        if len(kept) == 1:
            raise QuantizationRefusedError("int8 export refused: together, " + "; ".join(failed))
        dropped = max(kept, key=lambda file: _closeness(files[file]["check"]))
        kept = [file for file in kept if file != dropped]
        reason = f"together with {', '.join(kept)}: " + "; ".join(failed)
        files[dropped].update({"int8": False, "failed": [reason], "dropped_together": True})
        notify(f"{dropped}: stays fp32: {reason}")


def _closeness(check: dict) -> float:
    """How near a check's figures came to their limits: the largest share of a limit used."""
    shares = [
        check["map50_drop"] / LIMITS["map50_drop"],
        check["p_abnormal_max_diff"] / LIMITS["p_abnormal_max_diff"],
        (1.0 - check["same_decision_share"]) / (1.0 - LIMITS["same_decision_share"]),
    ]
    if check["biometry_max_diff_mm"] is not None:
        shares.append(check["biometry_max_diff_mm"] / LIMITS["biometry_max_diff_mm"])
    return max(shares)


def _kept(files: dict[str, dict]) -> list[str]:
    """The files whose int8 version keeps the limits; refused when there is none."""
    kept = [file for file, entry in files.items() if entry["int8"]]
    if not kept:
        raise QuantizationRefusedError(
            "int8 export refused: "
            + " | ".join(f"{file}: {'; '.join(entry['failed'])}" for file, entry in files.items())
        )
    return kept


def _quantise_all(feeds: dict[str, list[dict]], fp32_dir: Path, int8_dir: Path, notify) -> dict[str, dict]:
    """Every recorded file quantised into ``int8_dir``; per file, what went into it."""
    files: dict[str, dict] = {}
    for file, recorded in feeds.items():
        notify(f"quantising {file} ({len(recorded)} calibration inputs)")
        kept_fp32 = quantize_file(
            fp32_dir / file, int8_dir / file, recorded, keep_decoding=file == DETECTOR_ONNX
        )
        files[file] = {"calibration_inputs": len(recorded), "nodes_kept_fp32": kept_fp32}
    return files


def record_lines(record: dict) -> list[str]:
    """An int8 record (``onnx.json``'s ``int8``) in a few lines for people."""
    check = record["check"]
    lines = [f"int8: {', '.join(record['int8_files'])}; fp32: {', '.join(record['fp32_files']) or 'none'}"]
    lines += [
        f"  {file} stays fp32: {'; '.join(entry['failed'])}"
        for file, entry in record["files"].items()
        if not entry["int8"]
    ]
    worst = check["biometry_max_diff_mm"]
    lines.append(
        f"checked on {record['check_dataset']['dataset']} ({check['n_cases']} cases): mAP@0.5 "
        f"{check['map50_fp32']:.4f} -> {check['map50_int8']:.4f}, P(abnormal) within "
        f"{check['p_abnormal_max_diff']:.4f}, same decision on {check['same_decision_share']:.1%}"
        + (f", measurements within {worst:.2f} mm" if worst is not None else "")
    )
    return lines


def _describe(dataset: Dataset, generated: bool, seed: int) -> dict:
    entry = {"dataset": dataset.spec.name, "n_cases": len(dataset.cases)}
    if generated:
        entry["generated"] = f"neurosono synth --cases {len(dataset.cases)} --seed {seed}"
    return entry


def _rehash(manifest: dict, folder: Path) -> None:
    """The manifest's file hashes, renewed for the files now in ``folder``."""
    for part in ("detector", "hexanet"):
        manifest[part]["sha256"] = file_sha256(folder / manifest[part]["file"])
    for entry in manifest.get("biometry", {}).values():
        entry["sha256"] = file_sha256(folder / entry["file"])
