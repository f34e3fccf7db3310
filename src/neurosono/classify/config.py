"""A stage-2 training configuration, and how a trained model's record says its inputs are made.

One :class:`ClassifyTrainConfig` serves every classifier kind (the training loop's budget and
seed are theirs alike); the region options apply to HexaNet, the age to HexaNet and the
whole-image network. The record readers (:func:`input_config`, :func:`uses_ga`, ...) accept
records written before each key existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from neurosono.classify.gestation import CASE_INPUT
from neurosono.core import DEFAULT_SEED

if TYPE_CHECKING:
    from neurosono.classify.inputs import CaseInputs

HEAD_SIZES = ("skull", "span", "box")
HEAD_SIZE_TEXT = {
    "skull": "skull short axis (BPD-like, fitted per image; the regions' span where no skull is found)",
    "span": "span of the detected regions",
    "box": "fetal-head box from stage 1 (geometric mean of its sides; the regions' span where none)",
}
CROP_SCALES = ("box", "head", "age")


@dataclass(frozen=True)
class ClassifyTrainConfig:
    seed: int = DEFAULT_SEED
    epochs: int = 60
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 12
    share_branches: bool = False
    target_sensitivity: float | None = None
    gt_box_fraction: float = 0.5
    jitter: float = 0.08
    # What region sizes are relative to: the span of the detections, or the skull's short axis
    # (which did not beat the span with box crops: see docs/hexanet.md).
    head_size: str = "span"
    # Gestational age from cases.csv as a case-level input, withheld from this share of
    # training cases so that the model also decides without it.
    gestational_age: bool = False
    ga_dropout: float = 0.3
    # Region crops cut round the detector's box ("box"), head-scaled ("head": the crop's side
    # a fixed fraction of the head size per region, so that a structure's size shows in it) or
    # age-scaled ("age", GA models: a fraction of the age in weeks as mm where it is given).
    crop_scale: str = "box"
    # The crops' fractions per region: learnt from the normal training cases when None; a
    # model's own are kept in its config.
    crop_fractions: tuple[float, ...] | None = None
    age_crop_fractions: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.head_size not in HEAD_SIZES:
            raise ValueError(f"head_size must be one of {', '.join(HEAD_SIZES)}, not {self.head_size!r}")
        if self.crop_scale not in CROP_SCALES:
            raise ValueError(f"crop_scale must be one of {', '.join(CROP_SCALES)}, not {self.crop_scale!r}")
        if self.crop_scale == "age" and not self.gestational_age:
            raise ValueError("age-scaled crops need the gestational age as an input (--ga)")
        if self.epochs < 1 or self.batch < 2:
            raise ValueError("epochs must be at least 1 and the batch at least 2")
        for name in ("crop_fractions", "age_crop_fractions"):
            value = getattr(self, name)
            if value is not None:
                # From a JSON record they arrive as a list.
                object.__setattr__(self, name, tuple(float(f) for f in value))

    def region_options(self) -> dict:
        """The keyword arguments of ``region_inputs`` this configuration decides (the age
        itself is the case's): one rule for training, evaluation and prediction."""
        return {
            "size_for_age": self.gestational_age,
            "crop_fractions": self.crop_fractions if self.crop_scale != "box" else None,
            "age_crop_fractions": self.age_crop_fractions if self.crop_scale == "age" else None,
        }

    def head_px(self, item: CaseInputs) -> dict[str, float | None]:
        """The head sizes the regions are measured against ({}: the regions' span)."""
        if self.head_size == "skull":
            return item.skull_px
        if self.head_size == "box":
            return item.box_head_px
        return {}

    def needs_crop_fractions(self) -> bool:
        """Whether scaled crops still have fractions to learn from the training cases."""
        if self.crop_scale == "box":
            return False
        return self.crop_fractions is None or (self.crop_scale == "age" and self.age_crop_fractions is None)


def head_size_of(meta: dict) -> str:
    """A model's head size; files written before "head_size" existed measured against the span."""
    return meta.get("head_size", "span")


def uses_ga(meta: dict) -> bool:
    """Whether a model (any kind's record) takes the gestational age (absent: no)."""
    return CASE_INPUT in meta.get("case_inputs", [])


def crop_fractions_of(meta: dict, key: str = "crop_fractions") -> tuple[float, ...] | None:
    """A model's head-scaled (``key="age_crop_fractions"``: age-scaled) crop fractions; None
    where it has none (box crops, and files written before)."""
    fractions = meta.get(key)
    return tuple(fractions) if fractions else None


def input_config(meta: dict) -> ClassifyTrainConfig:
    """The part of the configuration that decides how a trained model's inputs are made."""
    fractions, age_fractions = crop_fractions_of(meta), crop_fractions_of(meta, "age_crop_fractions")
    return ClassifyTrainConfig(
        head_size=head_size_of(meta),
        gestational_age=uses_ga(meta),
        crop_scale="age" if age_fractions else "head" if fractions else "box",
        crop_fractions=fractions,
        age_crop_fractions=age_fractions,
    )


def threshold_rule(config: ClassifyTrainConfig) -> str:
    """How the operating threshold was chosen (core.metrics.choose_threshold), for the record."""
    if config.target_sensitivity is None:
        return "Youden's J on the validation split, halfway to the next lower score"
    return (
        f"highest cut reaching sensitivity {config.target_sensitivity} on validation, "
        "halfway to the next lower score"
    )
