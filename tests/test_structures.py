"""Structure sizes (atrium, TCD, cisterna magna, CSP width) measured in stage 1's boxes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neurosono.cli import app
from neurosono.data.format import DEFAULT_REGIONS
from neurosono.detect.predict import Detection
from neurosono.measure.biometry import assemble
from neurosono.measure.case import csp_seen
from neurosono.measure.hints import CSP_MIN_CONFIDENCE
from neurosono.measure.structures import (
    CROP_PX,
    FOSSA_DEPTH,
    FOSSA_FALLBACK_CONFIDENCE,
    FOSSA_FALLBACK_MIN_SUPPORT,
    FOSSA_FINE_BELOW,
    FOSSA_FINE_MARGIN,
    FOSSA_IN_VIEW,
    FOSSA_WINDOW_MARGIN,
    MIN_CONFIDENCE,
    OUTPUTS,
    STRUCTURES,
    WINDOW_MARGIN,
    StructureNet,
    crop,
    load_structure_model,
    measure_structures,
    window,
)
from neurosono.models import HEAD_REGION

REGIONS = [*DEFAULT_REGIONS, HEAD_REGION]  # the shipped detector's regions
runner = CliRunner()


def constant_model(share: float) -> StructureNet:
    """A structure network whose every output is ``share`` (its last layer zeroed, bias set)."""
    model = StructureNet()
    last = model.out[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(math.log(share / (1 - share)))
    return model.eval()


def box(region: str, plane: str, xyxy, confidence: float = 0.9) -> Detection:
    return Detection(plane, REGIONS.index(region), confidence, tuple(float(v) for v in xyxy))


def test_a_window_holds_its_box_at_the_network_scale():
    image = np.zeros((200, 300), np.uint8)
    image[60:100, 120:160] = 255  # a 40 px square
    cx, cy, side = window((120, 60, 160, 100))
    assert (cx, cy, side) == (140, 80, 40 * WINDOW_MARGIN)
    pixels = crop(image, cx, cy, side)
    assert pixels.shape == (CROP_PX, CROP_PX)
    bright = pixels > 127
    width = bright.any(0).sum()
    assert width == pytest.approx(CROP_PX / WINDOW_MARGIN, abs=2)  # the square fills 1 / margin of it
    assert bright[CROP_PX // 2, CROP_PX // 2] and not bright[2, 2]


@pytest.mark.parametrize(("angle", "flip"), [(0.0, False), (37.0, True), (-150.0, False)])
def test_a_window_reads_only_its_pixels_and_still_sees_what_the_whole_image_shows(angle, flip):
    import cv2

    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 255, (420, 640)).astype(np.uint8), (0, 0), 2)
    for cx, cy, side in [(320.0, 210.0, 300.0), (15.0, 400.0, 120.0), (600.0, 30.0, 40.0)]:
        # the same window cut from the whole image, smoothed whole where it is shrunk
        scale = CROP_PX / side
        source = image.astype(np.float32)
        if scale < 0.8:
            source = cv2.GaussianBlur(source, (0, 0), 0.5 / scale)
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        matrix[:, 2] += (CROP_PX / 2 - cx, CROP_PX / 2 - cy)
        whole = cv2.warpAffine(source, matrix, (CROP_PX, CROP_PX), flags=cv2.INTER_LINEAR)
        whole = whole[:, ::-1] if flip else whole
        assert np.abs(crop(image, cx, cy, side, angle, flip) - whole).max() < 0.1  # grey levels of 255


def test_sizes_are_the_networks_share_of_the_window_in_mm():
    image = np.full((300, 400), 80, np.uint8)
    detections = [
        box("cerebellum", "tc", (100, 100, 200, 160)),
        box("lateral_ventricle", "tv", (50, 50, 90, 70)),
    ]
    found = measure_structures(
        constant_model(0.25), {"tv": (image, 0.2), "tc": (image, 0.1)}, detections, REGIONS
    )
    assert found.values["tcd_mm"] == pytest.approx(0.25 * 100 * WINDOW_MARGIN * 0.1, abs=0.01)
    assert found.values["atrium_mm"] == pytest.approx(0.25 * 40 * WINDOW_MARGIN * 0.2, abs=0.01)
    assert found.boxes["tcd_mm"].plane == "tc"


def test_missing_boxes_planes_and_spacings_give_no_number_but_a_reason():
    image = np.full((300, 400), 80, np.uint8)
    weak = [box("cisterna_magna", "tc", (10, 10, 30, 30), confidence=0.1)]  # below the confidence needed
    found = measure_structures(constant_model(0.3), {"tv": (image, None), "tc": (image, 0.2)}, weak, REGIONS)
    assert found.values == {}
    assert found.absent["atrium_mm"] == "no pixel spacing for the TV image"
    assert found.absent["cisterna_magna_mm"] == "cisterna_magna not found on the TC image"
    assert found.absent["tcd_mm"] == "cerebellum not found on the TC image"
    only_tv = measure_structures(constant_model(0.3), {"tv": (image, 0.2)}, [], REGIONS)
    assert only_tv.absent["tcd_mm"] == "no TC image"
    head_only = measure_structures(constant_model(0.3), {"tv": (image, 0.2)}, [], ["fetal_head"])
    assert head_only.absent["csp_width_mm"] == "the detector has no csp region"
    biometry = assemble(None, 21.0, csp_seen=True, structures=found)
    assert "atrium_mm" not in biometry.values
    vm = next(h for h in biometry.hints if h.finding == "ventriculomegaly")
    assert vm.present is None and vm.reason == "no pixel spacing for the TV image"


def fossa_model(depth_share: float, in_view: float) -> StructureNet:
    """A structure network reading every region window as 0.2 of it, the posterior-fossa
    window's depth as ``depth_share`` and P(in view) as ``in_view``."""
    model = constant_model(0.2)
    with torch.no_grad():
        model.out[-1].bias[FOSSA_DEPTH] = math.log(depth_share / (1 - depth_share))
        model.out[-1].bias[FOSSA_IN_VIEW] = math.log(in_view / (1 - in_view))
    return model


