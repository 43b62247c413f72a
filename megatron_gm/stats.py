"""Percentile-bootstrap confidence intervals for reports (scipy.stats.bootstrap, seeded)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def bootstrap_ci(values, *, n: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (one value: that value, twice)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci of no values")
    if x.size == 1 or np.all(x == x[0]):  # scipy needs two distinct resamples' worth of data
        return float(x[0]), float(x[0])
    ci = stats.bootstrap((x,), np.mean, n_resamples=n, confidence_level=level, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval  # fmt: skip
    return float(ci.low), float(ci.high)


def spearman_ci(
    pred: np.ndarray, label: np.ndarray, *, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """CI of the Spearman correlation of ``pred`` and ``label`` ([trajectories, T]), resampling whole
    trajectories (the positions of one trajectory are not independent)."""

    pred, label = np.asarray(pred), np.asarray(label)

    def rho(rows):  # the resampled trajectories
        rows = rows.astype(np.int64)
        return stats.spearmanr(pred[rows].reshape(-1), label[rows].reshape(-1)).statistic

    rows = np.arange(len(pred))
    if len(rows) < 2:
        return float("nan"), float("nan")
    ci = stats.bootstrap((rows,), rho, vectorized=False, n_resamples=n, confidence_level=level,
                         method="percentile", random_state=np.random.default_rng(seed)).confidence_interval  # fmt: skip
    return float(ci.low), float(ci.high)
