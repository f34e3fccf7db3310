"""HexaNet as a classifier kind: one Mini-ResNet branch per detected region, fused into P(abnormal).

Its inputs come from the six-region detector's boxes on the case's TV and TC images
(:mod:`neurosono.classify.regions`): a crop and a few numbers per region, plus, for a model
trained with ``gestational_age``, the case's age. Training crops come from the detector's
own predictions (as at inference) and, with probability ``gt_box_fraction``, from the
ground-truth boxes with jitter. Scaled crops (``crop_scale`` head or age) learn their
per-region fractions from the normal training cases before training; every later use of
the model crops with the stored fractions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from neurosono.classify.base import Classifier, seeded
from neurosono.classify.config import (
    HEAD_SIZE_TEXT,
    ClassifyTrainConfig,
    crop_fractions_of,
    head_size_of,
    input_config,
    uses_ga,
)
from neurosono.classify.gestation import CASE_INPUT, N_GA_SCALARS, ga_scalars, given_ga
from neurosono.classify.inputs import CaseInputs
from neurosono.classify.networks import N_SCALARS, HexaNet, drop_one_region_attribution
from neurosono.classify.regions import (
    CROP,
    N_SIZE_FOR_AGE,
    age_length_px,
    learn_crop_fractions,
    region_inputs,
)
from neurosono.detect.predict import Detection

# v2: six region scalars (head-relative sizes), stride-2 stems. The head size behind the relative
# sizes is stored as "head_size" ("span" or "skull"; absent in the first v2 files: "span").
FORMAT = "neurosono-hexanet-v2"


def new_hexanet(n_regions: int, share_branches: bool, with_ga: bool) -> HexaNet:
    """HexaNet with the inputs its configuration implies: six numbers per region, and for
    gestational-age models two more (the sizes for age) plus two case numbers (the age)."""
    return HexaNet(
        n_regions,
        share_branches=share_branches,
        n_scalars=N_SCALARS + (N_SIZE_FOR_AGE if with_ga else 0),
        n_case_scalars=N_GA_SCALARS if with_ga else 0,
    )


def make_batch(
    items: list[CaseInputs],
    regions: list[str],
    planes: dict[str, list[str]],
    train: bool,
    rng: np.random.Generator,
    config: ClassifyTrainConfig,
    withhold_ga: bool = False,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """HexaNet's inputs ``(crops, scalars[, case scalars])`` and the labels.

    With ``config.gestational_age`` each case's age goes in twice: as case scalars and as
    the regions' sizes for age; in training a share ``ga_dropout`` of cases have it withheld
    (both places), as for a user who does not give it; ``withhold_ga`` withholds every
    case's (to measure a GA model without it).
    """
    crops, scalars, ages = [], [], []
    for item in items:
        ga = given_ga(item, train, rng, config.ga_dropout, withhold_ga) if config.gestational_age else None
        ages.append(ga_scalars(ga))
        detections, jitter = item.detections, 0.0
        if train and item.truth and rng.random() < config.gt_box_fraction:
            # Ground-truth boxes with jitter, and a plausible confidence rather than 1.0.
            detections = [
                Detection(d.plane, d.class_id, float(rng.uniform(0.5, 1.0)), d.box) for d in item.truth
            ]
            jitter = config.jitter
        elif train:
            jitter = config.jitter / 2
        c, s, _ = region_inputs(
            item.images,
            detections,
            regions,
            planes,
            item.spacing,
            jitter,
            rng,
            config.head_px(item),
            ga_weeks=ga,
            **config.region_options(),
        )
        if train:
            flip = rng.random(len(regions)) < 0.5
            c[flip] = c[flip, :, ::-1]
            c = c + rng.normal(0, 0.1, c.shape).astype(np.float32)
        crops.append(c)
        scalars.append(s)
    inputs: tuple[torch.Tensor, ...] = (
        torch.from_numpy(np.stack(crops)[:, :, None].copy()),
        torch.from_numpy(np.stack(scalars)),
    )
    if config.gestational_age:
        inputs += (torch.from_numpy(np.stack(ages)),)
    return inputs, torch.tensor([i.label for i in items], dtype=torch.float32)


def learnt_crop_fractions(
    train_items: list[CaseInputs],
    regions: list[str],
    planes: dict[str, list[str]],
    config: ClassifyTrainConfig,
) -> dict[str, tuple[float, ...]]:
    """Head-scaled (and for ``crop_scale="age"`` age-scaled) crop fractions from the normal
    training cases: from the detector's boxes, as at inference, or from the labelled boxes
    where the detector finds a region on none of them (a detector trained only briefly)."""
    normal = [i for i in train_items if i.label == 0]
    learnt = {"crop_fractions": _fractions_from_boxes(normal, lambda i: config.head_px(i), regions, planes)}
    if config.crop_scale == "age":
        dated = [i for i in normal if i.ga_weeks and all(i.spacing.get(p) for p in i.images)]
        if not dated:
            raise ValueError("age-scaled crops need normal training cases with ga_weeks and pixel spacing")
        learnt["age_crop_fractions"] = _fractions_from_boxes(
            dated, lambda i: {p: age_length_px(i.ga_weeks, i.spacing[p]) for p in i.images}, regions, planes
        )
    return learnt


def _fractions_from_boxes(
    items: list[CaseInputs],
    reference: Callable[[CaseInputs], dict[str, float | None]],
    regions: list[str],
    planes: dict[str, list[str]],
) -> tuple[float, ...]:
    try:
        return learn_crop_fractions([(i.images, i.detections, reference(i)) for i in items], regions, planes)
    except ValueError:
        if not any(i.truth for i in items):
            raise
        return learn_crop_fractions([(i.images, i.truth, reference(i)) for i in items], regions, planes)


class HexaNetClassifier(Classifier):
    kind = "hexanet"
    title = "HexaNet"
    formats = (FORMAT,)
    needs_detector = True

    @property
    def regions(self) -> list[str]:
        return self.meta["regions"]

    @property
    def planes(self) -> dict[str, list[str]]:
        return self.meta["planes"]

    @classmethod
    def create(
        cls, config: ClassifyTrainConfig, regions: list[str], planes: dict[str, list[str]]
    ) -> Classifier:
        seeded(config.seed)
        model = new_hexanet(len(regions), config.share_branches, config.gestational_age)
        meta = {
            "regions": list(regions),
            "planes": {k: list(v) for k, v in planes.items()},
            "share_branches": config.share_branches,
            "head_size": config.head_size,
            "case_inputs": [CASE_INPUT] if config.gestational_age else [],
        }
        classifier = cls(model, 0.5, meta, config)
        classifier._record_crops()
        return classifier

    def _record_crops(self) -> None:
        def listed(fractions: tuple[float, ...] | None, used: bool) -> list[float] | None:
            return list(fractions) if used and fractions is not None else None

        self.meta["crop_fractions"] = listed(self.config.crop_fractions, self.config.crop_scale != "box")
        self.meta["age_crop_fractions"] = listed(
            self.config.age_crop_fractions, self.config.crop_scale == "age"
        )

    def prepare(self, train_items: list[CaseInputs]) -> None:
        from dataclasses import replace

        if self.config.gestational_age:
            ages = [i.ga_weeks for i in train_items if i.ga_weeks is not None]
            if not ages:
                raise ValueError(
                    "no training case has a ga_weeks value; fill cases.csv's column or train without the age"
                )
            # The ages it learnt from: prediction warns outside them.
            self.meta["ga_weeks_range"] = [round(min(ages), 2), round(max(ages), 2)]
        else:
            self.meta["ga_weeks_range"] = None
        if self.config.needs_crop_fractions():
            learnt = learnt_crop_fractions(train_items, self.regions, self.planes, self.config)
            self.config = replace(self.config, **learnt)
            self._record_crops()

    def batches(
        self, items: list[CaseInputs], train: bool, rng: np.random.Generator, withhold_ga: bool = False
    ):
        return make_batch(items, self.regions, self.planes, train, rng, self.config, withhold_ga)

    @torch.no_grad()
    def scores_and_attributions(
        self, items: list[CaseInputs], withhold_ga: bool = False, batch: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """P(abnormal) and drop-one-region attributions [N, R] of each case; ``withhold_ga``:
        a gestational-age model decides as if no case had an age."""
        self.model.eval()
        rng = np.random.default_rng(0)
        scores, attributions = [], []
        for start in range(0, len(items), batch):
            inputs, _ = self.batches(items[start : start + batch], False, rng, withhold_ga)
            scores.append(torch.sigmoid(self.model(*inputs)).numpy())
            attributions.append(drop_one_region_attribution(self.model, *inputs).numpy())
        if not scores:
            return np.zeros(0), np.zeros((0, len(self.regions)))
        return np.concatenate(scores), np.concatenate(attributions)

    @classmethod
    def from_payload(cls, payload: dict) -> Classifier:
        meta = {k: v for k, v in payload.items() if k not in ("state_dict", "format")}
        model = new_hexanet(len(meta["regions"]), meta["share_branches"], uses_ga(meta))
        model.load_state_dict(payload["state_dict"])
        return cls(model.eval(), float(meta["threshold"]), meta, input_config(meta))

    def card(self, record: dict) -> str:
        ds, auc = record["dataset"], record["val_metrics"]["auc"]
        synthetic = "phantom" in (ds["source"] + ds["name"]).lower()
        return f"""# Stage-2 classifier: HexaNet, {len(record["regions"])} regions

