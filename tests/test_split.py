from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from neurosono.data.format import Case
from neurosono.data.split import SplitError, by_center, holdout, kfold


def _cohort(n: int = 319, n_abnormal: int = 101, group_size: int = 1) -> list[Case]:
    cases = []
    for i in range(n):
        group = f"g{i // group_size}"
        label = "abnormal" if (i // group_size) % (n // n_abnormal + 1) == 0 else "normal"
        cases.append(Case(case_id=f"c{i}", label=label, center=f"C{i % 5}", source_group=group))
    return cases


def _assert_groups_intact(cases: list[Case], column: str) -> None:
    parts = defaultdict(set)
    for case in cases:
        parts[case.group].add(getattr(case, column))
    assert all(len(p) == 1 for p in parts.values())


def test_holdout_is_study_sized_stratified_and_seeded() -> None:
    cases = holdout(_cohort(), seed=3)
    counts = Counter(c.split for c in cases)
    assert counts["train"] + counts["val"] + counts["test"] == 319
    assert abs(counts["train"] / 319 - 0.65) < 0.01
    assert abs(counts["val"] / 319 - 0.20) < 0.01
    assert abs(counts["test"] / 319 - 0.15) < 0.01
    overall = sum(c.label == "abnormal" for c in cases) / 319
    for split in ("train", "val", "test"):
        members = [c for c in cases if c.split == split]
        share = sum(c.label == "abnormal" for c in members) / len(members)
        assert abs(share - overall) < 0.03, split
    assert [c.split for c in holdout(_cohort(), seed=3)] == [c.split for c in cases]
    assert [c.split for c in holdout(_cohort(), seed=4)] != [c.split for c in cases]


def test_holdout_keeps_source_groups_together() -> None:
    cases = holdout(_cohort(n=300, n_abnormal=90, group_size=6), seed=0)
    _assert_groups_intact(cases, "split")
    assert {c.split for c in cases} == {"train", "val", "test"}


def test_holdout_rejects_bad_fractions() -> None:
    with pytest.raises(SplitError):
        holdout(_cohort(), seed=0, fractions=(0.5, 0.5, 0.5))


def test_kfold_is_grouped_stratified_and_complete() -> None:
    cases = kfold(_cohort(n=240, n_abnormal=80, group_size=3), seed=1, folds=3)
    assert {c.fold for c in cases} == {"0", "1", "2"}
    _assert_groups_intact(cases, "fold")
    overall = sum(c.label == "abnormal" for c in cases) / len(cases)
    for fold in "012":
        members = [c for c in cases if c.fold == fold]
        assert abs(len(members) - 80) <= 6
        assert abs(sum(c.label == "abnormal" for c in members) / len(members) - overall) < 0.06


def test_leave_one_centre_out() -> None:
    cases = by_center(_cohort(n=50, n_abnormal=15))
    assert all(c.fold == c.center for c in cases)
    broken = _cohort(n=10, n_abnormal=3)
    broken[0].center = ""
    with pytest.raises(SplitError, match="no centre"):
        by_center(broken)
    mixed = _cohort(n=10, n_abnormal=3, group_size=2)
    with pytest.raises(SplitError, match="span several centres"):
        by_center(mixed)
