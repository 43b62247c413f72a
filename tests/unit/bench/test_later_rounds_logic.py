"""examples/benchmark/later_rounds_logic.py: the round-2 checkpoint, stage flags, overlap, LR check, pairing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples" / "benchmark"))

from later_rounds_logic import (  # noqa: E402
    jaccard,
    learning_rates,
    paired_by_seed,
    pick_iteration,
    ratio,
    schedule_check,
    stage_iters_flag,
    with_flag,
)

from megatron_gm.errors import GMError  # noqa: E402
from megatron_gm.megatron.args import stage_plan  # noqa: E402


def test_pick_iteration_nearest_three_quarters_inside_the_stage():
    saved = [632, 948, 1264, 1267]
    assert pick_iteration(saved, 422, 1267) == 948  # 0.75 * 1267 = 950.25
    assert pick_iteration([138, 207, 276, 279], 93, 279) == 207  # the quick run's
    assert pick_iteration(saved, 422, 1267, share=0.99) == 1264  # never the stage's end itself
    assert pick_iteration([10, 30], 0, 40, share=0.5) == 10  # a tie: the earlier one
    assert pick_iteration(saved, 422, 1267, want=632) == 632
    with pytest.raises(GMError, match="--at-iteration 1267"):
        pick_iteration(saved, 422, 1267, want=1267)
    with pytest.raises(GMError, match="no checkpoint saved strictly inside"):
        pick_iteration([422, 1267], 422, 1267)


def test_stage_flags_start_a_new_stage_at_the_round():
    flag = stage_iters_flag([422], 948, 1267)
    assert flag == "422,948"
    plan = stage_plan(2, flag, 1267)  # how pretrain_gpt_gm.py reads --gm-stage 2 --gm-stage-iters
    assert (plan.start, plan.end, plan.staged) == (948, 1267, True)
    assert stage_plan(1, flag, 1267).end == 948
    with pytest.raises(GMError):
        stage_iters_flag([422], 400, 1267)
    with pytest.raises(GMError):
        stage_iters_flag([422], 1267, 1267)
    args = ["--gm-stage", "2", "--gm-stage-iters", "422,", "--x"]
    want = ["--gm-stage", "2", "--gm-stage-iters", "422,948", "--x"]
    assert with_flag(args, "--gm-stage-iters", flag) == want
    with pytest.raises(ValueError):
        with_flag(args, "--missing", "1")


def test_jaccard():
    assert jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 4)
    assert jaccard([1, 2], [1, 2]) == 1.0
    assert jaccard([1], [2]) == 0.0
    assert jaccard([], []) == 1.0


LOG = """
 [t] iteration      949/    1267 | consumed samples: 1 | learning rate: 3.000000E-03 | lm loss: 5.1E+00 |
 [t] iteration     1000/    1267 | consumed samples: 2 | learning rate: 3.000000E-03 | lm loss: 5.0E+00 |
 [t] iteration     1050/    1267 | consumed samples: 3 | learning rate: 2.744000E-03 | lm loss: 5.0E+00 |
"""


def test_schedule_check_compares_the_logged_learning_rates():
    lrs, total = learning_rates(LOG)
    assert total == 1267 and lrs == {949: 3e-3, 1000: 3e-3, 1050: 2.744e-3}
    ref = {900: 3e-3, 1000: 3e-3, 1050: 2.744e-3}
    ok = schedule_check(lrs, total, ref, 948, 1267)
    assert ok["ok"] and ok["compared_iterations"] == 2 and ok["first_logged_iteration"] == 949
    restarted = schedule_check({**lrs, 1000: 1e-4}, total, ref, 948, 1267)  # warmup again: LR differs
    assert not restarted["ok"] and restarted["max_relative_lr_difference"] > 0.9
    assert not schedule_check(lrs, total, ref, 900, 1267)["ok"]  # did not resume where asked
    assert not schedule_check(lrs, 2000, ref, 948, 1267)["ok"]  # another --train-iters
    assert not schedule_check({}, None, ref, 948, 1267)["ok"]


def test_paired_by_seed_uses_the_seeds_both_have():
    d = paired_by_seed([1.0, None, 3.0], [2.0, 1.0, 2.5])
    assert d["per_seed"] == [-1.0, 0.5] and d["seeds"] == [0, 2] and (d["wins"], d["n"]) == (1, 2)
    assert paired_by_seed([None], [1.0]) is None
    up = paired_by_seed([0.5, 0.4], [0.3, 0.6], higher_is_better=True)  # Spearman: higher wins
    assert up["wins"] == 1 and up["mean"] == pytest.approx(0.0)
    assert ratio(1.0, 4.0) == 0.25 and ratio(None, 1.0) is None and ratio(1.0, 0.0) is None
