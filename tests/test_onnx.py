"""ONNX export of the shipped models, and the onnxruntime pipeline against torch."""

from __future__ import annotations

import csv
import inspect
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neurosono import Pipeline
from neurosono.cli import app
from neurosono.core.checkpoints import file_sha256
from neurosono.core.images import read_image
from neurosono.data.format import Dataset
from neurosono.detect.env import cpu_cores
from neurosono.measure.onnx import GRAPH_REVISION
from neurosono.models import PHANTOM_STRUCTURE_MODEL, REAL_HEAD_MODEL
from neurosono.phantom.cohort import CohortConfig, generate_cohort
from neurosono.pipeline import export as deploy
from neurosono.pipeline import onnx_files, onnx_runtime
from neurosono.pipeline.bundle import default_model_dir, model_files

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few full-size phantom cases (the shipped detector reads 512 px images at 320)."""
    root = tmp_path_factory.mktemp("onnx-cohort") / "cohort"
    generate_cohort(root, CohortConfig(cases=3, seed=61, abnormal_fraction=0.5), workers=1)
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models exported through the CLI, replacing an earlier export (--overwrite)."""
    out = tmp_path_factory.mktemp("onnx") / "export"
    out.mkdir()
    (out / onnx_files.MANIFEST).write_text("{}")  # an earlier export, as far as --overwrite cares
    (out / "stale.txt").write_text("from the earlier export")
    result = runner.invoke(app, ["export", "--format", "onnx", "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "opset" in result.output
    return out


@pytest.fixture(scope="module")
def pipelines(export: Path) -> tuple[Pipeline, Pipeline]:
    return Pipeline.load(), Pipeline.load(export, runtime="onnx")


def test_export_writes_both_stages_and_a_manifest(export: Path, pipelines: tuple[Pipeline, Pipeline]) -> None:
    import onnx

    files = ["detector.onnx", "head.onnx", "hexanet.onnx", "onnx.json", "structures.onnx"]
    assert sorted(p.name for p in export.iterdir()) == files
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".")]  # no staging debris
    manifest = json.loads((export / "onnx.json").read_text())
    detector_file, classifier_file = model_files(default_model_dir())
    record = json.loads(classifier_file.with_suffix(".json").read_text())
    assert manifest["regions"] == record["regions"] and manifest["planes"] == record["planes"]
    assert (
        manifest["hexanet"]["detector_sha256"]
        == record["detector_sha256"]
        == manifest["detector"]["source_sha256"]
    )

    def dims(value_info) -> list:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    assert manifest["threshold"] == pytest.approx(record["threshold"])
    assert manifest["threshold_rule"] == record["threshold_rule"]
    assert manifest["notice"] == "trained on synthetic phantoms; not for clinical use"
    assert manifest["detector"]["source_sha256"] == file_sha256(detector_file)
    assert manifest["hexanet"]["source_sha256"] == file_sha256(classifier_file)
    assert manifest["detector"]["sha256"] == file_sha256(export / "detector.onnx")
    # the darkness under which stage 1 stretches an image travels with the export
    shipped_dark = pipelines[0].detector.dark_below
    assert shipped_dark is not None and manifest["detector"]["dark_below"] == shipped_dark
    assert pipelines[1].detector.dark_below == shipped_dark
    for name, model in (
        ("head", REAL_HEAD_MODEL / "head.pt"),
        ("structures", PHANTOM_STRUCTURE_MODEL / "structures.pt"),
    ):
        entry = manifest["biometry"][name]
        assert entry["source_sha256"] == file_sha256(model) and entry["sha256"] == file_sha256(
            export / entry["file"]
        )
        assert entry["max_abs_diff_vs_torch"] < 1e-3
    assert manifest["opset"] == onnx_files.OPSET and manifest["versions"]["onnxruntime"]
    imgsz = json.loads(detector_file.with_suffix(".json").read_text())["config"]["imgsz"]
    assert manifest["detector"]["imgsz"] == imgsz and manifest["detector"]["fixed_size"] is False
    assert manifest["detector"]["input"]["images"] == ["batch", 3, "height", "width"]
    assert dims(onnx.load(str(export / "detector.onnx")).graph.input[0])[0] == "batch"

    graph = onnx.load(str(export / "hexanet.onnx")).graph
    inputs = {i.name: dims(i) for i in graph.input}
    R, S = len(record["regions"]), manifest["hexanet"]["n_scalars"]
    assert inputs["crops"] == ["batch", R, 1, 64, 64]
    assert inputs["scalars"] == ["batch", R, S]
    assert pipelines[0].stage2.model.n_scalars == S
    assert {o.name: dims(o) for o in graph.output} == {"logit": ["batch"], "drop_one_logits": ["batch", R]}


