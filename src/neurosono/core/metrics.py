"""Binary classification metrics as the study reports them, each with a 95% CI.

* Bootstrap percentile over cases (seeded; reproduces the study's intervals).
* Wilson score intervals for the proportions (more honest at n = 15).
* DeLong's variance for the AUC (DeLong et al., Biometrics 1988), computed with
  the midrank method of Sun & Xu (IEEE SPL 2014).

Every metric is returned as ``{"value", "ci95", "method"}`` plus ``ci95_wilson`` /
``ci95_delong`` where they apply, and proportions carry their counts ("13 of 15").
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

Z95 = stats.norm.ppf(0.975)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (no continuity correction).

    The closed form is written here rather than taken from statsmodels
    (``proportion_confint(method="wilson")``), which would bring pandas and patsy into the
    install for five lines; the tests check it against Newcombe's (1998) published table.
    """
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _midrank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    n = len(x)
    ranks = np.zeros(n)
    i = 0
    while i < n:
        j = i
        while j < n and sorted_x[j] == sorted_x[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n)
    out[order] = ranks
    return out


def delong_auc_variance(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(AUC, DeLong variance) for one classifier; positives are label 1."""
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=float)
    pos, neg = scores[y_true == 1], scores[y_true == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise ValueError("AUC needs at least one positive and one negative case")
    tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:m] - tx) / n  # placement of each positive among the negatives
    v10 = 1.0 - (tz[m:] - ty) / m  # placement of each negative among the positives
    s01 = np.var(v01, ddof=1) if m > 1 else 0.0
    s10 = np.var(v10, ddof=1) if n > 1 else 0.0
    return float(auc), float(s01 / m + s10 / n)


def delong_interval(y_true: np.ndarray, scores: np.ndarray, z: float = Z95) -> tuple[float, float]:
    auc, var = delong_auc_variance(y_true, scores)
    half = z * math.sqrt(max(var, 0.0))
    return (max(0.0, auc - half), min(1.0, auc + half))


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, int]:
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    return {
        "tp": int((y_true & y_pred).sum()),
        "fn": int((y_true & ~y_pred).sum()),
        "fp": int((~y_true & y_pred).sum()),
        "tn": int((~y_true & ~y_pred).sum()),
    }


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def point_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Every metric at one threshold (predicted abnormal when score >= threshold)."""
    y_true = np.asarray(y_true).astype(int)
    c = confusion(y_true, np.asarray(scores) >= threshold)
    sens, ppv = _ratio(c["tp"], c["tp"] + c["fn"]), _ratio(c["tp"], c["tp"] + c["fp"])
    return {
        "auc": float(roc_auc_score(y_true, scores)) if 0 < y_true.sum() < len(y_true) else float("nan"),
        "sensitivity": sens,
        "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
        "ppv": ppv,
        "npv": _ratio(c["tn"], c["tn"] + c["fn"]),
        "accuracy": _ratio(c["tp"] + c["tn"], len(y_true)),
        "f1": _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
    }


def clusters(groups) -> list[np.ndarray] | None:
    """The case indices of each source group, or None when every group is a single case
    (then a bootstrap over cases and one over groups are the same thing)."""
    if groups is None:
        return None
    index: dict = {}
    for i, group in enumerate(groups):
        index.setdefault(group, []).append(i)
    if len(index) == len(groups):
        return None
    return [np.asarray(members) for members in index.values()]


def resample(rng: np.random.Generator, n: int, groups: list[np.ndarray] | None) -> np.ndarray:
    """One bootstrap resample: n case indices, or whole source groups drawn with replacement."""
    if groups is None:
        return rng.integers(0, n, n)
    return np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])


def boot_method(n_boot: int, seed: int, groups: list[np.ndarray] | None, unit: str = "cases") -> str:
    if groups is None:
        return f"bootstrap percentile over {unit} ({n_boot} resamples, seed {seed})"
    return f"cluster bootstrap percentile over {len(groups)} source groups ({n_boot} resamples, seed {seed})"


