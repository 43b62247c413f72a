"""megatron_gm/stats.py: bootstrap intervals on cases small enough to check by hand."""

import numpy as np
import pytest

from megatron_gm.stats import bootstrap_ci, spearman_ci


def test_bootstrap_ci_by_hand():
    assert bootstrap_ci([2.5, 2.5, 2.5]) == (2.5, 2.5)  # every resample has mean 2.5
    assert bootstrap_ci([7.0]) == (7.0, 7.0)
    lo, hi = bootstrap_ci([0.0, 1.0], n=4000, seed=1)  # resample means are 0, .5, .5, 1 (1/4, 1/2, 1/4)
    assert lo == 0.0 and hi == 1.0
    lo, hi = bootstrap_ci([0.0, 1.0], n=4000, seed=1, level=0.4)  # the middle 40% is all 0.5
    assert lo == hi == 0.5
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_spearman_ci_resamples_trajectories():
    pred = np.arange(20, dtype=float).reshape(4, 5)
    assert spearman_ci(pred, pred * 3 + 1) == (1.0, 1.0)  # monotone in every resample
    assert spearman_ci(pred, -pred) == (-1.0, -1.0)
    rng = np.random.default_rng(0)
    noisy = pred + rng.normal(0, 8, pred.shape)
    lo, hi = spearman_ci(pred, noisy, n=300)
    assert -1 <= lo < hi <= 1