def test_onnx_pipeline_matches_torch(cohort: Path, pipelines: tuple[Pipeline, Pipeline]) -> None:
    torch_pipeline, onnx_pipeline = pipelines
    backend = onnx_pipeline.detector.yolo.predictor.model.backend
    assert type(backend).__name__ == "ONNXBackend"  # stage 1 really runs on onnxruntime
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    for session in (backend.session, onnx_pipeline.stage2.runner):  # every core
        assert session.get_session_options().intra_op_num_threads == cpu_cores()
    decisions = set()
    for case in Dataset.load(cohort).cases:
        tv, tc = cohort / case.tv_image, cohort / case.tc_image
        a, b = torch_pipeline.predict(tv, tc), onnx_pipeline.predict(tv, tc)
        decisions.add(a.decision)
        assert b.p_abnormal == pytest.approx(a.p_abnormal, abs=1e-3)
        assert b.decision == a.decision and b.threshold == a.threshold
        for name, value in a.biometry["values"].items():  # the biometry runs on onnxruntime too
            assert b.biometry["values"][name] == pytest.approx(value, rel=1e-3, abs=0.05), name
        assert [r.found for r in b.regions] == [r.found for r in a.regions]
        assert sum(r.found for r in a.regions) >= 4  # the detector sees these phantoms
        for ra, rb in zip(a.regions, b.regions, strict=True):
            assert (rb.region, rb.plane) == (ra.region, ra.plane)
            assert rb.attribution == pytest.approx(ra.attribution, abs=1e-3)
            assert rb.confidence == pytest.approx(ra.confidence, abs=1e-3)
            if ra.found:
                assert np.allclose(rb.box, ra.box, atol=1.0), (ra.box, rb.box)
        assert b.warnings == a.warnings and b.inputs == a.inputs
        assert not [w for w in a.warnings if "classify calibrate" in w]  # thresholds chosen behind it
        assert {**b.model, "runtime": "torch"} == a.model and b.model["runtime"] == "onnx"
    assert decisions  # at least one case ran


def test_non_square_images_match_torch(
    cohort: Path, pipelines: tuple[Pipeline, Pipeline], tmp_path: Path
) -> None:
    """Ultralytics pads a non-square image to a stride multiple on torch; the default export too."""
    from PIL import Image

    torch_pipeline, onnx_pipeline = pipelines
    case = Dataset.load(cohort).cases[0]
    paths = []
    for plane in ("tv", "tc"):
        with Image.open(cohort / getattr(case, f"{plane}_image")) as image:
            width, height = image.size
            image.crop((40, 0, width - 60, height)).save(tmp_path / f"{plane}.png")
        paths.append(tmp_path / f"{plane}.png")
    a, b = torch_pipeline.predict(*paths), onnx_pipeline.predict(*paths)
    assert a.inputs["tv"]["size"] == [width - 100, height]
    assert b.p_abnormal == pytest.approx(a.p_abnormal, abs=1e-3) and b.decision == a.decision
    for ra, rb in zip(a.regions, b.regions, strict=True):
        assert rb.found == ra.found and rb.attribution == pytest.approx(ra.attribution, abs=1e-3)
        if ra.found:
            assert np.allclose(rb.box, ra.box, atol=1.0), (ra.box, rb.box)


