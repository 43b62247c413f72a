"""Greedy group selection inside a cluster: hand-computed cases and a brute-force reference."""

import tracemalloc

import numpy as np
import pytest

from megatron_gm.errors import GMError
from megatron_gm.selection.greedy import greedy_group_select


def brute_force(h, s, alpha, tau, quota):
    """docs/method.md step 4 literally: recompute mean_j (1 - <h_j, h_x>/tau) from scratch at every step."""
    h = h.astype(np.float64)
    chosen = []
    for k in range(quota):
        best, best_score = None, None
        for x in range(len(s)):
            if x in chosen:
                continue
            if k == 0:
                score = float(s[x])
            else:
                rel = sum(1.0 - float(h[j] @ h[x]) / tau for j in chosen) / len(chosen)
                score = float(s[x]) * alpha * rel
            if best is None or score < best_score:  # strict: ties keep the lowest index
                best, best_score = x, score
        chosen.append(best)
    return chosen


# Four documents in 2-D: 0 and 1 are duplicates; 3 lies between 0 and 2.
H = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
S = np.array([-1.0, -0.9, -0.5, -0.8], dtype=np.float32)


def test_hand_computed_tau_1():
    # pick 0 (lowest s). Then with {0}: x1 -0.9*(1-1)=0, x2 -0.5*(1-0)=-0.5, x3 -0.8*(1-0.6)=-0.32 -> 2.
    # With {0,2}: x1 -0.9*mean(0, 1)=-0.45, x3 -0.8*mean(0.4, 0.2)=-0.24 -> 1.
    assert greedy_group_select(H, S, 1.0, 1.0, 3).tolist() == [0, 2, 1]
    # s alone would take 0, 1, 3: the relation term avoids the duplicate first.
    assert np.argsort(S, kind="stable")[:3].tolist() == [0, 1, 3]


def test_hand_computed_tau_2():
    # With {0}: x1 -0.9*(1-0.5)=-0.45, x2 -0.5*(1-0)=-0.5, x3 -0.8*(1-0.3)=-0.56 -> 3.
    # With {0,3}: x1 -0.9*mean(0.5, 0.7)=-0.54, x2 -0.5*mean(1, 0.6)=-0.4 -> 1.
    assert greedy_group_select(H, S, 1.0, 2.0, 3).tolist() == [0, 3, 1]


def test_negative_alpha_flips_later_picks():
    # alpha < 0 turns the argmin into the argmax of s * mean(...) after the first pick.
    # With {0}, tau 1: products 0, -0.5, -0.32, times -1 -> 0, 0.5, 0.32: argmin is x1.
    assert greedy_group_select(H, S, -1.0, 1.0, 2).tolist() == [0, 1]


def test_ties_go_to_the_lowest_index():
    h = np.tile(np.array([[0.5, 0.5]], dtype=np.float32), (5, 1))
    s = np.array([0.3, -1.0, 0.2, -1.0, -1.0], dtype=np.float32)
    assert greedy_group_select(h, s, 1.0, 1.0, 5).tolist()[:3] == [1, 3, 4]


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(2, 25)), int(rng.integers(2, 12))
    h = rng.standard_normal((n, d)).astype(np.float32)
    h *= (rng.uniform(0.3, 1.0, n) / np.linalg.norm(h, axis=1))[:, None].astype(np.float32)
    s = rng.standard_normal(n).astype(np.float32)
    alpha = float(rng.choice([0.7, 1.3, -0.8]))
    tau = float(rng.choice([0.5, 1.0, 2.5]))
    quota = int(rng.integers(0, n + 1))
    got = greedy_group_select(h, s, alpha, tau, quota)
    assert got.dtype == np.int64
    assert got.tolist() == brute_force(h, s, alpha, tau, quota)


def test_quota_bounds_and_order_is_choice_order():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((30, 4)).astype(np.float32)
    s = rng.standard_normal(30).astype(np.float32)
    full = greedy_group_select(h, s, 1.0, 1.0, 30)
    assert sorted(full.tolist()) == list(range(30))
    assert greedy_group_select(h, s, 1.0, 1.0, 10).tolist() == full[:10].tolist()  # a prefix
    assert greedy_group_select(h, s, 1.0, 1.0, 0).size == 0
    with pytest.raises(ValueError):
        greedy_group_select(h, s, 1.0, 1.0, 31)
    with pytest.raises(GMError):
        greedy_group_select(h, s, 1.0, 0.0, 3)


def test_independent_of_memory_layout():
    """The same cluster copied to differently aligned or strided memory gives the same picks."""
    rng = np.random.default_rng(1)
    n, d = 700, 48
    h = rng.standard_normal((n, d)).astype(np.float32) / 8
    s = rng.standard_normal(n).astype(np.float32)
    want = greedy_group_select(h, s, 0.9, 1.1, 350)
    raw = np.zeros(n * d * 4 + 64, dtype=np.uint8)
    for offset in (4, 8, 12, 36):
        shifted = np.frombuffer(raw[offset : offset + n * d * 4].data, dtype=np.float32).reshape(n, d)
        shifted[:] = h
        assert greedy_group_select(shifted, s, 0.9, 1.1, 350).tolist() == want.tolist()
    wide = np.zeros((n, 2 * d), dtype=np.float32)
    wide[:, ::2] = h
    assert greedy_group_select(wide[:, ::2], s, 0.9, 1.1, 350).tolist() == want.tolist()


def test_memory_is_linear_in_cluster_size():
    rng = np.random.default_rng(2)
    n, d = 4000, 8
    h = rng.standard_normal((n, d)).astype(np.float32)
    s = rng.standard_normal(n).astype(np.float32)
    tracemalloc.start()
    greedy_group_select(h, s, 1.0, 1.0, 50)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, peak  # an n x n float64 relation matrix would be 128 MB