def test_the_cisterna_magna_is_read_behind_the_cerebellum_where_stage_1_has_no_box_of_it():
    image = np.full((300, 400), 80, np.uint8)
    cerebellum = box("cerebellum", "tc", (100, 100, 200, 160))
    planes = {"tc": (image, 0.1)}
    found = measure_structures(fossa_model(0.2, 0.9), planes, [cerebellum], REGIONS)
    assert found.values["cisterna_magna_mm"] == pytest.approx(0.2 * 100 * FOSSA_WINDOW_MARGIN * 0.1, abs=0.01)
    chosen = found.to_dict()["boxes"]["cisterna_magna_mm"]
    assert chosen["region"] == "cerebellum" and chosen["window"] == "posterior fossa"
    # a small depth there (1.5 mm, under FOSSA_FINE_BELOW) is read again in the finer window
    small = measure_structures(fossa_model(0.05, 0.9), planes, [cerebellum], REGIONS)
    assert 0.05 * 100 * FOSSA_WINDOW_MARGIN * 0.1 < FOSSA_FINE_BELOW
    assert small.values["cisterna_magna_mm"] == pytest.approx(0.05 * 100 * FOSSA_FINE_MARGIN * 0.1, abs=0.01)
    assert small.to_dict()["boxes"]["cisterna_magna_mm"]["window"] == "posterior fossa, fine"
    # the cisterna magna's own box, where there is one, is measured in its own window
    own = box("cisterna_magna", "tc", (60, 110, 100, 150))
    boxed = measure_structures(fossa_model(0.05, 0.9), planes, [cerebellum, own], REGIONS)
    assert boxed.values["cisterna_magna_mm"] == pytest.approx(0.2 * 40 * WINDOW_MARGIN * 0.1, abs=0.01)
    assert boxed.to_dict()["boxes"]["cisterna_magna_mm"]["window"] == "region"
    # out of view behind the cerebellum: no number, and why
    hidden = measure_structures(fossa_model(0.05, 0.2), planes, [cerebellum], REGIONS)
    assert "cisterna_magna_mm" not in hidden.values and "tcd_mm" in hidden.values
    assert "not in the image" in hidden.absent["cisterna_magna_mm"]
    # a model without the posterior-fossa outputs says the box is missing, as it always did
    four = StructureNet(n_out=len(STRUCTURES)).eval()
    assert not four.reads_fossa
    plain = measure_structures(four, planes, [cerebellum], REGIONS)
    assert plain.absent["cisterna_magna_mm"] == "cisterna_magna not found on the TC image"


