"""Split-half reliability of oracle labels (megatron_gm/oracle/reliability.py), on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_gm.errors import GMError
from megatron_gm.oracle.reliability import Point, smallest_reliable, split_half, subset_labels


def test_subset_labels_weigh_examples_by_their_tokens():
    rows = np.zeros((1, 2, 2, 2))
    rows[0, 0] = [[2.0, 1.0], [6.0, 3.0]]  # step 0: (2 + 6) / (1 + 3) = 2.0
    rows[0, 1] = [[1.0, 1.0], [3.0, 3.0]]  # step 1: 4 / 4 = 1.0
    assert subset_labels(rows, np.array([0, 1])).tolist() == [[-1.0]]
    assert subset_labels(rows, np.array([1])).tolist() == [[-1.0]]  # 6/3 -> 3/3
    assert subset_labels(rows, np.array([0])).tolist() == [[-1.0]]  # 2/1 -> 1/1


def test_split_half_correlates_the_two_halves():
    # 3 trajectories of T=1; example 0 gives labels 1, 2, 3, example 1 gives 2, 4, 7
    rows = np.ones((3, 2, 2, 2))
    rows[:, 0, 0, 0], rows[:, 1, 0, 0] = 10.0, [11.0, 12.0, 13.0]
    rows[:, 0, 1, 0], rows[:, 1, 1, 0] = 20.0, [22.0, 24.0, 27.0]
    p = split_half(rows, size=1, splits=4)
    # Pearson by hand: deviations (-1, 0, 1) and (-7/3, -1/3, 8/3): 5 / sqrt(2 x 114/9) = 0.99340
    assert p.pearson == pytest.approx(5 / np.sqrt(2 * 114 / 9)) and p.pearson == pytest.approx(
        0.99340, abs=1e-5
    )
    assert p.pearson_std == pytest.approx(0.0) and p.spearman == pytest.approx(1.0) and p.splits == 4
    with pytest.raises(GMError, match="--sizes 2: each half needs 1..1 of the 2 reference examples"):
        split_half(rows, size=2, splits=1)


def test_smallest_reliable_size():
    pts = [Point(4, 0.5, 0, 0.5, 1), Point(8, 0.92, 0, 0.9, 1), Point(16, 0.95, 0, 0.9, 1)]
    assert smallest_reliable(pts) == 8 and smallest_reliable(pts, 0.99) is None
