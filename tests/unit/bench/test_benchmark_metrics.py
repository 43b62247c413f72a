"""examples/benchmark/metrics.py: token efficiency interpolation and seed aggregation (not the benchmark)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples" / "benchmark"))

from metrics import aggregate, curve_band, overhead_share, token_efficiency, tokens_to_reach, wins  # noqa: E402


def test_tokens_to_reach_interpolates_the_first_crossing():
    t, y = [0, 100, 200, 300], [10.0, 8.0, 6.0, 7.0]
    assert tokens_to_reach(t, y, 7.0) == pytest.approx(150.0)  # between 8 @100 and 6 @200
    assert tokens_to_reach(t, y, 8.0) == pytest.approx(100.0)
    assert tokens_to_reach(t, y, 11.0) == 0.0  # already there at the start
    assert tokens_to_reach(t, y, 5.0) is None  # never
    with pytest.raises(ValueError):
        tokens_to_reach([0, 0, 1], [3, 2, 1], 2.5)


def test_token_efficiency():
    t, y = [0, 100, 200], [10.0, 8.0, 6.0]
    e = token_efficiency(t, y, 7.0, 100.0)  # random needs 150 tokens for what the method did in 100
    assert e.value == pytest.approx(1.5) and not e.lower_bound
    e = token_efficiency(t, y, 6.0, 200.0)  # equal to random: 1
    assert e.value == pytest.approx(1.0)
    e = token_efficiency(t, y, 5.0, 200.0)  # better than random ever got: lower bound 200/200
    assert e.value == pytest.approx(1.0) and e.lower_bound
    e = token_efficiency(t, y, 9.0, 200.0)  # worse: random needs 50
    assert e.value == pytest.approx(0.25)


def test_aggregate_and_wins_and_band():
    a = aggregate([1.0, 2.0, 3.0, None, math.nan])
    assert (a.mean, a.lo, a.hi, a.n) == (2.0, 1.0, 3.0, 3)
    assert a.std == pytest.approx(1.0)  # sample std
    assert aggregate([4.0]).std == 0.0 and aggregate([]).n == 0
    assert wins([1.0, 2.0, 3.0], [1.5, 2.0, 2.5]) == (1, 3)
    x, mean, lo, hi = curve_band([([0, 10, 20], [5.0, 4.0, 3.0]), ([0, 10], [7.0, 2.0])])
    assert x.tolist() == [0.0, 10.0] and mean.tolist() == [6.0, 3.0]
    assert lo.tolist() == [5.0, 2.0] and hi.tolist() == [7.0, 4.0]
    assert overhead_share(25.0, 75.0) == pytest.approx(0.25)


def test_clean_share_maps_labels_by_document_id(tmp_path):
    """heldout.clean_share on a synthetic labels file (the real held-out file is never read by tests)."""
    import gzip

    import numpy as np
    from heldout import clean_share

    from megatron_gm.data.indexed import write_indexed_dataset

    ids = [f"doc-{i}" for i in range(6)]
    info = write_indexed_dataset(
        tmp_path / "pool", [[1, 2, 3]] * 6, tokenizer={"type": "NullTokenizer"}, source="t", ids=ids
    )
    with gzip.open(tmp_path / "pool_labels.tsv.gz", "wt") as f:
        f.write("id\tsource\tgroup\n")
        for i, g in enumerate("cnccnn"):  # doc-5 is left unlabelled
            if i < 5:
                f.write(f"doc-{i}\tsrc\t{'clean' if g == 'c' else 'noisy'}\n")
    sel = tmp_path / "sel"
    sel.mkdir()
    np.save(sel / "documents.npy", np.array([0, 2, 3], dtype=np.int64))
    out = clean_share(tmp_path, info.prefix, {"group": sel, "missing": tmp_path / "nope"})
    assert out["pool"]["clean_share"] == pytest.approx(3 / 6) and out["pool"]["labelled"] == pytest.approx(
        5 / 6
    )
    assert out["group"] == {"docs": 3, "clean_share": pytest.approx(1.0)}
    assert "missing" not in out


def test_matched_quality_efficiency():
    from metrics import matched_quality_efficiency

    # the method reaches random's final loss 6.0 (random used 200 tokens) at 150 tokens: 200 / 150
    e = matched_quality_efficiency([0, 100, 200], [10.0, 7.0, 5.0], 6.0, 200.0)
    assert e.value == pytest.approx(200 / 150) and not e.upper_bound
    e = matched_quality_efficiency([0, 100, 200], [10.0, 8.0, 7.0], 6.0, 200.0)  # never gets there
    assert e.value == pytest.approx(1.0) and e.upper_bound


def test_budget_efficiency_interpolates_in_log_tokens():
    from metrics import budget_efficiency

    tokens = [100.0, 150.0, 250.0]  # random at 1x, 1.5x and 2.5x of a method that trained 100 tokens
    losses = [4.0, 3.8, 3.5]
    e = budget_efficiency(tokens, losses, 3.9, 100.0)  # halfway from 4.0 to 3.8 in log tokens
    assert e.value == pytest.approx(math.sqrt(100 * 150) / 100) and e.label == "1.22"
    assert budget_efficiency(tokens, losses, 3.5, 100.0).value == pytest.approx(2.5)
    assert budget_efficiency(tokens, losses, 4.0, 100.0).value == pytest.approx(1.0)
    beyond = budget_efficiency(tokens, losses, 3.4, 100.0)
    assert beyond.value is None and beyond.label == "> 2.5" and beyond.bound == 2.5
    worse = budget_efficiency(tokens, losses, 4.1, 100.0)
    assert worse.value is None and worse.label == "< 1" and worse.bound == 1.0
    with pytest.raises(ValueError):
        budget_efficiency([100.0], [4.0], 3.9, 100.0)


def test_summarize_efficiency_and_censoring():
    from metrics import BudgetEfficiency, summarize_efficiency

    s = summarize_efficiency(
        [BudgetEfficiency(1.5, "1.50"), BudgetEfficiency(2.0, "2.00"), BudgetEfficiency(2.5, "2.50")]
    )
    assert s["per_seed"] == [1.5, 2.0, 2.5] and s["mean"] == pytest.approx(2.0) and s["censored"] == 0
    lo, hi = s["ci95"]
    assert 1.5 <= lo <= 2.0 <= hi <= 2.5
    c = summarize_efficiency([BudgetEfficiency(2.0, "2.00"), BudgetEfficiency(None, "> 2.5", 2.5)])
    assert c["per_seed"] == [2.0, "> 2.5"] and c["mean"] == "> 2.25" and c["censored"] == 1


def test_paired_differences():
    from metrics import paired

    p = paired([3.0, 3.1, 2.9], [3.2, 3.0, 3.0])
    assert p["per_seed"] == pytest.approx([-0.2, 0.1, -0.1]) and p["mean"] == pytest.approx(-0.2 / 3)
    assert (p["wins"], p["n"]) == (2, 3)
    assert p["ci95"][0] <= p["mean"] <= p["ci95"][1]
