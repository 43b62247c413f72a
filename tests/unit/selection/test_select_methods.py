"""Selection methods: quotas, the shared budget, random's uniformity, individual's temperature limit."""

import numpy as np
import pytest
from scipy import stats

from megatron_gm.errors import GMError
from megatron_gm.selection.cluster import assign, kmeans_sample, train_centroids
from megatron_gm.selection.methods import (
    METHODS,
    cluster_quotas,
    select_documents,
    select_individual,
    select_random,
)


def synthetic(n=600, d=16, topics=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, d)).astype(np.float32)
    h = centers[rng.integers(0, topics, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    s = rng.standard_normal(n).astype(np.float32)
    return h, s


def test_quotas_are_largest_remainders_of_the_typed_ratio():
    # 0.29 * 114 = 33.06 -> 33: floors 29+2 = 31, the two largest remainders (.9, .87) get one more
    assert cluster_quotas(np.array([100, 10, 3, 1, 0]), 0.29).tolist() == [29, 3, 1, 0, 0]
    # 7.5 rounds up to 8; tied remainders go to the lower cluster
    assert cluster_quotas(np.array([7, 8]), 0.5).tolist() == [4, 4]
    assert cluster_quotas(np.array([1, 1, 1]), 0.5).tolist() == [1, 1, 0]
    # the case: as many clusters as documents would have selected nothing with floors
    assert cluster_quotas(np.array([2] * 5000 + [1] * 9999), 0.5).sum() == 10000  # round(0.5 * 19999)
    assert cluster_quotas(np.array([7, 8]), 1.0).tolist() == [7, 8]
    assert cluster_quotas(np.array([10]), 0.7).tolist() == [7]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_honours_the_budget(method):
    h, s = synthetic()
    labels = np.random.default_rng(3).integers(0, 7, s.size).astype(np.int32)
    labels[labels == 6] = 5  # cluster 6 empty
    quotas = cluster_quotas(np.bincount(labels, minlength=7), 0.3)
    docs = select_documents(method, labels, h, s, num_clusters=7, ratio=0.3, alpha=0.8, tau=1.2, seed=5)
    assert docs.dtype == np.int64 and np.all(np.diff(docs) > 0)
    assert docs.size == quotas.sum()
    if method in ("group", "quota"):
        assert np.bincount(labels[docs], minlength=7).tolist() == quotas.tolist()
    if method == "quota":
        for c in range(7):
            members = np.flatnonzero(labels == c)
            assert set(docs[labels[docs] == c]) == set(
                members[np.argsort(s[members], kind="stable")][: quotas[c]]
            )


def test_group_uses_the_relation_term():
    h, s = synthetic()
    labels = np.zeros(s.size, dtype=np.int32)
    # ratio 0.3 < share of negative s: at 0.5 the sign of s alone would decide the set
    group = select_documents("group", labels, h, s, num_clusters=1, ratio=0.3, alpha=1.0, tau=1.0)
    quota = select_documents("quota", labels, h, s, num_clusters=1, ratio=0.3)
    assert group.size == quota.size and set(group) != set(quota)
    # tau changes the group choice; a positive alpha's size does not (it scales every later score alike)
    assert set(select_documents("group", labels, h, s, num_clusters=1, ratio=0.3, tau=3.0)) != set(group)
    assert np.array_equal(
        select_documents("group", labels, h, s, num_clusters=1, ratio=0.3, alpha=2.5), group
    )


def test_random_is_uniform():
    n, k, trials = 40, 12, 3000
    counts = np.zeros(n)
    for seed in range(trials):
        picked = select_random(n, k, seed)
        assert np.unique(picked).size == k
        counts[picked] += 1
    # chi-square on per-document inclusion counts (expected trials * k / n each)
    p = stats.chisquare(counts).pvalue
    assert p > 1e-3, p
    assert abs(counts.mean() - trials * k / n) < 1e-9
    # no position bias: first half and second half are picked equally often (within 4 sigma)
    sd = np.sqrt(trials * k * 0.5 * 0.5)
    assert abs(counts[: n // 2].sum() - counts[n // 2 :].sum()) / 2 < 4 * sd
    assert not np.array_equal(select_random(n, k, 0), select_random(n, k, 1))
    assert np.array_equal(select_random(n, k, 7), select_random(n, k, 7))


def test_random_ignores_clusters_and_scores():
    h, s = synthetic()
    labels = np.zeros(s.size, dtype=np.int32)
    labels[:100] = 1
    a = select_documents("random", labels, h, s, num_clusters=2, ratio=0.5, seed=4)
    b = select_documents("random", labels, h, -s, num_clusters=2, ratio=0.5, seed=4)
    assert np.array_equal(a, b)


def test_individual_temperature_to_zero_is_top_k():
    h, s = synthetic(n=500)
    top = np.argsort(s, kind="stable")[:60]
    assert np.array_equal(select_individual(s, 60, 0.0, seed=1), top)
    for seed in range(5):
        assert np.array_equal(select_individual(s, 60, 1e-7, seed=seed), top)
    warm = select_individual(s, 60, 1.0, seed=1)
    assert set(warm) != set(top)
    assert np.array_equal(warm, select_individual(s, 60, 1.0, seed=1))
    assert s[warm].mean() < s.mean()  # still prefers low s
    with pytest.raises(GMError):
        select_individual(s, 10, -1.0, seed=0)


def test_individual_first_pick_follows_the_softmax():
    s = np.array([0.0, 0.5, 1.0, 2.0], dtype=np.float32)
    temperature, trials = 0.7, 4000
    first = np.bincount(
        [select_individual(s, 1, temperature, seed)[0] for seed in range(trials)], minlength=4
    )
    p = np.exp(-s.astype(np.float64) / temperature)
    expected = p / p.sum() * trials
    assert stats.chisquare(first, expected * (trials / expected.sum())).pvalue > 1e-3


def test_pipeline_clustering_is_deterministic():
    h, _ = synthetic(n=3000, d=24)
    sample = kmeans_sample(3000, 5, seed=9, points_per_centroid=100)
    assert sample.size == 500 and np.all(np.diff(sample) > 0)
    a = train_centroids(h[sample], 5, seed=9, niter=10)
    b = train_centroids(h[sample], 5, seed=9, niter=10, threads=2)
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)  # spherical
    labels = assign(h, a, block=1000)
    assert np.array_equal(labels, assign(h, a, block=4096))
    assert np.array_equal(labels, np.argmax(h @ a.T, axis=1))
    with pytest.raises(GMError, match="more than"):
        train_centroids(h[:4], 5, seed=0, niter=2)
