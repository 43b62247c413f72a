"""The cost model (megatron_gm/pipeline/estimate.py): hand-computed FLOPs, the paper's Table 5, the dry-run."""

from __future__ import annotations

import re

import pytest

from megatron_gm.errors import GMError
from megatron_gm.pipeline.cli import main as cli_main
from megatron_gm.pipeline.config import GPTConfig, OracleSection, PipelineConfig
from megatron_gm.pipeline.estimate import (
    H100,
    PoolStats,
    cost_summary,
    estimate_phase,
    estimate_plan,
    reference_tokens,
)
from megatron_gm.pipeline.plan import build_plan
from megatron_gm.pipeline.presets import LAMBADA_REF, preset

# Table 5 of the paper (H100-hours at 1B-1x) and its whole-selection shares at the other scales
TABLE5_1B = {"pretraining": 0.900, "oracle": 0.045, "RDIM training": 0.010, "RDIM inference": 0.045}
SELECTION_SHARE = {"400m-4x": 0.171, "1b-1x": 0.100, "3b-1x": 0.058}


def _tiny_cfg(**oracle) -> PipelineConfig:
    """L=1, h=8, f=32, vocab 16, seq 4: 872 parameters a layer + 128 + 32 + 16 = 1,048 in all."""
    cfg = PipelineConfig(
        stages=3,
        random_twin=False,
        model=GPTConfig(num_layers=1, hidden_size=8, num_attention_heads=2, ffn_hidden_size=32, seq_length=4,
                          vocab_size=16),
        oracle=OracleSection(trajectories=2, T=1, ref_samples=3, **oracle),
    )  # fmt: skip
    cfg.data_path = "/nonexistent"
    return cfg


def _oracle(cfg: PipelineConfig, name: str) -> float:
    phase = next(p for p in build_plan(cfg, "/tmp/x") if p.name == name)
    return estimate_phase(cfg, phase, PoolStats(100, 1000, True), H100).flops


def test_oracle_flops_by_hand():
    assert _tiny_cfg().model.params() == 1048
    # a probe step: 4 tokens x 3 x (2 x 1048 + 4 x 1 layer x 4 positions x 8) = 12 x 2224 = 26,688
    # natural reference: 3 examples x 2 tokens x (2,096 + 4 x 2 x 8) = 6 x 2,160 = 12,960 a pass; one pass
    # after each of the 2 x T = 2 steps, and one for the checkpoint's loss: 3 passes
    natural = _tiny_cfg(ref_tokens_per_example=2)
    assert _oracle(natural, "stage0.oracle") == 2 * 26688 + 3 * 12960
    # packed: 3 windows of 4 tokens, each token 2,224 forward FLOPs -> 26,688 a pass
    assert _oracle(_tiny_cfg(ref_layout="packed"), "stage0.oracle") == 2 * 26688 + 3 * 26688
    # a later round probes half of round 1's two trajectories: one (1 step, 2 passes)
    natural.oracle.later_round_fraction = 0.5
    assert _oracle(natural, "stage1.oracle") == 26688 + 2 * 12960
    assert _oracle(natural, "stage0.oracle") == 2 * 26688 + 3 * 12960


def test_reference_length_is_measured_from_the_file(tmp_path):
    path = tmp_path / "ref.jsonl"
    # 3 chars a token under an 8k vocabulary; +1 for EOD: 29 chars -> 10.67 tokens, a 59-char record -> 20.67
    # (a context+target record counts context, a space and the target); seq 16 cuts the second into 2 windows
    path.write_text(
        '{"context": "' + "a" * 20 + '", "target": "' + "b" * 8 + '"}\n{"text": "' + "c" * 59 + '"}\n'
    )
    cfg = _tiny_cfg()
    cfg.model.seq_length = 16
    cfg.oracle.ref_data = str(path)
    total, per, how = reference_tokens(cfg)
    assert per == pytest.approx((29 / 3 + 1 + 59 / 3 + 1) / 3)
    assert total == pytest.approx(3 * per) and "ref.jsonl" in how
    cfg.oracle.ref_layout = "packed"
    assert reference_tokens(cfg)[:2] == (48.0, 16.0)


def _paper(scale: str):
    cfg = preset(f"paper-{scale}")
    phases = build_plan(cfg, "/tmp/x", cfg.oracle.ref_data)
    ests, hw, pool = estimate_plan(cfg, phases)
    assert hw is H100 and not pool.measured and pool.num_tokens == pytest.approx(2 * 2 * cfg.train.stage_iters
                                                                                   * 1024 * 2048)  # fmt: skip
    return cfg, cost_summary(phases, ests)