def test_behind_a_cerebellum_stage_1_is_unsure_of_the_cisterna_magna_is_read_from_its_candidate_box():
    image = np.full((300, 400), 80, np.uint8)
    planes = {"tc": (image, 0.1)}
    unsure = box("cerebellum", "tc", (100, 100, 200, 160), confidence=FOSSA_FALLBACK_CONFIDENCE + 0.01)
    weaker = box("cerebellum", "tc", (10, 10, 60, 40), confidence=FOSSA_FALLBACK_CONFIDENCE)
    # the rest of the TC plane, which stage 1 is sure of: an image it knows
    known = [box("csp", "tc", (150, 40, 170, 60)), box("thalami", "tc", (130, 60, 190, 90))]
    assert FOSSA_FALLBACK_MIN_SUPPORT <= 0.9
    found = measure_structures(fossa_model(0.2, 0.9), planes, [weaker, unsure, *known], REGIONS)
    # the surest candidate's window, its confidence on record; the TCD needs a sure box
    assert found.values["cisterna_magna_mm"] == pytest.approx(0.2 * 100 * FOSSA_WINDOW_MARGIN * 0.1, abs=0.01)
    chosen = found.to_dict()["boxes"]["cisterna_magna_mm"]
    assert chosen["window"] == "posterior fossa" and chosen["confidence"] == pytest.approx(unsure.confidence)
    assert found.absent["tcd_mm"] == "cerebellum not found on the TC image"
    # still guarded by the in-view output
    hidden = measure_structures(fossa_model(0.2, 0.2), planes, [unsure, *known], REGIONS)
    assert "not in the image" in hidden.absent["cisterna_magna_mm"]
    # below the fallback's confidence there is no candidate
    faint = box("cerebellum", "tc", (100, 100, 200, 160), confidence=FOSSA_FALLBACK_CONFIDENCE - 0.01)
    none = measure_structures(fossa_model(0.2, 0.9), planes, [faint, *known], REGIONS)
    assert none.absent["cisterna_magna_mm"] == "cisterna_magna not found on the TC image"
    # nor on an image stage 1 does not know (its other regions unsure: a real scan, say)
    vague = [box("csp", "tc", (150, 40, 170, 60), 0.5), box("thalami", "tc", (130, 60, 190, 90), 0.4)]
    unknown = measure_structures(fossa_model(0.2, 0.9), planes, [unsure, *vague], REGIONS)
    assert unknown.absent["cisterna_magna_mm"] == (
        "cisterna_magna not found on the TC image (a cerebellum candidate at confidence 0.06 on "
        f"an image stage 1 is unsure of: support 0.45, below {FOSSA_FALLBACK_MIN_SUPPORT})"
    )
    # a sure cerebellum box needs no such support
    sure = box("cerebellum", "tc", (100, 100, 200, 160), confidence=0.9)
    assert "cisterna_magna_mm" in measure_structures(fossa_model(0.2, 0.9), planes, [sure], REGIONS).values


def test_the_csp_is_measured_on_tc_when_tv_does_not_show_it():
    image = np.full((300, 400), 80, np.uint8)
    found = measure_structures(
        constant_model(0.2),
        {"tv": (image, 0.2), "tc": (image, 0.2)},
        [box("csp", "tc", (100, 100, 120, 110))],
        REGIONS,
    )
    assert found.boxes["csp_width_mm"].plane == "tc" and "csp_width_mm" in found.values


