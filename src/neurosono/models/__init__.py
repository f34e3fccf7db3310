"""The models shipped inside the package, and the one place that says where each one lives.

``phantom/``: the six-region detector and HexaNet (with its whole-image baseline), trained
on neurosono's phantoms. ``real/``: the head detector and the single-image classifier,
trained on public real images (see docs/real-data.md).
"""

from pathlib import Path

PHANTOM_DIR = Path(__file__).parent / "phantom"
DEFAULT_DETECTOR = PHANTOM_DIR / "detector.pt"
DEFAULT_HEXANET = PHANTOM_DIR / "hexanet"
REAL_DIR = Path(__file__).parent / "real"
REAL_HEAD_DETECTOR = REAL_DIR / "head_detector.pt"
REAL_CLASSIFIER = REAL_DIR / "classifier.pt"
HEAD_REGION = "fetal_head"  # the one region of a head detector


def default_detector(regions: list[str]) -> Path:
    """The shipped detector for a dataset's regions: the head detector for ``[fetal_head]``,
    else the six-region phantom detector."""
    return REAL_HEAD_DETECTOR if list(regions) == [HEAD_REGION] else DEFAULT_DETECTOR


def default_classifier(single_image: bool) -> Path:
    """The shipped stage-2 classifier for a dataset: the real single-image classifier for a
    dataset of one image per case, else the phantom HexaNet."""
    return REAL_CLASSIFIER if single_image else DEFAULT_HEXANET


REAL_HEAD_MODEL = REAL_DIR / "head"  # the head biometry model (HC18 and phantom heads)
PHANTOM_STRUCTURE_MODEL = PHANTOM_DIR / "structures"  # Vp, TCD, cisterna magna, CSP width (phantom truth)
