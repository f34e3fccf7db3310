"""int8 export: quantised files, the accuracy check that decides which stay int8, refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from neurosono import Pipeline
from neurosono.cli import app
from neurosono.phantom.cohort import CohortConfig, generate_cohort
from neurosono.pipeline import quantize
from neurosono.pipeline.onnx_files import DETECTOR_ONNX, MANIFEST, read_manifest

runner = CliRunner()

WITHIN = {
    "n_cases": 10,
    "map50_drop": 0.0,
    "p_abnormal_max_diff": 0.01,
    "cases_p_abnormal_beyond_limit": 0,
    "same_decision_share": 1.0,
    "different_decisions": 0,
    "biometry_max_diff_mm": 0.2,
    "biometry_measured_by_one_only": 0,
}


def _quantised(path: Path) -> bool:
    import onnx

    return any(node.op_type == "QuantizeLinear" for node in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A calibration and a check cohort, full size (the shipped detector reads 512 px images)."""
    root = tmp_path_factory.mktemp("int8")
    generate_cohort(root / "calibration", CohortConfig(cases=4, seed=71, wide_zoom=False), workers=1)
    generate_cohort(root / "check", CohortConfig(cases=6, seed=72, wide_zoom=False), workers=1)
    return root / "calibration", root / "check"