**For:** a normal/abnormal decision from the regions found by the stage-1 detector
(detector SHA-256 `{record["detector_sha256"][:16]}...`) on a TV and a TC image.

**Trained on:** {ds["name"]} ({ds["source"]}), {ds["n_train_cases"]} training and
{ds["n_val_cases"]} validation cases; dataset hash `{ds["sha256_train_val"][:16]}...`.
{record["parameters"]:,} parameters; best epoch {record["best_epoch"]}; seed {record["config"]["seed"]};
{record["train_seconds"]:.0f} s.

**Threshold:** {record["threshold"]:.4f}, {record["threshold_rule"]}.

**Inputs:** per region a {CROP}x{CROP} crop{_crop_text(record)} and six numbers (eight with the
age); region sizes relative to the head's {HEAD_SIZE_TEXT[head_size_of(record)]}.{_ga_text(record)}

**Validation split:** AUC {auc["value"]:.3f}
(95% CI {auc["ci95"][0]:.3f}-{auc["ci95"][1]:.3f}, {auc["method"]}).
Early stopping and the threshold used this split: see a held-out test evaluation for honest figures.

**Limits:** {"Trained on synthetic phantoms only; it says nothing about real scans." if synthetic else ""}
Not for clinical use.
"""


def _crop_text(record: dict) -> str:
    def listed(fractions: tuple[float, ...]) -> str:
        return ", ".join(f"{name} {f:.2f}" for name, f in zip(record["regions"], fractions, strict=True))

    head, age = crop_fractions_of(record), crop_fractions_of(record, "age_crop_fractions")
    if not head:
        return " (round the detector's box, plus margin)"
    head_text = f"head-scaled: side a fixed fraction of the head size, {listed(head)}"
    if not age:
        return f" ({head_text})"
    return (
        " (age-scaled where the age and pixel spacing are known: side a fixed fraction of the "
        f"age in weeks as mm, {listed(age)}; {head_text} otherwise)"
    )


def _ga_text(record: dict) -> str:
    if not uses_ga(record):
        return " No gestational age."
    span = record.get("ga_weeks_range")
    trained = f" (training cases {span[0]:g}-{span[1]:g} weeks)" if span else ""
    return (
        f" And the case's gestational age{trained}, as two numbers and as each region's size in mm "
        f"per week of age; optional: withheld from "
        f"{record['config']['ga_dropout']:.0%} of training cases so that it also decides without it."
    )
