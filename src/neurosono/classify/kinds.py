"""The classifier kinds by name, and the one way to load any stage-2 model file."""

from __future__ import annotations

from pathlib import Path

from neurosono.classify.base import WEIGHTS_NAME, Classifier
from neurosono.classify.head_crop import HeadCropClassifier
from neurosono.classify.hexanet import HexaNetClassifier
from neurosono.classify.whole_image import WholeImageClassifier
from neurosono.core.checkpoints import load_payload

KINDS: dict[str, type[Classifier]] = {
    cls.kind: cls for cls in (HexaNetClassifier, WholeImageClassifier, HeadCropClassifier)
}
# Names the kinds had in older commands and files.
ALIASES = {"baseline": "whole-image", "headcrop": "head-crop"}
BASELINE_NAME = "baseline.pt"  # the whole-image baseline inside a HexaNet run's baseline/ folder


def kind_class(name: str) -> type[Classifier]:
    name = ALIASES.get(name, name)
    if name not in KINDS:
        raise ValueError(f"unknown classifier kind {name!r}; choose one of {', '.join(KINDS)}")
    return KINDS[name]


def load_classifier(path: str | Path, head_detector: str | Path | None = None) -> Classifier:
    """A classifier file (or a run folder holding ``classifier.pt`` or ``baseline.pt``) of any kind.

    A head-crop classifier also loads its head detector: ``head_detector`` if given, else the
    copy in its run folder.
    """
    formats = tuple(dict.fromkeys(f for cls in KINDS.values() for f in cls.formats))
    file, payload = load_payload(path, (WEIGHTS_NAME, BASELINE_NAME), formats, "stage-2 classifier")
    kind = next(cls for cls in KINDS.values() if payload["format"] in cls.formats)
    if payload["format"] == "neurosono-single-image-v1":  # one tag for two kinds: its "kind" says which
        kind = kind_class(payload["kind"])
    classifier = kind.from_payload(payload)
    classifier.file = file
    if isinstance(classifier, HeadCropClassifier):
        classifier.attach_head_detector(file.parent, head_detector)
    return classifier