def test_fixed_size_detector_export(pipelines: tuple[Pipeline, Pipeline], tmp_path: Path) -> None:
    """--fixed-size: a static [1, 3, imgsz, imgsz] input, checked against torch when written."""
    import onnxruntime

    detector = pipelines[0].detector
    diff = deploy.export_detector(detector, tmp_path / "detector.onnx", fixed_size=True)
    assert diff < deploy.DETECTOR_ATOL
    session = onnxruntime.InferenceSession(
        str(tmp_path / "detector.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].shape == [1, 3, detector.imgsz, detector.imgsz]
    assert "onnxslim" not in sys.modules  # not a dependency: the export does not simplify


def test_one_pass_attribution_is_hexanets_drop_one(
    cohort: Path, pipelines: tuple[Pipeline, Pipeline]
) -> None:
    """The stage-2 shortcut both runtimes run equals HexaNet's own R + 1 passes."""
    from neurosono.classify.config import input_config
    from neurosono.classify.gestation import ga_scalars
    from neurosono.classify.networks import drop_one_region_attribution
    from neurosono.classify.regions import region_inputs

    torch_pipeline, onnx_pipeline = pipelines
    case = Dataset.load(cohort).cases[0]
    images = {p: read_image(cohort / getattr(case, f"{p}_image")) for p in ("tv", "tc")}
    detections = onnx_pipeline.detect(images)  # any detections serve: this is about stage 2
    meta = torch_pipeline.meta
    config = input_config(meta)  # the shipped model's inputs, whatever they are
    crops, scalars, _ = region_inputs(
        {p: im.pixels for p, im in images.items()},
        detections,
        meta["regions"],
        meta["planes"],
        {},
        **config.region_options(),
    )
    case = ga_scalars(None)[None] if config.gestational_age else np.zeros((1, 0), np.float32)
    crops_t, scalars_t = torch.from_numpy(crops[None, :, None].copy()), torch.from_numpy(scalars[None])
    extra = (torch.from_numpy(case),) if config.gestational_age else ()
    model = torch_pipeline.stage2.model.model  # HexaNet itself, inside the one-pass wrapper
    with torch.no_grad():
        p_ref = torch.sigmoid(model(crops_t, scalars_t, *extra)).numpy()
    attribution_ref = drop_one_region_attribution(model, crops_t, scalars_t, *extra).numpy()
    for pipeline in (torch_pipeline, onnx_pipeline):
        logits, drop = pipeline.stage2(crops[None, :, None], scalars[None], case)
        p = 1 / (1 + np.exp(-logits.astype(np.float64)))
        attribution = p[:, None] - 1 / (1 + np.exp(-drop.astype(np.float64)))
        assert np.allclose(p, p_ref, atol=1e-5)
        assert np.allclose(attribution, attribution_ref, atol=1e-5)


def test_a_changed_hexanet_forward_is_caught() -> None:
    from neurosono.classify.networks import HexaNet
    from neurosono.pipeline.stage2 import drop_one_model

    class Changed(HexaNet):
        def forward(self, crops, scalars):
            return super().forward(crops, scalars) + crops.mean(dim=(1, 2, 3, 4))

    torch.manual_seed(0)
    drop_one_model(HexaNet(3).eval())
    with pytest.raises(RuntimeError, match=r"HexaNet\.forward has changed"):
        drop_one_model(Changed(3).eval())


def test_hexanet_export_takes_regions_and_scalars_from_the_model(tmp_path: Path) -> None:
    from neurosono.classify.networks import HexaNet

    if "n_scalars" not in inspect.signature(HexaNet).parameters:
        pytest.skip("this HexaNet has a fixed number of region scalars")
    torch.manual_seed(1)
    model = HexaNet(4, n_scalars=3).eval()
    diff, shapes = deploy.export_hexanet(model, tmp_path / "h.onnx")
    assert shapes == {"n_regions": 4, "n_scalars": 3, "n_case_scalars": 0, "crop": 64} and diff < 1e-4
    net = onnx_runtime.OnnxHexaNet(tmp_path / "h.onnx")
    assert (net.n_regions, net.n_scalars, net.n_case_scalars) == (4, 3, 0)
    logits, drop = net(
        np.zeros((5, 4, 1, 64, 64), np.float32), np.zeros((5, 4, 3), np.float32), np.zeros((5, 0), np.float32)
    )
    assert logits.shape == (5,) and drop.shape == (5, 4)


def test_export_refuses_to_overwrite(export: Path, tmp_path: Path) -> None:
    before = (export / "onnx.json").read_bytes()
    refused = runner.invoke(app, ["export", "--format", "onnx", "--out", str(export)])
    assert refused.exit_code == 3 and "--overwrite" in " ".join(refused.output.split())
    assert (export / "onnx.json").read_bytes() == before
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = runner.invoke(app, ["export", "--out", str(other), "--overwrite"])
    assert refused.exit_code == 3 and "not a neurosono ONNX export" in " ".join(refused.output.split())
    assert (other / "notes.txt").read_text() == "keep me"
    bad = runner.invoke(app, ["export", "--format", "tflite", "--out", str(tmp_path / "new")])
    assert bad.exit_code == 2 and "onnx" in bad.output and not (tmp_path / "new").exists()


def test_predict_cli_with_onnx_runtime_single_and_batch(
    cohort: Path, export: Path, pipelines: tuple[Pipeline, Pipeline], tmp_path: Path
) -> None:
    _, onnx_pipeline = pipelines
    case = Dataset.load(cohort).cases[0]
    tv, tc = cohort / case.tv_image, cohort / case.tc_image
    out = tmp_path / "r.json"
    args = ["predict", "--runtime", "onnx", "--model", str(export)]
    result = runner.invoke(app, [*args, "--tv", str(tv), "--tc", str(tc), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == onnx_pipeline.predict(tv, tc).to_dict()
    results = tmp_path / "batch.csv"
    batch = runner.invoke(app, [*args, "--batch", str(cohort / "cases.csv"), "--csv", str(results)])
    assert batch.exit_code == 0, batch.output
    with results.open(newline="") as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    assert len(rows) == len(Dataset.load(cohort).cases)
    for case in Dataset.load(cohort).cases:  # batch mode takes spacing (and age) from cases.csv
        spacing = {plane: case.spacing_mm(plane) for plane in ("tv", "tc")}
        ga = case.ga_weeks if onnx_pipeline.uses_ga else None
        expected = onnx_pipeline.predict(
            cohort / case.tv_image, cohort / case.tc_image, spacing_mm=spacing, ga_weeks=ga
        )
        assert rows[case.case_id]["p_abnormal"] == f"{expected.p_abnormal:.4f}"
        assert rows[case.case_id]["decision"] == expected.decision


def test_folder_without_onnx_files_is_a_clear_error(export: Path, tmp_path: Path) -> None:
    cohort_image = tmp_path / "unused.png"
    torch_only = tmp_path / "torch-model"
    torch_only.mkdir()
    shutil.copy(default_model_dir() / "detector.pt", torch_only)
    for folder in (torch_only, tmp_path / "nowhere"):
        result = runner.invoke(
            app, ["predict", "--runtime", "onnx", "--model", str(folder), "--tv", str(cohort_image)]
        )
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())  # rich wraps long lines
        assert "no ONNX export here" in text and "neurosono export --format onnx" in text
    tampered = tmp_path / "tampered"
    shutil.copytree(export, tampered)
    with (tampered / "hexanet.onnx").open("ab") as handle:
        handle.write(b"\0")
    result = runner.invoke(app, ["predict", "--runtime", "onnx", "--model", str(tampered), "--tv", "x.png"])
    assert result.exit_code == 2 and "changed since export" in " ".join(result.output.split())
    bad = runner.invoke(app, ["predict", "--runtime", "tensorrt", "--tv", "x.png"])
    assert bad.exit_code == 2 and "'tensorrt' is not one of 'torch', 'onnx'" in bad.output


def test_default_model_is_exported_once_into_the_cache(
    export: Path, cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--runtime onnx without --model: the shipped models' export is written once, then reused.

    The real exporter is covered by the ``export`` fixture; here a stand-in copies its
    result, so this test is about the cache, not about exporting again.
    """
    monkeypatch.setattr(onnx_runtime, "config_dir", lambda: tmp_path / "cache" / "ultralytics")
    calls = []

    def fake_export(model_dir, out, overwrite=False):
        calls.append(Path(out))
        shutil.copytree(export, out)
        return Path(out)

    monkeypatch.setattr(onnx_runtime, "export_onnx", fake_export)
    case = Dataset.load(cohort).cases[0]
    tv = str(cohort / case.tv_image)
    first = runner.invoke(app, ["predict", "--runtime", "onnx", "--tv", tv])
    assert first.exit_code == 0, first.output
    assert "exporting the shipped models to ONNX once" in " ".join(first.output.split())
    assert len(calls) == 1 and calls[0].parent == tmp_path / "cache" / "onnx"
    messages = []
    pipeline = Pipeline.load(runtime="onnx", notify=messages.append, threads=1)
    assert len(calls) == 1 and not messages
    assert pipeline.stage2.runner.get_session_options().intra_op_num_threads == 1
    assert pipeline.model_info["detector_sha256"] == file_sha256(default_model_dir() / "detector.pt")
    # A cache written with an older graph of the same weights is written again, once.
    folder = calls[0]
    manifest = json.loads((folder / onnx_files.MANIFEST).read_text())
    assert {e["graph_revision"] for e in manifest["biometry"].values()} == {GRAPH_REVISION}
    for entry in manifest["biometry"].values():
        del entry["graph_revision"]
    (folder / onnx_files.MANIFEST).write_text(json.dumps(manifest))
    Pipeline.load(runtime="onnx", notify=messages.append, threads=1)
    assert len(calls) == 2 and messages and "exporting" in messages[0]
    Pipeline.load(runtime="onnx", notify=messages.append, threads=1)
    assert len(calls) == 2
    # ... and so is one made before the detector's dark-image rule
    manifest = json.loads((folder / onnx_files.MANIFEST).read_text())
    manifest["detector"].pop("dark_below")
    (folder / onnx_files.MANIFEST).write_text(json.dumps(manifest))
    assert Pipeline.load(runtime="onnx", notify=messages.append, threads=1).detector.dark_below is not None
    assert len(calls) == 3
