"""Greedy group selection inside one cluster (docs/method.md step 4).

The first pick is argmin s. Every later pick is the argmin, over the documents not yet picked, of

    s(x) * alpha * mean_{j picked} (1 - <h_j, h_x> / tau)  =  s(x) * alpha * (1 - <sum_j h_j, h_x> / (k tau))

so one running sum per candidate, ``dots[x] = sum_j <h_j, h_x>``, updated with one matrix-vector product
per pick, replaces the O(|C|^2) relation matrix: memory O(|C| d), time O(quota |C| d). Ties go to the
lowest position (``np.argmin``); callers order a cluster's documents by document index, so ties go to the
lowest document index.
"""

from __future__ import annotations

import numpy as np

from megatron_gm.errors import GMError


def check_scores(h: np.ndarray, s: np.ndarray, *, where: str = "scores") -> None:
    if h.ndim != 2 or s.ndim != 1 or h.shape[0] != s.shape[0]:
        raise GMError(f"{where}: expected h [n, d] and s [n], got {h.shape} and {s.shape}")
    if not (np.isfinite(s).all() and np.isfinite(h).all()):
        raise GMError(f"{where}: non-finite values in h or s; rescore the pool")


def greedy_group_select(h: np.ndarray, s: np.ndarray, alpha: float, tau: float, quota: int) -> np.ndarray:
    """Positions (int64, in choice order) of ``quota`` documents picked greedily from one cluster."""
    n = s.shape[0]
    if not 0 <= quota <= n:
        raise ValueError(f"quota {quota} outside [0, {n}]")
    if tau == 0:
        raise GMError("influence model has tau = 0; the relation term is undefined")
    chosen = np.empty(quota, dtype=np.int64)
    if quota == 0:
        return chosen
    h = np.ascontiguousarray(h, dtype=np.float32)
    s_alpha = s.astype(np.float64) * float(alpha)
    blocked = np.zeros(n, dtype=np.float64)  # +inf once picked
    dots = np.zeros(n, dtype=np.float64)
    pick = int(np.argmin(s))
    for k in range(quota):
        if k:
            dots += h @ h[pick]
            score = s_alpha * (1.0 - dots / (k * float(tau))) + blocked
            pick = int(np.argmin(score))
        chosen[k] = pick
        blocked[pick] = np.inf
    return chosen