def test_a_faint_csp_box_is_neither_measured_nor_counts_as_a_seen_csp():
    # where there is no CSP stage 1 still gives faint CSP-like boxes; the CSP's width and
    # the CSP-not-seen hint both start from the surer CSP_MIN_CONFIDENCE, so they agree
    image = np.full((300, 400), 80, np.uint8)
    planes = {"tv": (image, 0.2), "tc": (image, 0.2)}
    for confidence, seen in ((CSP_MIN_CONFIDENCE - 0.1, False), (CSP_MIN_CONFIDENCE, True)):
        detections = [
            box("csp", "tv", (100, 100, 120, 110), confidence),
            box("cerebellum", "tc", (90, 90, 150, 130)),
        ]
        found = measure_structures(constant_model(0.2), planes, detections, REGIONS)
        assert ("csp_width_mm" in found.values) is seen
        assert csp_seen(detections, REGIONS) == (seen, "")
        hint = next(
            h
            for h in assemble(None, 21.0, csp_seen=seen, structures=found).hints
            if h.finding == "csp_not_seen"
        )
        assert hint.present is (not seen)
    assert MIN_CONFIDENCE < CSP_MIN_CONFIDENCE  # the other regions are measured from a fainter box


def test_the_shipped_model_measures_unseen_phantoms_in_the_shipped_detectors_boxes(tmp_path):
    from neurosono.core.images import read_image
    from neurosono.data.format import Dataset
    from neurosono.detect.model import load_detector
    from neurosono.detect.predict import detect_planes
    from neurosono.models import DEFAULT_DETECTOR, PHANTOM_STRUCTURE_MODEL
    from neurosono.phantom.cohort import CohortConfig, generate_cohort

    generate_cohort(tmp_path / "c", CohortConfig(cases=8, seed=4242, abnormal_fraction=0.0), workers=1)
    dataset = Dataset.load(tmp_path / "c")
    detector = load_detector(DEFAULT_DETECTOR)
    model, meta = load_structure_model(PHANTOM_STRUCTURE_MODEL)
    assert json.loads(meta["record"])["kind"] == "neurosono structure model run"
    errors = {s.measurement: [] for s in STRUCTURES}
    for case in dataset.cases:
        images = {p: read_image(dataset.image_path(rel)) for p, rel in case.images()}
        planes = {p: (im.pixels, case.spacing_mm(p)) for p, im in images.items()}
        found = measure_structures(
            model, planes, detect_planes(detector, images, 0.25), list(detector.regions)
        )
        for name, value in found.values.items():
            errors[name].append(abs(value - float(case.extra[name])))
    for name, values in errors.items():
        assert len(values) >= 6, name  # found in most cases
        assert np.mean(values) < 1.5, (name, np.mean(values))  # a fair phantom in mm, not a guess


@pytest.fixture(scope="session")
def structure_run(tmp_path_factory, tiny_cohort):
    run = tmp_path_factory.mktemp("structures") / "run"
    result = runner.invoke(
        app,
        ["measure", "train-structures", str(tiny_cohort), "--out", str(run), "--epochs", "4", "--batch", "8"],
    )
    assert result.exit_code == 0, result.output
    return run


def test_the_structure_model_trains_and_is_scored(structure_run, tiny_cohort, tmp_path):
    record = json.loads((structure_run / "structures.json").read_text())
    fine = f"{OUTPUTS[FOSSA_DEPTH]}_fine"  # the finer posterior-fossa window's depth, scored apart
    assert record["best_epoch"] >= 1 and set(record["val_metrics"]["mae_mm"]) <= {*OUTPUTS, fine}
    # the phantom records whether the midline behind the vermis is in view: the posterior-fossa
    # window is trained, and the model file says so
    fossa = record["posterior_fossa_window"]
    assert record["outputs"] == list(OUTPUTS)
    assert fossa["n_train_windows"] > 0 and fossa["n_train_fine_windows"] > 0
    assert 0.0 <= record["val_metrics"]["in_view_accuracy"] <= 1.0
    assert load_structure_model(structure_run)[0].reads_fossa
    assert record["val_metrics"]["mean_mae_mm"] <= record["history"][0]["mean_mae_mm"]
    rerun = runner.invoke(app, ["measure", "train-structures", str(tiny_cohort), "--out", str(structure_run)])
    assert rerun.exit_code != 0 and "exists" in rerun.output  # a finished run is never overwritten