def test_paper_setting_agrees_with_table5_within_2x():
    assert LAMBADA_REF.is_file(), "the bundled prompt/target reference set stands in for FLAN"
    cfg, cost = _paper("1b-1x")
    assert cfg.stages == 2 and cfg.oracle.trajectories == 20000 and 2 * cfg.bootstrap.beams_per_tail == 20000
    assert 60 < reference_tokens(cfg)[1] < 120  # LAMBADA examples at their own length, not 2,048
    for kind, paper in TABLE5_1B.items():
        ours = cost.time_share(kind)
        assert paper / 2 <= ours <= 2 * paper, f"1B-1x {kind}: {ours:.3f} vs the paper's {paper}"
    for scale, paper in SELECTION_SHARE.items():
        ours = _paper(scale)[1].selection_time_share
        assert paper / 2 <= ours <= 2 * paper, f"{scale} selection: {ours:.3f} vs the paper's {paper}"


def test_selection_share_falls_with_scale_as_in_the_paper():
    shares = [_paper(s)[1].selection_time_share for s in ("400m-4x", "1b-1x", "3b-1x")]
    assert shares[0] > shares[1] > shares[2]


def test_frozen_encoder_embeds_the_pool_twice_not_every_round():
    cfg = preset("large")
    cfg.data_path = "/nonexistent"
    cfg.influence.freeze_encoder_after_first_round = False
    est = {e.phase: e for e in estimate_plan(cfg, build_plan(cfg, "/tmp/x"))[0]}
    assert est["stage3.select"].flops == pytest.approx(est["stage1.select"].flops)
    assert "fine-tuned" in est["stage1.influence"].note
    cfg.influence.freeze_encoder_after_first_round = True
    est = {e.phase: e for e in estimate_plan(cfg, build_plan(cfg, "/tmp/x"))[0]}
    # round 1 scores with its fine-tuned encoder, round 2 caches the frozen copy's embeddings, round 3 reads
    assert est["stage2.select"].flops == pytest.approx(est["stage1.select"].flops)
    assert est["stage3.select"].flops < 0.01 * est["stage1.select"].flops
    assert "heads only" in est["stage1.influence"].note and "fine-tuned" in est["stage0.influence"].note


def test_a_later_bootstrap_reads_its_probing_pool_from_the_pool_cache():
    """A bootstrap after a selection that cached the same frozen encoder's pool embeddings pays the beam
    search only. 100 documents of 10 tokens, MiniLM (22.7M parameters, d=384), T=1, 4 beams a tail:
    embedding 100 x 10 x 2 x 22.7M = 45.4 GFLOP, search 2 tails x 4 beams x 100 documents x 2 x 384."""
    embed, search = 45_400_000_000, 2 * 4 * 100 * 2 * 384

    def flops(cfg: PipelineConfig) -> dict[int, float]:
        pool = PoolStats(100, 1000, True)
        return {
            p.stage: estimate_phase(cfg, p, pool, H100).flops
            for p in build_plan(cfg, "/tmp/x")
            if p.kind == "bootstrap"
        }

    cfg = _tiny_cfg()  # fast mode; 4 stages: bootstraps at stages 0-2, stage 1's selection fills the cache
    cfg.stages = 4
    cfg.override("bootstrap.beams_per_tail=4")
    assert cfg.influence.mode == "fast" and cfg.bootstrap.probe_count == 0
    assert flops(cfg) == {0: embed + search, 1: search, 2: search}
    cfg.select.embed_cache = "none"
    assert flops(cfg) == {0: embed + search, 1: embed + search, 2: embed + search}
    cfg.select.embed_cache = ""
    cfg.launch.threads, cfg.launch.select_threads = 2, 1  # the cache is keyed by threads: another folder
    assert flops(cfg) == {0: embed + search, 1: embed + search, 2: embed + search}
    cfg.launch.select_threads = 0
    # full mode frozen after round 1: stage 1's selection scores with round 1's fine-tuned encoder (no
    # cache); stage 2's selection caches the frozen copy that stage 2's bootstrap uses
    cfg.influence.mode, cfg.influence.freeze_encoder_after_first_round = "full", True
    assert flops(cfg) == {0: embed + search, 1: embed + search, 2: search}
    cfg.influence.freeze_encoder_after_first_round = False
    assert flops(cfg) == {0: embed + search, 1: embed + search, 2: embed + search}


