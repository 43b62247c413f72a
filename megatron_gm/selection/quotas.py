"""Per-cluster selection quotas: largest remainder, so the total is round(ratio * N) for any clustering.

``floor(ratio * |C|)`` per cluster loses up to one document per cluster: with many small clusters the
budget collapses (ratio 0.5 and clusters of one document select nothing). Largest-remainder quotas give
each cluster ``floor(ratio * |C|)`` and hand the documents still missing from ``round(ratio * N)`` to the
clusters with the largest fractional parts (ties: the lower cluster index), so every cluster gets
``floor`` or ``ceil`` of its exact share and the total does not depend on the number of clusters.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from megatron_gm.dist import get_logger

log = get_logger(__name__)


def exact_ratio(ratio: float) -> Fraction:
    """The ratio as the decimal the user typed: floor(0.29 * 100) is 29, not 28."""
    return Fraction(repr(float(ratio)))


def selection_total(num_docs: int, ratio: float) -> int:
    """round(ratio * num_docs) with exact decimals, halves rounded up."""
    return math.floor(exact_ratio(ratio) * int(num_docs) + Fraction(1, 2))


def largest_remainder_quotas(sizes: np.ndarray, ratio: float) -> np.ndarray:
    """Quotas per cluster (int64), summing to ``selection_total(sizes.sum(), ratio)``."""
    r = exact_ratio(ratio)
    sizes = [int(n) for n in np.asarray(sizes).ravel()]
    shares = [r * n for n in sizes]
    quotas = [math.floor(x) for x in shares]
    missing = selection_total(sum(sizes), ratio) - sum(quotas)
    by_remainder = sorted(range(len(sizes)), key=lambda c: (-(shares[c] - quotas[c]), c))
    for c in by_remainder[:missing]:
        quotas[c] += 1
    tiny = sum(1 for n in sizes if 0 < n and r * n < 1)
    if tiny:
        log.warning(
            "%d of %d clusters hold fewer than 1/ratio = %.3g documents: their quotas are 0 or 1 by largest "
            "remainder, so selection there is close to arbitrary; consider fewer clusters (--gm-num-clusters)",
            tiny,
            len(sizes),
            float(1 / r),
        )
    return np.asarray(quotas, dtype=np.int64)
