"""Small statistics used in reports: percentile-bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_ci(
    values,
    stat: Callable[[np.ndarray], float] = np.mean,
    *,
    n: int = 10000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat`` over ``values`` (resampled with replacement, seeded)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci of no values")
    if x.size == 1:
        return float(x[0]), float(x[0])
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n, x.size))
    boots = np.array([stat(x[i]) for i in idx])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(boots, [tail, 100 - tail])
    return float(lo), float(hi)


def spearman_ci(
    pred: np.ndarray, label: np.ndarray, *, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """CI of the Spearman correlation of ``pred`` and ``label`` ([trajectories, T]), resampling whole
    trajectories (the positions of one trajectory are not independent)."""
    from scipy.stats import spearmanr

    pred, label = np.asarray(pred), np.asarray(label)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n):
        i = rng.integers(0, len(pred), size=len(pred))
        rho = spearmanr(pred[i].reshape(-1), label[i].reshape(-1)).statistic
        if np.isfinite(rho):
            boots.append(rho)
    if not boots:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(boots, [tail, 100 - tail])
    return float(lo), float(hi)