def bootstrap(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    groups: list[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Metric values over resamples (NaN where a resample leaves a metric undefined): of cases,
    or with ``groups`` (from :func:`clusters`) of whole source groups, since the images of one
    source (augmented copies, one patient's planes) are not independent.

    Every metric is computed on the same resamples, and a resample that leaves a metric
    undefined (no abnormal case drawn, say) is dropped from that metric alone.
    ``scipy.stats.bootstrap`` takes one statistic at a time and fails or returns NaN on
    such resamples; it would also draw other resamples, changing every interval in the
    shipped models' records. The percentile rule itself is the textbook one.
    """
    y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = resample(rng, n, groups)
        for key, value in point_metrics(y_true[idx], scores[idx], threshold).items():
            samples.setdefault(key, []).append(value)
    return {k: np.asarray(v) for k, v in samples.items()}


def _percentile(samples: np.ndarray) -> list[float]:
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def classification_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    groups=None,
) -> dict:
    """The study's metrics with CIs, in metrics.json form. ``groups``: each case's source
    group; where a group holds several cases the CIs come from a cluster bootstrap over groups."""
    y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, dtype=float)
    values = point_metrics(y_true, scores, threshold)
    clustered = clusters(groups)
    boots = bootstrap(y_true, scores, threshold, n_boot, seed, clustered)
    method = boot_method(n_boot, seed, clustered)
    c = confusion(y_true, scores >= threshold)
    counts = {
        "sensitivity": (c["tp"], c["tp"] + c["fn"]),
        "specificity": (c["tn"], c["tn"] + c["fp"]),
        "ppv": (c["tp"], c["tp"] + c["fp"]),
        "npv": (c["tn"], c["tn"] + c["fn"]),
        "accuracy": (c["tp"] + c["tn"], len(y_true)),
    }
    out: dict = {}
    for key, value in values.items():
        entry = {
            "value": round(value, 4) if np.isfinite(value) else None,
            "ci95": _percentile(boots[key]),
            "method": method,
        }
        if key in counts:
            k, n = counts[key]
            entry["count"] = f"{k} of {n}"
            entry["ci95_wilson"] = [round(v, 4) for v in wilson_interval(k, n)]
        if key == "auc" and np.isfinite(value):
            entry["ci95_delong"] = [round(v, 4) for v in delong_interval(y_true, scores)]
        out[key] = entry
    out["threshold"] = round(float(threshold), 6)
    out["n_normal"] = int((y_true == 0).sum())
    out["n_abnormal"] = int((y_true == 1).sum())
    out["confusion"] = c
    out["brier"] = round(float(np.mean((scores - y_true) ** 2)), 4)
    return out


def choose_threshold(
    y_true: np.ndarray, scores: np.ndarray, target_sensitivity: float | None = None
) -> float:
    """Operating threshold from validation data: Youden's J, or the highest cut that reaches
    ``target_sensitivity`` (screening). Never call this on test data.

    Every threshold between the chosen cut (a validation score) and the next lower
    validation score classifies the validation cases alike; the cut itself sits on a case,
    as close to the abnormal cases as the rule allows. We return the middle of that
    interval: on a validation split the model separates well, the cut is otherwise set by
    its single lowest-scoring abnormal case and new cases just below it are missed.
    """
    scores = np.asarray(scores, dtype=float)
    fpr, tpr, thresholds = roc_curve(np.asarray(y_true).astype(int), scores)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if target_sensitivity is None:
        cut = float(thresholds[int(np.argmax(tpr - fpr))])
    else:
        reaching = np.where(tpr >= target_sensitivity)[0]
        cut = float(thresholds[reaching[0]]) if len(reaching) else float(thresholds[-1])
    below = scores[scores < cut]
    return (cut + float(below.max())) / 2 if len(below) else cut


def auc_with_ci(y_true, scores, groups=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """ROC AUC with its bootstrap percentile 95% CI (a cluster bootstrap where ``groups`` repeat)."""
    y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, dtype=float)
    if not 0 < y_true.sum() < len(y_true):
        return {"value": None, "ci95": [None, None], "method": "undefined: one class only"}
    clustered = clusters(groups)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = resample(rng, len(y_true), clustered)
        if 0 < y_true[idx].sum() < len(idx):
            values.append(roc_auc_score(y_true[idx], scores[idx]))
    return {
        "value": round(float(roc_auc_score(y_true, scores)), 4),
        "ci95": _percentile(np.asarray(values)),
        "method": boot_method(n_boot, seed, clustered),
        "n": len(y_true),
        "n_groups": len(clustered) if clustered is not None else len(y_true),
    }


def proportion_with_ci(hits, groups=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """A share of yes/no outcomes with its bootstrap percentile 95% CI (cluster bootstrap where
    ``groups`` repeat) and the count."""
    hits = np.asarray(hits, dtype=float)
    if not len(hits):
        return {"value": None, "ci95": [None, None], "method": "no cases", "count": "0 of 0"}
    clustered = clusters(groups)
    rng = np.random.default_rng(seed)
    values = np.array([hits[resample(rng, len(hits), clustered)].mean() for _ in range(n_boot)])
    return {
        "value": round(float(hits.mean()), 4),
        "ci95": _percentile(values),
        "method": boot_method(n_boot, seed, clustered),
        "count": f"{int(hits.sum())} of {len(hits)}",
    }


def mean_with_ci(values, groups=None, n_boot: int = 1000, seed: int = 0, unit: str = "cases") -> dict:
    """The mean of ``values`` with its bootstrap percentile 95% CI (a cluster bootstrap over
    source groups where ``groups`` repeat), as ``{value, ci95, method}``."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return {"value": None, "ci95": [None, None], "method": "no cases"}
    clustered = clusters(groups)
    rng = np.random.default_rng(seed)
    means = np.array([values[resample(rng, len(values), clustered)].mean() for _ in range(n_boot)])
    return {
        "value": round(float(values.mean()), 4),
        "ci95": _percentile(means),
        "method": boot_method(n_boot, seed, clustered, unit),
    }
