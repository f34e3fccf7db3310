"""Classification metrics against hand-computed values and independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from neurosono.core.metrics import (
    bootstrap,
    choose_threshold,
    classification_metrics,
    delong_auc_variance,
    wilson_interval,
)


def _study_like() -> tuple[np.ndarray, np.ndarray]:
    """The study's test set at its threshold: TP 13, FN 2 (of 15 abnormal); TN 29, FP 3 (of 32)."""
    y = np.array([1] * 15 + [0] * 32)
    scores = np.array([0.9] * 13 + [0.2] * 2 + [0.1] * 29 + [0.8] * 3)
    return y, scores


def test_hand_computed_values() -> None:
    y, scores = _study_like()
    m = classification_metrics(y, scores, threshold=0.5, n_boot=200)
    assert m["sensitivity"]["value"] == pytest.approx(0.867, abs=5e-4)
    assert m["sensitivity"]["count"] == "13 of 15"
    assert m["specificity"]["value"] == pytest.approx(0.906, abs=5e-4)
    assert m["specificity"]["count"] == "29 of 32"
    assert m["f1"]["value"] == pytest.approx(0.839, abs=5e-4)  # 2*13 / (2*13 + 3 + 2)
    assert m["ppv"]["count"] == "13 of 16" and m["npv"]["count"] == "29 of 31"
    assert m["accuracy"]["value"] == pytest.approx(42 / 47, abs=1e-4)
    assert m["n_normal"] == 32 and m["n_abnormal"] == 15
    for key in ("auc", "sensitivity", "specificity", "f1", "accuracy", "ppv", "npv"):
        lo, hi = m[key]["ci95"]
        assert lo <= m[key]["value"] <= hi, key


def test_wilson_matches_newcombe_1998() -> None:
    # Newcombe, Stat Med 1998;17:857-872, example 81/263: Wilson 0.2553 to 0.3662.
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = wilson_interval(13, 15)
    assert lo == pytest.approx(0.6211, abs=1e-3) and hi == pytest.approx(0.9626, abs=1e-3)


def _brute_force_delong(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """DeLong 1988 structural components, straight from the definition (O(m n))."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)


def test_delong_on_hanley_mcneil_rating_data() -> None:
    # Hanley & McNeil, Radiology 1982;143:29-36, Table 1: CT ratings 1-5 of 58 normal and
    # 51 abnormal patients; the published trapezoidal area is 0.893.
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.array([0] * len(normal) + [1] * len(abnormal))
    s = np.concatenate([normal, abnormal]).astype(float)
    auc, var = delong_auc_variance(y, s)
    assert auc == pytest.approx(0.893, abs=5e-4)
    assert auc == pytest.approx(roc_auc_score(y, s))
    ref_auc, ref_var = _brute_force_delong(y, s)
    assert auc == pytest.approx(ref_auc) and var == pytest.approx(ref_var, rel=1e-9)
    assert 0.025 < np.sqrt(var) < 0.04  # Hanley-McNeil's own approximation gives SE 0.032


def test_delong_agrees_with_bootstrap_on_continuous_scores() -> None:
    rng = np.random.default_rng(0)
    y = np.array([1] * 60 + [0] * 120)
    s = np.concatenate([rng.normal(1.2, 1, 60), rng.normal(0, 1, 120)])
    _, var = delong_auc_variance(y, s)
    boot = bootstrap(y, s, threshold=0.5, n_boot=2000, seed=1)["auc"]
    assert np.std(boot) == pytest.approx(np.sqrt(var), rel=0.15)
    assert _brute_force_delong(y, s)[1] == pytest.approx(var, rel=1e-9)


def test_bootstrap_is_reproducible_for_a_seed() -> None:
    y, s = _study_like()
    s = s + np.linspace(0, 0.05, len(s))
    a = classification_metrics(y, s, 0.5, n_boot=300, seed=7)
    b = classification_metrics(y, s, 0.5, n_boot=300, seed=7)
    c = classification_metrics(y, s, 0.5, n_boot=300, seed=8)
    assert a == b
    assert a["auc"]["ci95"] != c["auc"]["ci95"]


def test_threshold_choice() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    youden = choose_threshold(y, s)
    # J = 0.75 at both cuts 0.7 (tpr 0.75, fpr 0) and 0.4 (tpr 1, fpr 0.25): ties keep the higher
    # cut, and the threshold sits halfway to the next lower score (0.6).
    assert youden == pytest.approx(0.65)
    screening = choose_threshold(y, s, target_sensitivity=1.0)
    assert screening == pytest.approx(0.35)  # cut 0.4, next lower score 0.3
    assert (s[y == 1] >= screening).all()
    # Separable scores: halfway across the gap, not on the lowest abnormal case.
    assert choose_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.9, 0.95])) == pytest.approx(0.6)
    # Nothing below the cut: the cut itself.
    assert choose_threshold(np.array([1, 1, 0]), np.array([0.2, 0.5, 0.8]), target_sensitivity=1.0) == 0.2


def test_cluster_bootstrap_over_source_groups() -> None:
    from neurosono.core.metrics import auc_with_ci, classification_metrics

    rng = np.random.default_rng(3)
    # 12 sources, each copied 10 times (augmented copies): 120 cases, 12 independent units.
    base_labels = np.array([0, 1] * 6)
    base_scores = base_labels * 0.3 + rng.normal(0.35, 0.2, 12)
    labels, scores = np.repeat(base_labels, 10), np.repeat(base_scores, 10) + rng.normal(0, 0.01, 120)
    groups = np.repeat(np.arange(12), 10)
    by_case = classification_metrics(labels, scores, 0.5, n_boot=300)
    by_group = classification_metrics(labels, scores, 0.5, n_boot=300, groups=groups)
    assert by_case["auc"]["value"] == by_group["auc"]["value"]
    assert "cluster bootstrap percentile over 12 source groups" in by_group["auc"]["method"]
    width = lambda m: m["auc"]["ci95"][1] - m["auc"]["ci95"][0]  # noqa: E731
    assert width(by_group) > 2 * width(by_case)  # copies do not count as evidence
    # Every group a single case: the same resamples as the plain bootstrap.
    single = classification_metrics(labels, scores, 0.5, n_boot=300, groups=np.arange(120))
    assert single["auc"] == by_case["auc"]
    auc = auc_with_ci(labels, scores, groups, n_boot=300)
    assert auc["value"] == by_case["auc"]["value"] and auc["n_groups"] == 12
    assert auc["ci95"][0] <= auc["value"] <= auc["ci95"][1]