@pytest.fixture(scope="module")
def int8_export(cohorts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models exported with --int8 through the CLI, on the given cohorts."""
    calibration, check = cohorts
    out = tmp_path_factory.mktemp("int8-export") / "int8"
    result = runner.invoke(
        app,
        ["export", "--int8", "--out", str(out), "--calibration", str(calibration), "--check", str(check)],
    )
    assert result.exit_code == 0, result.output
    assert "checked on" in result.output
    return out


def test_limits_name_what_they_break() -> None:
    assert quantize.failed_limits(WITHIN) == []
    broken = quantize.failed_limits(
        {
            **WITHIN,
            "map50_drop": 0.05,
            "p_abnormal_max_diff": 0.3,
            "cases_p_abnormal_beyond_limit": 2,
            "same_decision_share": 0.9,
            "different_decisions": 1,
            "biometry_max_diff_mm": 2.5,
        }
    )
    assert len(broken) == 4
    assert "mAP@0.5 drops by 0.0500" in broken[0]
    assert "on 2 of 10 cases" in broken[1]
    assert "1 of 10 decisions change" in broken[2]
    assert "2.50 mm" in broken[3]
    # A measurement one precision gives and the other not is a change too.
    assert quantize.failed_limits({**WITHIN, "biometry_measured_by_one_only": 1})


def test_detector_decoding_stays_fp32(int8_export: Path) -> None:
    import onnx

    entry = read_manifest(int8_export)["int8"]["files"][DETECTOR_ONNX]
    graph = onnx.load(str(int8_export / DETECTOR_ONNX)).graph
    names = quantize.decode_nodes(int8_export / DETECTOR_ONNX)
    assert names, "the Detect head's decoding nodes were not found"
    assert not any("/cv2" in n or "/cv3" in n for n in names)  # its convolutions are quantised
    assert entry["nodes_kept_fp32"] > 0
    quantised_ops = {"QuantizeLinear", "DequantizeLinear"}
    if entry["int8"]:
        # The int8 file keeps every decoding node it was told to, by name, unquantised.
        assert entry["nodes_kept_fp32"] == len(names)
        by_name = {n.name: n for n in graph.node}
        assert not any(by_name[n].op_type in quantised_ops for n in names)
        assert quantised_ops <= {n.op_type for n in graph.node}
    else:
        # The detector broke a limit in int8, so the export holds its fp32 file.
        assert not quantised_ops & {n.op_type for n in graph.node}


@pytest.mark.slow
def test_int8_export_keeps_only_files_within_the_limits(
    int8_export: Path, cohorts: tuple[Path, Path]
) -> None:
    manifest = read_manifest(int8_export)
    record = manifest["int8"]
    assert set(record["int8_files"]) | set(record["fp32_files"]) == set(record["files"])
    assert record["int8_files"], "no file kept in int8"
    for file, entry in record["files"].items():
        # What the record says is what the folder holds, and each verdict follows its figures.
        assert _quantised(int8_export / file) == entry["int8"], file
        alone_within = quantize.failed_limits(entry["check"]) == []
        assert entry["int8"] == (alone_within and not entry.get("dropped_together")), file
        assert entry["calibration_inputs"] > 0
    assert quantize.failed_limits(record["check"]) == []
    assert record["check"]["n_cases"] == 6
    assert record["calibration"]["dataset"] != record["check_dataset"]["dataset"]
    # The folder runs as any export does, and its answers stay within the limits of fp32's.
    _, check = cohorts
    int8 = Pipeline.load(int8_export, runtime="onnx")
    fp32 = Pipeline.load(None, runtime="onnx")
    assert int8.model_info["precision"] == "int8"
    assert fp32.model_info["precision"] == "fp32"
    case = _first_case(check)
    a = fp32.predict(check / case.tv_image, check / case.tc_image, ga_weeks=case.ga_weeks)
    b = int8.predict(check / case.tv_image, check / case.tc_image, ga_weeks=case.ga_weeks)
    assert abs(a.p_abnormal - b.p_abnormal) <= quantize.LIMITS["p_abnormal_max_diff"]
    assert a.decision == b.decision


def test_a_combination_that_breaks_a_limit_gives_back_the_file_nearest_its_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files that keep the limits alone but not together: the one that came closest alone
    goes back to fp32, until the rest keep them; with one file left that breaks them, refused."""
    alone = {
        "detector.onnx": {**WITHIN, "p_abnormal_max_diff": 0.018},
        "hexanet.onnx": {**WITHIN, "p_abnormal_max_diff": 0.004},
        "head.onnx": {**WITHIN, "p_abnormal_max_diff": 0.0, "biometry_max_diff_mm": 0.5},
    }
    files = {file: {"int8": True, "check": check, "failed": []} for file, check in alone.items()}
    trials: list[list[str]] = []
    monkeypatch.setattr(
        quantize, "_variant", lambda fp32, int8, kept, folder, note: trials.append(list(kept))
    )

    def joint(pipeline, check_set, ref, detector_int8):  # breaks the limit while the detector is int8
        return {**WITHIN, "p_abnormal_max_diff": 0.03 if "detector.onnx" in trials[-1] else 0.01}

    monkeypatch.setattr(quantize, "check_int8", joint)
    folders = (Path("fp32"), Path("int8"), Path("staging"))
    kept, together = quantize.combine_int8_files(
        files, list(files), folders, None, None, lambda f: None, print
    )
    assert kept == ["hexanet.onnx", "head.onnx"]
    assert trials == [list(files), kept]
    assert not files["detector.onnx"]["int8"] and files["detector.onnx"]["dropped_together"]
    assert "together with hexanet.onnx, head.onnx" in files["detector.onnx"]["failed"][0]
    assert quantize.failed_limits(together) == []
    # head.onnx used half its biometry limit alone, hexanet.onnx a fifth of its P(abnormal) one.
    monkeypatch.setattr(quantize, "check_int8", lambda *args: {**WITHIN, "p_abnormal_max_diff": 0.5})
    with pytest.raises(quantize.QuantizationRefusedError, match="together"):
        quantize.combine_int8_files(
            files, ["hexanet.onnx", "head.onnx"], folders, None, None, lambda f: None, print
        )
    assert files["head.onnx"]["dropped_together"] and files["hexanet.onnx"]["int8"]


def _first_case(folder: Path):
    from neurosono.data.format import Dataset

    return Dataset.load(folder).cases[0]


@pytest.mark.slow
def test_int8_export_is_refused_and_writes_nothing(
    cohorts: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calibration, check = cohorts
    # Limits no int8 file can keep: every file stays fp32, so there is nothing to export.
    monkeypatch.setitem(quantize.LIMITS, "biometry_max_diff_mm", -1.0)
    monkeypatch.setitem(quantize.LIMITS, "p_abnormal_max_diff", -1.0)
    out = tmp_path / "refused"
    result = runner.invoke(
        app,
        ["export", "--int8", "--out", str(out), "--calibration", str(calibration), "--check", str(check)],
    )
    assert result.exit_code != 0
    assert "int8 export refused" in result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]


def test_int8_options_are_checked(tmp_path: Path, cohorts: tuple[Path, Path]) -> None:
    calibration, check = cohorts
    out = tmp_path / "x"
    result = runner.invoke(app, ["export", "--out", str(out), "--calibration", str(calibration)])
    assert result.exit_code != 0 and "go with --int8" in result.output
    result = runner.invoke(app, ["export", "--int8", "--fixed-size", "--out", str(out)])
    assert result.exit_code != 0 and "--fixed-size" in result.output
    result = runner.invoke(app, ["export", "--int8", "--out", str(out), "--check", str(tmp_path)])
    assert result.exit_code != 0 and str(tmp_path) in result.output
    with pytest.raises(ValueError, match="must not be the calibration"):
        quantize.export_int8(out=out, calibration=check, check=check, load=Pipeline.load)
    assert not out.exists()
    assert not (tmp_path / MANIFEST).exists()


@pytest.mark.slow
def test_openvino_runs_the_same_files_as_onnxruntime(cohorts: tuple[Path, Path]) -> None:
    """The fp32 export compiled by OpenVINO answers as onnxruntime does (fp32 on both)."""
    _, check = cohorts
    case = _first_case(check)
    images = (check / case.tv_image, check / case.tc_image)
    onnx = Pipeline.load(None, runtime="onnx").predict(*images, ga_weeks=case.ga_weeks)
    openvino = Pipeline.load(None, runtime="openvino")
    assert openvino.model_info["runtime"] == "openvino"
    got = openvino.predict(*images, ga_weeks=case.ga_weeks)
    assert got.decision == onnx.decision
    assert abs(got.p_abnormal - onnx.p_abnormal) < 1e-3
    assert [r.found for r in got.regions] == [r.found for r in onnx.regions]
    for a, b in zip(got.regions, onnx.regions, strict=True):
        if a.found:
            assert max(abs(x - y) for x, y in zip(a.box, b.box, strict=True)) < 0.5
    assert got.biometry["values"].keys() == onnx.biometry["values"].keys()
    # the same from the command line
    args = ["predict", "--runtime", "openvino", "--tv", str(images[0]), "--tc", str(images[1])]
    said = runner.invoke(app, [*args, "--ga-weeks", f"{case.ga_weeks}"])
    assert said.exit_code == 0, said.output
    assert f"P(abnormal) = {got.p_abnormal:.3f} -> {got.decision}" in said.output


def test_int8_runtime_needs_an_int8_export(int8_export: Path) -> None:
    from neurosono.pipeline.onnx_files import OnnxModelError
    from neurosono.pipeline.onnx_runtime import cached_default_export

    pipeline = Pipeline.load(int8_export, runtime="int8", biometry=False)
    assert pipeline.model_info["precision"] == "int8"
    with pytest.raises(OnnxModelError, match="not an int8 export"):
        Pipeline.load(cached_default_export(), runtime="int8")