def test_structure_training_can_start_from_a_finished_run(structure_run, tiny_cohort, tmp_path):
    from neurosono.core.checkpoints import file_sha256

    start = json.loads((structure_run / "structures.json").read_text())
    result = runner.invoke(
        app,
        ["measure", "train-structures", str(tiny_cohort), "--out", str(tmp_path / "more"),
         "--epochs", "1", "--batch", "8", "--lr", "1e-5", "--init", str(structure_run),
         "--balance-sizes", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "more" / "structures.json").read_text())
    assert record["config"]["balance_sizes"] == 0.5
    assert record["init_from_sha256"] == file_sha256(structure_run / "structures.pt")
    assert record["config"]["init_from"] == "given"
    assert isinstance(record["config"]["bf16"], bool)
    # one epoch at a tiny learning rate stays where the start was, not at a random network's error
    assert record["val_metrics"]["mean_mae_mm"] == pytest.approx(start["val_metrics"]["mean_mae_mm"], abs=0.3)


def test_a_start_without_the_posterior_fossa_outputs_gives_all_its_other_weights():
    from neurosono.measure.structures_train import _start_from

    torch.manual_seed(1)
    four, six = StructureNet(n_out=len(STRUCTURES)), StructureNet()
    _start_from(six, four)
    for name, value in four.state_dict().items():
        if name.startswith("out.4."):
            assert torch.equal(six.state_dict()[name][: len(STRUCTURES)], value)
        else:
            assert torch.equal(six.state_dict()[name], value), name
    x = torch.randn(3, 1, CROP_PX, CROP_PX)
    four.eval(), six.eval()
    assert torch.allclose(six(x)[:, : len(STRUCTURES)], four(x))


def test_structure_training_needs_true_sizes(tmp_path):
    from pathlib import Path

    from neurosono.data.importers import import_hc18

    import_hc18(Path(__file__).parent / "data" / "real_sample" / "hc18", tmp_path / "hc18")
    result = runner.invoke(
        app, ["measure", "train-structures", str(tmp_path / "hc18"), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "true structure sizes" in result.output
    assert not (tmp_path / "r").exists()


def test_the_biometry_networks_run_the_same_on_onnxruntime(tmp_path):
    from neurosono.measure.headnet import HeadUNet
    from neurosono.measure.onnx import HEAD_ONNX, STRUCTURES_ONNX, OnnxNet, export_biometry

    torch.manual_seed(0)
    head, structures = HeadUNet().eval(), StructureNet().eval()
    checks = export_biometry(head, structures, tmp_path)
    assert set(checks) == {HEAD_ONNX, STRUCTURES_ONNX} and max(checks.values()) < 1e-3
    image = (np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8)
    detections = [box("cerebellum", "tc", (100, 100, 200, 160)), box("csp", "tv", (150, 120, 170, 130))]
    planes = {"tv": (image, 0.2), "tc": (image, 0.2)}
    on_torch = measure_structures(structures, planes, detections, REGIONS)
    on_onnx = measure_structures(OnnxNet(tmp_path / STRUCTURES_ONNX, threads=1), planes, detections, REGIONS)
    assert on_onnx.values.keys() == on_torch.values.keys() >= {"tcd_mm", "csp_width_mm"}
    for name, value in on_torch.values.items():
        assert on_onnx.values[name] == pytest.approx(value, abs=0.02)


def test_size_balance_draws_the_rare_extremes_more_and_keeps_each_outputs_share():
    from neurosono.measure.structures_train import StructureSample, size_balance_weights

    rng = np.random.default_rng(0)
    common = rng.normal(6.0, 1.0, 900)
    extremes = np.concatenate([rng.uniform(10.5, 14.0, 50), rng.uniform(0.2, 1.8, 50)])
    depth = [StructureSample(None, 0.1, (0, 0, 1, 1), 2, float(v), "g") for v in [*common, *extremes]]
    atria = [StructureSample(None, 0.1, (0, 0, 1, 1), 0, float(v), "g") for v in rng.normal(7.0, 1.0, 300)]
    weights = size_balance_weights(depth + atria)
    share = weights / weights.sum()
    # the extremes are a tenth of the depths but drawn clearly more often than that
    assert share[900:1000].sum() / share[:1000].sum() > 0.2
    # each output keeps its share of the draws (1000 depths, 300 atria)
    assert share[:1000].sum() == pytest.approx(1000 / 1300)
    assert np.all(weights > 0)
    # the inverse density draws them more often still
    inverse = size_balance_weights(depth + atria, power=1.0)
    assert inverse[900:1000].sum() / inverse[:1000].sum() > weights[900:1000].sum() / weights[:1000].sum()
