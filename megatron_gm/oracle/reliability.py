"""Split-half reliability of oracle labels as a function of the reference set's size.

The oracle label of a step is the change of the mean reference loss. Measured on two disjoint reference
subsets of n examples each over the same trajectories, the two label sets agree to the extent that n
examples measure the same thing: their correlation is the reliability of labels from an n-example
reference set (parallel forms). One collection with per-example losses (``MegatronEngine.
reference_example_losses``) gives the labels of every subset, so the whole curve costs one run.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from megatron_gm.errors import GMError


def subset_labels(rows: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Labels [K, T] of the reference subset from per-example rows [K, T+1, n, 2] (loss sum, count)."""
    part = rows[:, :, subset, :].sum(axis=2)
    return np.diff(part[..., 0] / part[..., 1], axis=1)


@dataclasses.dataclass
class Point:
    size: int  # reference examples in each half
    pearson: float  # mean over splits
    pearson_std: float
    spearman: float
    splits: int


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def split_half(rows: np.ndarray, size: int, splits: int, seed: int = 0) -> Point:
    """Correlation of the labels of two disjoint random subsets of ``size`` examples, over ``splits``."""
    n = rows.shape[2]
    if not 1 <= size <= n // 2:
        raise GMError(f"--sizes {size}: each half needs 1..{n // 2} of the {n} reference examples")
    rng = np.random.default_rng(seed)
    rs, rhos = [], []
    for _ in range(splits):
        perm = rng.permutation(n)
        a = subset_labels(rows, perm[:size]).ravel()
        b = subset_labels(rows, perm[size : 2 * size]).ravel()
        rs.append(float(np.corrcoef(a, b)[0, 1]))
        rhos.append(_spearman(a, b))
    return Point(size, float(np.mean(rs)), float(np.std(rs)), float(np.mean(rhos)), splits)


def smallest_reliable(points: list[Point], threshold: float = 0.9) -> int | None:
    """The smallest size whose mean Pearson reliability reaches ``threshold`` (None: none does)."""
    ok = [p.size for p in points if p.pearson >= threshold]
    return min(ok) if ok else None
