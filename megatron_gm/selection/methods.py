"""The selection methods, all with the same budget.

Every method first needs the clusters: the budget of a run is ``round(ratio * N)``, split by largest remainder.

- ``group`` (Group-MATES, the default): in each cluster, the greedy relational pick (greedy.py).
- ``quota`` (control, not in the paper): in each cluster, its quota of lowest s.
- ``individual`` (MATES): over the whole pool, Gumbel-top-k on -s / temperature, k = the budget.
  Temperature 0 is plain top-k (lowest s). MATES' own script sorts ``s / T + Gumbel`` ascending, which
  is a reversed-Gumbel perturbation; we use the proper Gumbel-top-k, which samples without replacement
  with probabilities proportional to exp(-s / T).
- ``random``: over the whole pool, a uniform sample of the budget's size without replacement.

The selection tool draws every stochastic choice from ``draw_seed(seed, stage)``, so each round gets a
fresh random subset (and fresh k-means initialisation) while a rerun of the same stage is identical.

``individual`` and ``random`` are global, as in MATES; they match ``group``'s total count exactly, not its
per-cluster counts. Ties go to the lowest document index everywhere.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.selection.greedy import greedy_group_select
from megatron_gm.selection.quotas import largest_remainder_quotas

METHODS = ("group", "individual", "quota", "random")
PER_CLUSTER = ("group", "quota")

# Independent random streams derived from the user's seed.
STREAM_KMEANS, STREAM_INDIVIDUAL, STREAM_RANDOM = 1, 2, 3


def rng_for(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def draw_seed(seed: int, stage: int) -> int:
    """The seed every stochastic choice of stage ``stage`` draws from (k-means sample and init, Gumbel,
    random): a fresh subset each round, the same one for the same (seed, stage). Fits faiss' int32."""
    return int(np.random.SeedSequence([int(seed), int(stage)]).generate_state(1)[0] % (2**31 - 1))


def exact_ratio(ratio: float) -> Fraction:
    """The ratio as the decimal the user typed: floor(0.29 * 100) is 29, not 28."""
    return Fraction(repr(float(ratio)))


def cluster_quotas(sizes: np.ndarray, ratio: float) -> np.ndarray:
    return largest_remainder_quotas(sizes, ratio)  # total round(ratio * N), see quotas.py


def select_in_cluster(
    method: str, h: np.ndarray, s: np.ndarray, alpha: float, tau: float, quota: int
) -> np.ndarray:
    """Positions within one cluster, in choice order (``group``) or ascending s (``quota``)."""
    if method == "group":
        return greedy_group_select(h, s, alpha, tau, quota)
    if method == "quota":
        return np.argsort(s, kind="stable")[:quota].astype(np.int64)
    raise ValueError(f"{method!r} is not a per-cluster method")


def select_individual(s: np.ndarray, k: int, temperature: float, seed: int) -> np.ndarray:
    """Gumbel-top-k over -s / temperature: ``k`` positions, best key first."""
    if temperature < 0:
        raise GMError(f"--gm-select-temperature must be >= 0, got {temperature}")
    s = s.astype(np.float64)
    if temperature == 0:
        keys = -s
    else:
        keys = -s / temperature + rng_for(seed, STREAM_INDIVIDUAL).gumbel(size=s.shape[0])
    return np.argsort(-keys, kind="stable")[:k].astype(np.int64)


def select_random(n: int, k: int, seed: int) -> np.ndarray:
    return rng_for(seed, STREAM_RANDOM).choice(n, size=k, replace=False).astype(np.int64)


def select_documents(
    method: str,
    labels: np.ndarray,
    h: np.ndarray | None,
    s: np.ndarray,
    *,
    num_clusters: int,
    ratio: float,
    alpha: float = 1.0,
    tau: float = 1.0,
    temperature: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """All methods in one process: sorted document indices (positions in ``s``) for given cluster labels.

    The distributed run (run.py) gives the same result; this is its reference and a library entry.
    """
    if method not in METHODS:
        raise GMError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    sizes = np.bincount(labels, minlength=num_clusters)
    quotas = cluster_quotas(sizes, ratio)
    if method == "random":
        return np.sort(select_random(s.shape[0], int(quotas.sum()), seed))
    if method == "individual":
        return np.sort(select_individual(s, int(quotas.sum()), temperature, seed))
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_clusters + 1))
    out = [np.zeros(0, dtype=np.int64)]
    for c in range(num_clusters):
        rows = order[bounds[c] : bounds[c + 1]]
        hc = h[rows] if method == "group" else None
        out.append(rows[select_in_cluster(method, hc, s[rows], alpha, tau, int(quotas[c]))])
    return np.sort(np.concatenate(out))
