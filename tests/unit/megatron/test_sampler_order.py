"""The selection sampler's order: passes, DP slices, resume; stage plans; the --gm-* argument group."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from megatron_gm.errors import GMError
from megatron_gm.megatron.args import add_gm_args, extra_args_provider, stage_plan
from megatron_gm.sampler import SamplerConfig, SelectionSampler, StageOrder


def _all_batches(n, seed, stage, mbs, dp, rank, consumed, total):
    cfg = SamplerConfig(n, seed, stage, mbs, dp, rank)
    return list(SelectionSampler(cfg, consumed, total))


def test_each_sample_once_per_pass_and_passes_reshuffled():
    n = 37
    order = StageOrder(n, seed=5, stage=2).samples(0, 4 * n + 9)
    passes = [order[p * n : (p + 1) * n] for p in range(4)]
    for p in passes:
        assert sorted(p.tolist()) == list(range(n))
    assert len({tuple(p.tolist()) for p in passes}) == 4  # a fresh shuffle every pass
    tail = order[4 * n :]
    assert len(set(tail.tolist())) == len(tail)  # partial last pass: no repeats either


def test_order_is_a_function_of_seed_stage_and_position():
    a = StageOrder(50, seed=1, stage=1).samples(0, 120)
    assert np.array_equal(a, StageOrder(50, seed=1, stage=1).samples(0, 120))
    assert not np.array_equal(a, StageOrder(50, seed=1, stage=2).samples(0, 120))
    assert not np.array_equal(a, StageOrder(50, seed=2, stage=1).samples(0, 120))
    # any window, computed alone, equals the slice of the whole order (random access across passes)
    o = StageOrder(50, seed=1, stage=1)
    assert np.array_equal(o.samples(73, 118), a[73:118])
    assert np.array_equal(o.samples(10, 30), a[10:30])


@pytest.mark.parametrize("dp,mbs", [(2, 2), (4, 1), (3, 2)])
def test_dp_slices_are_disjoint_and_interleave_to_the_single_rank_order(dp, mbs):
    n, total = 23, 96 * mbs
    single = [i for b in _all_batches(n, 7, 1, mbs * dp, 1, 0, 0, total) for i in b]
    per_rank = [_all_batches(n, 7, 1, mbs, dp, r, 0, total) for r in range(dp)]
    merged = []
    for step in range(len(per_rank[0])):
        for r in range(dp):
            merged.extend(per_rank[r][step])
    assert merged == single
    positions = [
        set(range(*SelectionSampler(SamplerConfig(n, 7, 1, mbs, dp, r), 0, total).batch_positions(j)))
        for r in range(dp)
        for j in range(len(per_rank[0]))
    ]
    assert sum(len(p) for p in positions) == len(set().union(*positions)) == total


def test_resume_continues_the_uninterrupted_order():
    n, mbs, dp, total = 19, 2, 2, 80
    for rank in range(dp):
        full = _all_batches(n, 3, 4, mbs, dp, rank, 0, total)
        for stop in (4, 12, 36):
            resumed = _all_batches(n, 3, 4, mbs, dp, rank, stop, total)
            assert resumed == full[stop // (mbs * dp) :]


def test_sampler_refuses_bad_offsets_and_empty_stages():
    cfg = SamplerConfig(10, 0, 0, 2, 2, 0)
    with pytest.raises(GMError, match="not a multiple"):
        SelectionSampler(cfg, 6, 40)
    with pytest.raises(GMError, match="nothing left"):
        SelectionSampler(cfg, 40, 40)
    with pytest.raises(GMError, match="fewer tokens than one sequence"):
        SelectionSampler(SamplerConfig(0, 0, 0, 2), 0, 8)
    with pytest.raises(GMError, match="data-parallel rank"):
        SelectionSampler(SamplerConfig(10, 0, 0, 2, 2, 2), 0, 8)


def test_stage_plans():
    assert (stage_plan(0, None, 100).start, stage_plan(0, None, 100).end) == (0, 100)
    p = stage_plan(2, "30", 100)
    assert (p.start, p.end, p.staged) == (60, 90, True)
    assert (stage_plan(3, "30", 100).start, stage_plan(3, "30", 100).end) == (90, 100)  # capped
    p = stage_plan(1, "10,25", 40)
    assert (p.start, p.end) == (10, 25)
    p = stage_plan(2, "10,25", 40)
    assert (p.start, p.end) == (25, 40)  # after the last boundary: to --train-iters
    for stage, spec, msg in [
        (1, None, "needs --gm-stage-iters"),
        (0, "10,5", "increasing"),
        (0, "x", "a number or a comma list"),
        (3, "10,25", "defines 3 stages"),
        (4, "30", "at or after --train-iters"),
        (-1, "5", "0 or more"),
    ]:
        with pytest.raises(GMError, match=msg):
            stage_plan(stage, spec, 100)


def test_argument_group_defaults_chaining_and_idempotence():
    def other(parser):
        parser.add_argument("--other-flag", type=int, default=3)
        return parser

    parser = extra_args_provider(other)(argparse.ArgumentParser())
    add_gm_args(parser)  # a second time: no conflict
    titles = [g.title for g in parser._action_groups]
    assert titles.count("megatron-gm (Group-MATES data selection)") == 1
    a = parser.parse_args([])
    assert (a.gm_selection, a.gm_stage, a.gm_stage_iters, a.gm_record_samples) == (None, 0, None, None)
    assert a.gm_data_fingerprint_check is True and a.other_flag == 3
    a = parser.parse_args(["--gm-stage", "2", "--gm-stage-iters", "5,9", "--no-gm-data-fingerprint-check"])
    assert (a.gm_stage, a.gm_stage_iters, a.gm_data_fingerprint_check) == (2, "5,9", False)