def test_dry_run_prints_every_share_and_ends_with_the_overhead(tmp_path, capsys):
    assert cli_main(["--preset", "large", "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    for kind in TABLE5_1B:
        assert any(line.startswith(kind) and line.endswith("%") for line in lines), kind
    m = re.fullmatch(r"overhead: (\d+\.\d)% of pretraining FLOPs", lines[-1])
    assert m and 0 < float(m.group(1)) < 100


def _args(phases, name: str) -> list[str]:
    return next(p for p in phases if p.name == name).args


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_later_rounds_probe_a_fraction_and_warm_start_on_the_frozen_encoder(tmp_path):
    cfg = preset("large")
    cfg.data_path = "/data/pool"
    assert cfg.oracle.later_round_fraction == 0.25 and cfg.influence.freeze_encoder_after_first_round
    phases = build_plan(cfg, tmp_path)
    assert _flag(_args(phases, "stage0.oracle"), "--gm-oracle-trajectories") == "20000"
    assert _flag(_args(phases, "stage1.oracle"), "--gm-oracle-trajectories") == "5000"
    assert _flag(_args(phases, "stage0.bootstrap"), "--beams-per-tail") == "10000"
    assert _flag(_args(phases, "stage2.bootstrap"), "--beams-per-tail") == "2500"
    first = _args(phases, "stage0.influence")
    assert _flag(first, "--mode") == "full" and "--init-from" not in first
    for name in ("stage1.influence", "stage1.influence_bootstrap"):
        args = _args(phases, name)
        assert _flag(args, "--mode") == "fast"
        assert _flag(args, "--init-from") == str(tmp_path.resolve() / "stage0" / "influence_bootstrap")
    assert _flag(_args(phases, "stage2.influence"), "--init-from").endswith("stage1/influence_bootstrap")
    assert "--gm-oracle-ref-layout" not in _args(phases, "stage0.oracle")  # natural: the tool's default
    # warm start without freezing keeps full mode; the old packed reference is passed on
    cfg.influence.freeze_encoder_after_first_round = False
    cfg.oracle.ref_layout = "packed"
    phases = build_plan(cfg, tmp_path)
    assert _flag(_args(phases, "stage1.influence"), "--mode") == "full"
    assert _flag(_args(phases, "stage1.influence"), "--init-from").endswith("stage0/influence_bootstrap")
    assert _flag(_args(phases, "stage1.oracle"), "--gm-oracle-ref-layout") == "packed"
    cfg.influence.warm_start = False
    assert "--init-from" not in _args(build_plan(cfg, tmp_path), "stage1.influence")


def test_bad_round_settings_are_refused():
    cfg = preset("large")
    cfg.oracle.later_round_fraction = 0
    with pytest.raises(GMError, match=r"oracle.later_round_fraction must be in \(0, 1\], got 0"):
        cfg.validate(need_data=False)
    cfg = preset("large")
    cfg.oracle.ref_layout = "windows"
    with pytest.raises(GMError, match="oracle.ref_layout must be natural or packed"):
        cfg.validate(need_data=False)


def test_large_preset_three_rounds_stay_under_ten_percent():
    cfg = preset("large")
    cfg.oracle.ref_data = str(LAMBADA_REF.with_name("ref_wikitext103_valid.jsonl.gz"))  # the pipeline default
    phases = build_plan(cfg, "/tmp/x", cfg.oracle.ref_data)
    assert sum(p.kind == "select" and p.branch == "main" for p in phases) == 3
    cost = cost_summary(phases, estimate_plan(cfg, phases)[0])
    assert 0.03 < cost.overhead_flops <= 0.10
    # the old setting (128 reference examples, every round at full size, re-embedding the pool) did not
    cfg.oracle.ref_samples, cfg.oracle.later_round_fraction = 128, 1.0
    cfg.influence.freeze_encoder_after_first_round = False
    assert cost_summary(phases, estimate_plan(cfg, phases)[0]).overhead_flops > 0.3


def test_a_stage_zero_of_its_own_length_is_counted():
    cfg = _tiny_cfg()
    cfg.train.stage_iters, cfg.train.first_stage_iters, cfg.train.eval_iters = 10, 30, 0
    phases = {p.name: p for p in build_plan(cfg, "/tmp/x")}
    pool = PoolStats(100, 1000, True)
    # 30 vs 10 iterations of 8 x 4 tokens, 3 x 2,224 FLOPs a token
    assert estimate_phase(cfg, phases["stage0.pretrain"], pool, H100).flops == 30 * 8 * 4 * 3 * 2224
    assert estimate_phase(cfg, phases["stage1.pretrain"], pool, H100).flops == 10 * 8 * 4 * 3 * 2224


def test_later_rounds_hold_out_the_same_fraction_for_validation(tmp_path):
    """An explicit val_count of 100 with a quarter of the trajectories in round 2 must not ask for more
    validation trajectories than the round has (60 + 2 x 8 here): round 2 holds out 25."""
    cfg = preset("tiny")
    for a in ("oracle.trajectories=240", "bootstrap.beams_per_tail=30", "influence.val_count=100",
              "oracle.later_round_fraction=0.25"):  # fmt: skip
        cfg.override(a)
    phases = build_plan(cfg, tmp_path)
    for name in ("stage0.influence", "stage0.influence_bootstrap"):
        assert _flag(_args(phases, name), "--val-count") == "100"
    for name in ("stage1.influence", "stage1.influence_bootstrap"):
        assert _flag(_args(phases, name), "--val-count") == "25"
    assert _flag(_args(phases, "stage1.oracle"), "--gm-oracle-trajectories") == "60"
