"""Case-level, label-stratified, group-aware splits.

* ``holdout``: train/val/test (65/20/15 by default, the study's) in the ``split`` column.
* ``kfold``: k folds in the ``fold`` column (0..k-1), stratified by label, groups intact.
* ``center``: leave-one-centre-out folds in the ``fold`` column (the fold is the centre).

The unit that is never divided is the source group (``source_group``, or the case
itself when a dataset has none): augmented copies of one source image, or the
two planes of one case, always land on the same side.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from neurosono.core.atomic import OutputExistsError
from neurosono.data.format import SPLITS, Case, Dataset

SCHEMES = ("holdout", "kfold", "center")
STUDY_FRACTIONS = (0.65, 0.20, 0.15)


class SplitError(ValueError):
    pass


def _groups(cases: list[Case]) -> dict[str, list[Case]]:
    groups: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        groups[case.group].append(case)
    return dict(groups)


def _stratum(members: list[Case]) -> str:
    # A group holding any abnormal case is stratified as abnormal.
    return "abnormal" if any(c.label == "abnormal" for c in members) else "normal"


def holdout(
    cases: list[Case], seed: int, fractions: tuple[float, float, float] = STUDY_FRACTIONS
) -> list[Case]:
    """Assign train/val/test, matching ``fractions`` of cases within each label stratum.

    Written here rather than taken from scikit-learn, which has no three-way split that is
    stratified, group-aware and held to target fractions; every phantom cohort's split and
    every figure measured on one come from this rule, so it stays as it is.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise SplitError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    groups = _groups(cases)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for name in sorted(groups):
        by_stratum[_stratum(groups[name])].append(name)
    assignment: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        names = by_stratum[stratum]
        order = rng.permutation(len(names))
        # Larger groups first so the greedy fill can still balance with small ones.
        ordered = sorted((names[i] for i in order), key=lambda n: -len(groups[n]))
        total = sum(len(groups[n]) for n in names)
        targets = np.asarray(fractions) * total
        filled = np.zeros(3)
        for name in ordered:
            deficit = targets - filled
            choice = int(np.argmax(deficit))
            assignment[name] = SPLITS[choice]
            filled[choice] += len(groups[name])
    return [dataclasses.replace(c, split=assignment[c.group]) for c in cases]


def kfold(cases: list[Case], seed: int, folds: int = 3) -> list[Case]:
    """Stratified group k-fold; the fold index goes to the ``fold`` column."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = _groups(cases)
    if folds < 2:
        raise SplitError("kfold needs at least 2 folds")
    if len(groups) < folds:
        raise SplitError(f"{len(groups)} source groups cannot fill {folds} folds")
    labels = np.array([1 if c.label == "abnormal" else 0 for c in cases])
    group_ids = np.array([c.group for c in cases])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(cases), dtype=int)
    for index, (_, test_idx) in enumerate(splitter.split(np.zeros(len(cases)), labels, group_ids)):
        fold_of[test_idx] = index
    return [dataclasses.replace(c, fold=str(int(f))) for c, f in zip(cases, fold_of, strict=True)]


def by_center(cases: list[Case]) -> list[Case]:
    """Leave-one-centre-out: each centre is a fold."""
    missing = [c.case_id for c in cases if not c.center]
    if missing:
        raise SplitError(f"{len(missing)} case(s) have no centre, e.g. {missing[:3]}")
    centres_of_group: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        centres_of_group[case.group].add(case.center)
    mixed = sorted(g for g, cs in centres_of_group.items() if len(cs) > 1)
    if mixed:
        raise SplitError(f"source group(s) {mixed[:3]} span several centres; cannot leave one out")
    if len({c.center for c in cases}) < 2:
        raise SplitError("leave-one-centre-out needs at least 2 centres")
    return [dataclasses.replace(c, fold=c.center) for c in cases]


def make_split(
    cases: list[Case],
    scheme: str,
    seed: int,
    folds: int = 3,
    fractions: tuple[float, float, float] = STUDY_FRACTIONS,
) -> list[Case]:
    if scheme == "holdout":
        return holdout(cases, seed, fractions)
    if scheme == "kfold":
        return kfold(cases, seed, folds)
    if scheme == "center":
        return by_center(cases)
    raise SplitError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")


def column_of(scheme: str) -> str:
    """The cases.csv column a scheme writes: ``split`` for holdout, ``fold`` for the others."""
    return "split" if scheme == "holdout" else "fold"


def write_split(
    dataset_path: str | Path,
    scheme: str = "holdout",
    seed: int = 0,
    folds: int = 3,
    fractions: tuple[float, float, float] = STUDY_FRACTIONS,
    overwrite: bool = False,
) -> tuple[list[Case], Path | None]:
    """Assign a split into the dataset's cases.csv; returns (cases, backup of the old file or None).

    An existing assignment in the scheme's column is replaced only with ``overwrite``, and
    the old cases.csv is then kept beside it as ``cases.csv.<UTC time>.bak``.
    """
    dataset = Dataset.load(dataset_path)
    column = column_of(scheme)
    new_cases = make_split(dataset.cases, scheme, seed, folds=folds, fractions=fractions)
    existing = any(getattr(c, column) for c in dataset.cases)
    if existing and not overwrite:
        raise OutputExistsError(
            f"{dataset.root / 'cases.csv'} already has a '{column}' assignment; "
            "pass --overwrite to replace it"
        )
    backup = None
    if existing:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        backup = dataset.root / f"cases.csv.{stamp}.bak"
        shutil.copy2(dataset.root / "cases.csv", backup)
    dataset.cases = new_cases
    dataset.write_cases()
    return new_cases, backup


def summary(cases: list[Case], column: str = "split") -> dict[str, dict[str, int]]:
    """Counts of normal/abnormal cases per split (or fold)."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"normal": 0, "abnormal": 0})
    for case in cases:
        key = getattr(case, column) or "(none)"
        if case.label in ("normal", "abnormal"):
            table[key][case.label] += 1
    return dict(sorted(table.items()))
