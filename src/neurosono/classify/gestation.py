"""Gestational age as an optional case-level input to the stage-2 classifiers.

The normal size of a structure grows with gestational age (GA): the TCD in mm is about
the GA in weeks, and cerebellar hypoplasia is a TCD 2-3 mm under it. From the images
alone, the head's size is the only proxy for age, and on the phantom that proxy was not
precise enough to find hypoplasia (see the README's HexaNet section). The GA is almost
always known at a second-trimester scan (dated by the first-trimester crown-rump length),
so a model may take it: two numbers per case, ``[known, GA / 20]``. Weeks / 20 sits beside
region sizes in mm / 20, so a normal cerebellum reads about the same as the age.

A model trained with GA also learns to decide without it: training withholds the GA of a
share of cases (``ga_dropout``), and a case without a GA gets ``[0, 0]``.
"""

from __future__ import annotations

import re

import numpy as np

GA_SCALE = 20.0  # weeks; the same scale as region sizes in mm (regions.MM_SCALE)
N_GA_SCALARS = 2  # known, GA / GA_SCALE
CASE_INPUT = "ga_weeks"  # the name a model's record uses for this input
# Outside this the GA is not a second-trimester brain scan's (and probably a typing error).
PLAUSIBLE_WEEKS = (10.0, 45.0)

_WEEKS_DAYS = re.compile(r"^\s*(\d{1,2})\s*(?:\+|w\s*)\s*([0-6])\s*d?\s*$", re.IGNORECASE)


def ga_scalars(ga_weeks: float | None) -> np.ndarray:
    """``[1, GA / 20]`` for a known GA, ``[0, 0]`` for an unknown one (float32 [2])."""
    if ga_weeks is None or not np.isfinite(ga_weeks):
        return np.zeros(N_GA_SCALARS, np.float32)
    return np.array([1.0, ga_weeks / GA_SCALE], np.float32)


def parse_ga(text: str | float | None) -> float | None:
    """Weeks from '21.4', '21+3' or '21w3d' (weeks plus days); None for '' or None.

    Raises ValueError with the reason for anything else, or an implausible age.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)):
        weeks = float(text)
    else:
        text = text.strip()
        if not text:
            return None
        match = _WEEKS_DAYS.match(text)
        if match:
            weeks = int(match.group(1)) + int(match.group(2)) / 7
        else:
            try:
                weeks = float(text)
            except ValueError:
                raise ValueError(
                    f"gestational age {text!r} is not weeks ('21.4') or weeks+days ('21+3', '21w3d')"
                ) from None
    low, high = PLAUSIBLE_WEEKS
    if not np.isfinite(weeks) or not low <= weeks <= high:
        raise ValueError(f"gestational age {weeks:g} weeks is outside {low:g}-{high:g} weeks")
    return weeks


def given_ga(
    item, train: bool, rng: np.random.Generator, dropout: float, withhold: bool = False
) -> float | None:
    """The case's gestational age as a GA model gets it: None when unknown, when ``withhold``,
    and in training for a share ``dropout`` of cases (as for a user who does not give it).
    ``item`` is anything with a ``ga_weeks`` (a case's inputs)."""
    ga = None if withhold else item.ga_weeks
    if train and ga is not None and rng.random() < dropout:
        return None
    return ga


def ga_batch(items: list, train: bool, rng: np.random.Generator, dropout: float, withhold: bool = False):
    """[B, 2] gestational-age scalars of :func:`given_ga` (a torch tensor)."""
    import torch

    ages = [given_ga(item, train, rng, dropout, withhold) for item in items]
    return torch.from_numpy(np.stack([ga_scalars(ga) for ga in ages]))
