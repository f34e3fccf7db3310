"""Knowing when not to answer: how surely stage 1 saw the brain regions stage 2 reads.

A case whose images lie outside the models' domain (a real scan for phantom-trained models,
a wrong plane, not an ultrasound at all) leaves the detector unsure: it finds few regions,
faintly. Stage 2 would still give a probability, and a confident-looking "normal" on a case
it never saw the like of is worse than no answer. The *support* of a case is the mean
confidence of the surer half of the regions it needs (a region not found counts 0): half,
because an abnormal brain may lack a region (no cavum septi pellucidi, a small cerebellum)
and that absence is a finding, not a sign of a foreign image. Below the lowest supports of
the validation cases, the decision is ``indeterminate``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from neurosono.classify.regions import select_regions
from neurosono.detect.predict import Detection

INDETERMINATE = "indeterminate"
# Share of validation cases allowed below the support threshold: the rule should flag
# almost no case of the training domain (at most 2% of held-out phantom cases).
VALIDATION_SHARE_FLAGGED = 0.005


def needed_regions(
    regions: Sequence[str], planes: dict[str, Sequence[str]], given: Iterable[str]
) -> list[int]:
    """Indices of the regions that belong to at least one of the planes given."""
    given = set(given)
    return [i for i, name in enumerate(regions) if any(name in planes[p] for p in given if p in planes)]


def stage1_support(
    detections: list[Detection],
    regions: Sequence[str],
    planes: dict[str, Sequence[str]],
    given: Iterable[str],
) -> float:
    """Mean confidence of the surer half of the needed regions' best detections (0: none found)."""
    needed = needed_regions(regions, planes, given)
    if not needed:
        return 0.0
    chosen = select_regions(detections, list(regions), {p: list(v) for p, v in planes.items()})
    confidences = sorted((chosen[i].confidence if chosen[i] else 0.0 for i in needed), reverse=True)
    top = confidences[: math.ceil(len(confidences) / 2)]
    return float(np.mean(top))


def domain_rule(supports: Sequence[float], share: float = VALIDATION_SHARE_FLAGGED) -> dict:
    """The support threshold chosen on validation cases: below their lowest ``share``, halfway
    to the next lower support (so the cases that set it are kept)."""
    values = np.sort(np.asarray(supports, float))
    if values.size == 0:
        raise ValueError("choosing the support threshold needs validation cases")
    k = int(np.floor(share * values.size))  # cases allowed below the threshold
    lower = values[k - 1] if k > 0 else 0.0
    threshold = (values[k] + lower) / 2
    return {
        "min_support": round(float(threshold), 4),
        "rule": (
            "indeterminate when the support (mean confidence of the surer half of the regions the "
            f"given planes need) is below the lowest {share:.1%} of the validation cases' supports, "
            "halfway to the next lower one"
        ),
        "validation_share_flagged": round(float(np.mean(values < threshold)), 4),
        "n_validation_cases": int(values.size),
    }


def indeterminate_reason(support: float, rule: dict | None) -> str | None:
    """Why this case gets no answer (None: it gets one)."""
    if rule is None or support >= rule["min_support"]:
        return None
    return (
        f"indeterminate: the detector saw the brain regions too faintly for this model (support "
        f"{support:.2f}, below {rule['min_support']:.2f}, under the lowest validation cases); the "
        "images may not be the fetal brain planes of the kind it was trained on"
    )
