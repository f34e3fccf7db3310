"""A model folder, the unit that predicts: a stage-1 detector and the HexaNet that reads its regions.

A folder holds ``detector.pt`` (with its ``detector.json``) and ``hexanet/classifier.pt`` (or
``classifier.pt``); the default is the shipped phantom folder. This module loads the torch
parts and says what every prediction reports about the model (name, hashes, notice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neurosono import __version__
from neurosono.classify.hexanet import HexaNetClassifier
from neurosono.classify.kinds import load_classifier
from neurosono.classify.regions import check_stage2_regions
from neurosono.core.checkpoints import ModelFileError, file_sha256
from neurosono.detect.model import Detector, load_detector
from neurosono.models import PHANTOM_DIR

PHANTOM_NOTICE = "trained on synthetic phantoms; not for clinical use"
RESEARCH_NOTICE = "research software; not for clinical use"


def default_model_dir() -> Path:
    return PHANTOM_DIR


def model_files(folder: Path) -> tuple[Path, Path]:
    """(detector.pt, HexaNet classifier.pt) of a model folder."""
    classifier_file = next(
        (p for p in (folder / "hexanet" / "classifier.pt", folder / "classifier.pt") if p.exists()), None
    )
    if classifier_file is None:
        raise ModelFileError(f"{folder}: no HexaNet (hexanet/classifier.pt) in this model folder")
    return folder / "detector.pt", classifier_file


def notice_for(trained_on: str) -> str:
    return PHANTOM_NOTICE if "phantom" in trained_on.lower() else RESEARCH_NOTICE


@dataclass
class TorchParts:
    detector: Detector
    hexanet: HexaNetClassifier
    info: dict  # name, version, file hashes, trained on, notice


def load_torch_parts(folder: Path) -> TorchParts:
    """The detector and HexaNet of a model folder, checked against each other."""
    detector_file, classifier_file = model_files(folder)
    detector = load_detector(detector_file)
    hexanet = load_classifier(classifier_file)
    if not isinstance(hexanet, HexaNetClassifier):
        raise ModelFileError(f"{classifier_file}: a {hexanet.kind} classifier; a model folder needs HexaNet")
    check_stage2_regions(detector.regions, hexanet.regions, str(classifier_file))
    trained_on = detector.record.get("dataset", {}).get("name", "")
    info = {
        "name": folder.name,
        "neurosono_version": __version__,
        "detector_sha256": detector.sha256,
        "classifier_sha256": file_sha256(classifier_file),
        "trained_on": trained_on,
        "notice": notice_for(trained_on),
    }
    return TorchParts(detector, hexanet, info)


def biometry_model_files(model_dir: str | Path | None) -> dict[str, Path]:
    """The biometry models a pipeline uses, by name (``head``, ``structures``): each the one
    beside the models (``head/head.pt``, ``structures/structures.pt``), else the shipped one;
    left out where neither exists."""
    from neurosono.models import PHANTOM_STRUCTURE_MODEL, REAL_HEAD_MODEL

    found = {}
    for name, shipped in (("head", REAL_HEAD_MODEL), ("structures", PHANTOM_STRUCTURE_MODEL)):
        folders = ([Path(model_dir) / name] if model_dir else []) + [shipped]
        file = next((f / f"{name}.pt" for f in folders if (f / f"{name}.pt").is_file()), None)
        if file is not None:
            found[name] = file
    return found


def load_biometry_models(model_dir: str | Path | None) -> tuple:
    """(head model, structure model, their files' hashes) of ``biometry_model_files``; None
    for a model that does not exist. The hashes are keyed ``head_sha256`` and ``structures_sha256``."""
    from neurosono.measure.headnet import load_head_model
    from neurosono.measure.structures import load_structure_model

    files = biometry_model_files(model_dir)
    head = load_head_model(files["head"].parent)[0] if "head" in files else None
    structures = load_structure_model(files["structures"].parent)[0] if "structures" in files else None
    return head, structures, {f"{name}_sha256": file_sha256(file) for name, file in files.items()}
