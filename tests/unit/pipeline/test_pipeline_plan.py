"""The plan, presets, config checks, state file and dry-run (no phase runs here)."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_gm.errors import GMError
from megatron_gm.pipeline.cli import main as cli_main
from megatron_gm.pipeline.config import PipelineConfig
from megatron_gm.pipeline.estimate import estimate_plan
from megatron_gm.pipeline.plan import build_plan, by_name, load_dir
from megatron_gm.pipeline.presets import PRESETS, preset
from megatron_gm.pipeline.run import open_run
from megatron_gm.pipeline.state import RunState

ROOT = Path(__file__).resolve().parents[3]


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_plan_chains_stages_and_twin(tmp_path):
    cfg = preset("tiny")
    cfg.stages, cfg.data_path = 3, "/data/pool_text_document"
    phases = build_plan(cfg, tmp_path, "/ref.jsonl")
    names = [p.name for p in phases]
    assert names == [
        "stage0.pretrain", "stage0.oracle", "stage0.influence", "stage1.select",
        "stage1.pretrain", "stage1.oracle", "stage1.influence", "stage2.select", "stage2.pretrain",
        "random.stage1.select", "random.stage1.pretrain", "random.stage2.select", "random.stage2.pretrain",
    ]  # fmt: skip
    seen: set[str] = set()
    for p in phases:  # dependency order: every dependency comes earlier
        assert set(p.deps) <= seen, p.name
        seen.add(p.name)
    ph = by_name(phases)
    out = tmp_path.resolve()
    # each stage's outputs live in its own folder; a stage trains on the selection made for it
    assert _arg(ph["stage0.oracle"].args, "--load") == str(out / "stage0" / "checkpoints")
    assert _arg(ph["stage0.influence"].args, "--oracle") == str(out / "stage0" / "oracle")
    assert _arg(ph["stage1.select"].args, "--gm-influence-model") == str(out / "stage0" / "influence")
    assert _arg(ph["stage1.select"].args, "--output") == str(out / "stage1" / "selection")
    assert _arg(ph["stage1.pretrain"].args, "--gm-selection") == str(out / "stage1" / "selection")
    assert "--gm-selection" not in ph["stage0.pretrain"].args
    # one LR schedule over all stages; each stage stops (and must be checkpointed) at its own end
    assert {_arg(ph[f"stage{s}.pretrain"].args, "--train-iters") for s in range(3)} == {"450"}
    assert [ph[f"stage{s}.pretrain"].env["GM_EXPECT_ITER"] for s in range(3)] == ["150", "300", "450"]
    assert _arg(ph["stage2.pretrain"].args, "--gm-stage") == "2"
    assert ph["stage2.pretrain"].env["GM_INIT_CKPT"] == str(out / "stage1" / "checkpoints")
    # the twin: random pick from the main run's scores (same clusters and budget), its own checkpoints
    tw = ph["random.stage2.select"]
    assert _arg(tw.args, "--gm-select-method") == "random"
    assert _arg(tw.args, "--scores-from") == str(out / "stage2" / "selection.scores")
    assert tw.deps == ["stage2.select"]
    assert ph["random.stage1.pretrain"].env["GM_INIT_CKPT"] == str(out / "stage0" / "checkpoints")
    assert ph["random.stage2.pretrain"].env["GM_INIT_CKPT"] == str(out / "random" / "stage1" / "checkpoints")
    assert set(ph["random.stage2.pretrain"].deps) == {"random.stage2.select", "random.stage1.pretrain"}
    # artifacts that are complete once their manifest exists
    assert ph["stage1.select"].complete_marker == str(out / "stage1" / "selection" / "manifest.json")


def test_bootstrap_round(tmp_path):
    """docs/method.md step 3: beam-search with the first model, probe those trajectories from the same
    checkpoint, retrain on both stores; the selection uses the retrained model."""
    cfg = preset("test")
    cfg.override("bootstrap.beams_per_tail=4")
    ph = by_name(build_plan(cfg, tmp_path))
    out = tmp_path.resolve() / "stage0"
    assert [n for n in ph if n.startswith("stage0.")] == [
        "stage0.pretrain", "stage0.oracle", "stage0.influence", "stage0.bootstrap",
        "stage0.oracle_bootstrap", "stage0.influence_bootstrap",
    ]  # fmt: skip
    bs, ob, ib = ph["stage0.bootstrap"], ph["stage0.oracle_bootstrap"], ph["stage0.influence_bootstrap"]
    assert _arg(bs.args, "--model") == str(out / "influence") and _arg(bs.args, "--beams-per-tail") == "4"
    assert bs.launcher == "single" and bs.script == "slurm/bootstrap.sbatch"
    assert _arg(ob.args, "--gm-oracle-trajectory-file") == str(out / "bootstrap")
    assert _arg(ob.args, "--load") == str(out / "checkpoints") and "--gm-oracle-trajectories" not in ob.args
    i = ib.args.index("--oracle")
    assert ib.args[i + 1 : i + 3] == [str(out / "oracle"), str(out / "oracle_bootstrap")]
    assert ph["stage1.select"].deps == ["stage0.influence_bootstrap"]
    assert _arg(ph["stage1.select"].args, "--gm-influence-model") == str(out / "influence_bootstrap")


def test_bootstrap_reads_the_selections_pool_embedding_cache(tmp_path):
    """Every bootstrap is passed the selection's pool-embedding cache (the tool ignores it for a fine-tuned
    model) and keys it as the selection does: same threads here, same default batch and shard size."""
    import dataclasses

    from megatron_gm.influence.bootstrap import BootstrapConfig
    from megatron_gm.influence.cli import bootstrap_parser
    from megatron_gm.selection.config import SelectConfig

    cfg = preset("test")
    cfg.stages = 3
    cfg.override("bootstrap.beams_per_tail=4")
    cache = str(tmp_path.resolve() / "embeddings")

    def flag(args: list[str]) -> str | None:
        return _arg(args, "--embed-cache") if "--embed-cache" in args else None

    for setting, want in (("", cache), (str(tmp_path / "shared"), str(tmp_path / "shared")), ("none", None)):
        cfg.select.embed_cache = setting
        ph = by_name(build_plan(cfg, tmp_path))
        for s in (0, 1):
            bs, sel = ph[f"stage{s}.bootstrap"].args, ph[f"stage{s + 1}.select"].args
            assert flag(bs) == flag(sel) == want
            assert bootstrap_parser().parse_args(bs).embed_cache == (want or "")
            assert _arg(bs, "--threads") == _arg(sel, "--threads") == "1"
    boot = {f.name: f.default for f in dataclasses.fields(BootstrapConfig)}
    sel = {f.name: f.default for f in dataclasses.fields(SelectConfig)}
    assert boot["embed_batch_size"] == sel["batch_size"] == 32
    assert boot["embed_cache_shard_size"] == sel["shard_size"] == 1000


def test_one_stage_is_just_pretraining(tmp_path):
    cfg = preset("test")
    cfg.stages = 1
    assert [p.name for p in build_plan(cfg, tmp_path)] == ["stage0.pretrain"]


def test_load_dir_prefers_own_checkpoint(tmp_path):
    cfg = preset("test")
    ph = by_name(build_plan(cfg, tmp_path))["stage1.pretrain"]
    own, prev = Path(ph.env["GM_CKPT_DIR"]), Path(ph.env["GM_INIT_CKPT"])
    assert load_dir(ph) == str(prev)  # first start: the previous stage's checkpoint
    own.mkdir(parents=True)
    (own / "latest_checkpointed_iteration.txt").write_text("12")
    assert load_dir(ph) == str(own)  # requeued / resumed: its own


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    preset(name).validate(need_data=False)


@pytest.mark.parametrize(
    "assignment, match",
    [
        ("train.stage_iters", "expected section.field=value"),
        ("nope.x=1", "no section 'nope'"),
        ("train.nope=1", "unknown field"),
        ("train.stage_iters=ten", "not a valid int"),
        ("random_twin=maybe", "not a valid bool"),
    ],
)
def test_bad_overrides(assignment, match):
    with pytest.raises(GMError, match=match):
        preset("tiny").override(assignment)


def test_overrides_and_validation():
    cfg = preset("tiny")
    cfg.override("train.stage_iters=7")
    cfg.override("select.ratio=0.25")
    cfg.override("train.extra_args=--foo 1 --bar")
    cfg.override("random_twin=no")
    assert (cfg.train.stage_iters, cfg.select.ratio, cfg.random_twin) == (7, 0.25, False)
    assert cfg.train.extra_args == ["--foo", "1", "--bar"]
    cfg.override("select.ratio=1.5")
    with pytest.raises(GMError, match="select.ratio"):
        cfg.validate(need_data=False)
    cfg = preset("tiny")
    with pytest.raises(GMError, match="no --data-path"):
        cfg.validate()
    cfg.data_path = "/nonexistent/pool_text_document"
    with pytest.raises(GMError, match="preprocess the pool"):
        cfg.validate()


def test_run_folder_refuses_another_config(tmp_path):
    cfg = preset("test")
    open_run(tmp_path / "run", cfg)
    open_run(tmp_path / "run", cfg)  # same config: continues
    cfg2 = preset("test")
    cfg2.random_twin = True  # the twin may be switched on later
    open_run(tmp_path / "run", cfg2)
    cfg2.train.lr = 0.5
    with pytest.raises(GMError, match="another config.*train.lr"):
        open_run(tmp_path / "run", cfg2)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    with pytest.raises(GMError, match="not a pipeline run"):
        open_run(tmp_path / "other", cfg)


def test_state_transitions(tmp_path):
    st = RunState(tmp_path / "state.json")
    assert st.status("a") == "pending" and not st.is_done("a")
    st.submitted("a", "17")
    st.begin("a", "17")
    st.end("a", "interrupted", 143)
    st.begin("a", "17")
    st.end("a", "done")
    rec = st.phases()["a"]
    assert rec["status"] == "done" and rec["attempts"] == 2 and rec["job_id"] == "17"
    assert rec["seconds"] >= rec["last_seconds"] >= 0
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(GMError, match="corrupt state file"):
        st.status("a")


def _hammer(path: str, worker: int, n: int) -> None:
    st = RunState(path)
    for i in range(n):
        st.begin(f"p{i % 3}")
        st.end(f"p{i % 3}", "done")


def test_state_updates_from_many_processes_are_not_lost(tmp_path):
    path = str(tmp_path / "state.json")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(path, w, 30)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    phases = RunState(path).phases()
    assert sum(r["attempts"] for r in phases.values()) == 4 * 30


def test_state_cli(tmp_path):
    f = str(tmp_path / "s.json")
    py = [sys.executable, "-m", "megatron_gm.pipeline.state", "--file", f]
    subprocess.run([*py, "begin", "stage0.pretrain", "--job-id", "5"], check=True, cwd=ROOT)
    subprocess.run([*py, "done", "stage0.pretrain"], check=True, cwd=ROOT)
    r = subprocess.run(
        [*py, "status", "stage0.pretrain"], check=True, cwd=ROOT, capture_output=True, text=True
    )
    assert r.stdout.strip() == "done"
    assert json.loads(Path(f).read_text())["phases"]["stage0.pretrain"]["job_id"] == "5"


def test_estimate_scales_with_work():
    cfg = preset("small")
    cfg.data_path = "/nonexistent"
    base = {e.phase: e for e in estimate_plan(cfg, build_plan(cfg, "/tmp/x"))[0]}
    cfg.train.stage_iters *= 2
    cfg.oracle.trajectories *= 2
    more = {e.phase: e for e in estimate_plan(cfg, build_plan(cfg, "/tmp/x"))[0]}
    assert more["stage0.pretrain"].flops == pytest.approx(2 * base["stage0.pretrain"].flops, rel=0.05)
    # one reference pass for the checkpoint is shared by all trajectories: not quite proportional
    assert more["stage0.oracle"].flops == pytest.approx(2 * base["stage0.oracle"].flops, rel=1e-4)
    assert all(e.seconds > 0 for e in base.values())
    # a 125M model for 5k iterations of 256 x 1024 tokens: ~6 * 1.25e8 * 1.3e9 ~ 1e18 FLOPs
    assert 5e17 < base["stage0.pretrain"].flops < 3e18


def test_dry_run_prints_plan_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(["--preset", "small", "--stages", "3", "--mode", "slurm", "--out", str(out), "--dry-run",
                   "--set", "launch.partition=gpu"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert not out.exists()
    for name in ("stage0.pretrain", "stage1.select", "stage2.pretrain", "stage1.oracle"):
        assert name in text
    assert "est. FLOPs" in text and ("EFLOP" in text or "PFLOP" in text)
    assert "--dependency=afterok:<stage0.influence>" in text
    assert "--partition=gpu" in text and "--gpus-per-node=8" in text and "--requeue" in text
    assert "slurm/pretrain_stage.sbatch" in text and "--signal=B:USR1@120" in text


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["--out", str(tmp_path / "r"), "--preset", "huge"]) == 2
    assert "unknown --preset 'huge'" in capsys.readouterr().err
    assert cli_main(["--out", str(tmp_path / "r")]) == 2
    assert "no --data-path" in capsys.readouterr().err
    assert cli_main(["--out", str(tmp_path / "r"), "--report"]) == 2


def test_from_dict_roundtrip():
    cfg = preset("medium")
    again = PipelineConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_complete_artifacts_are_not_rerun(tmp_path):
    """A phase that died after writing its artifact (marker there, or the stage's checkpoint at its end)
    counts as complete; a stage checkpointed mid-way does not."""
    from megatron_gm.pipeline.local import is_complete

    ph = by_name(build_plan(preset("test"), tmp_path))
    pre, sel = ph["stage1.pretrain"], ph["stage1.select"]
    assert not is_complete(pre) and not is_complete(sel)
    ckpt = Path(pre.env["GM_CKPT_DIR"])
    ckpt.mkdir(parents=True)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("12\n")
    assert not is_complete(pre)  # mid-stage (the stage ends at 16)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("16\n")
    assert is_complete(pre)
    Path(sel.complete_marker).parent.mkdir(parents=True)
    Path(sel.complete_marker).write_text("{}")
    assert is_complete(sel)


def test_rerun_without_preset_uses_the_saved_config(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = preset("test")
    cfg.train.stage_iters = 5
    open_run(out, cfg)
    assert cli_main(["--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "preset test" in text and "--train-iters 10" in text


def test_report_reads_megatron_losses_and_times(tmp_path):
    from megatron_gm.pipeline.report import write_report

    cfg = preset("test")
    cfg.random_twin = True
    phases = build_plan(cfg, tmp_path)
    st = open_run(tmp_path, cfg)
    logs = tmp_path / "logs"
    line = (" [2026-11-26 23:06:03.668011] iteration {i:8d}/      16 | consumed samples:          120 | "
            "elapsed time per iteration (ms): 854.7 | learning rate: 8.3E-04 | global batch size:     8 | "
            "lm loss: {loss:E} | loss scale: 1.0 |")  # fmt: skip
    valid = " validation loss at iteration {i} on validation set | lm loss value: {loss:E} | lm loss PPL: 3.9E+03 | "
    (logs / "stage0.pretrain.log").write_text("\n".join([line.format(i=4, loss=7.5), line.format(i=8, loss=7.0),
                                                         valid.format(i=8, loss=6.9)]))  # fmt: skip
    # Slurm attempts: the requeued one's log is read after the first
    (logs / "stage1.pretrain.41.log").write_text(line.format(i=12, loss=6.5))
    (logs / "random.stage1.pretrain.43.log").write_text(valid.format(i=16, loss=6.7))
    st.begin("stage0.pretrain")
    st.end("stage0.pretrain", "done", cpu_seconds=3.5)
    text = write_report(tmp_path, phases, st)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["losses"]["0"]["main"] == {
        "valid_iter": 8,
        "valid_loss": 6.9,
        "train_iter": 8,
        "train_loss": 7.0,
    }
    assert (
        rep["losses"]["1"]["main"]["train_loss"] == 6.5 and rep["losses"]["1"]["main"]["valid_loss"] is None
    )
    assert rep["losses"]["1"]["random"]["valid_loss"] == 6.7
    assert "    1            -       6.7000" in text and "stage1.select" in text
    assert (tmp_path / "report.txt").read_text() == text


def test_estimate_skips_the_pool_embedding_after_the_first_round():
    cfg = preset("tiny")
    cfg.data_path = "/nonexistent"
    est = {e.phase: e for e in estimate_plan(cfg, build_plan(cfg, "/tmp/x"))[0]}
    assert est["stage2.select"].flops < 0.01 * est["stage1.select"].flops
    assert "cached embeddings" in est["stage2.select"].note
    cfg.select.embed_cache = "none"
    est = {e.phase: e for e in estimate_plan(cfg, build_plan(cfg, "/tmp/x"))[0]}
    assert est["stage2.select"].flops == pytest.approx(est["stage1.select"].flops)


@pytest.mark.parametrize(("probe", "expect"), [(0, 30000), (120, 120)])
def test_bootstrap_probe_count_reaches_the_tool(tmp_path, probe, expect):
    """bootstrap.probe_count=0 is documented as the whole pool: the tool must search all of it."""
    import numpy as np

    from megatron_gm.influence.bootstrap import BootstrapConfig, probing_pool
    from megatron_gm.influence.cli import bootstrap_parser

    cfg = preset("test")
    cfg.override("bootstrap.beams_per_tail=4")
    cfg.override(f"bootstrap.probe_count={probe}")
    args = bootstrap_parser().parse_args(by_name(build_plan(cfg, tmp_path))["stage0.bootstrap"].args)
    bc = BootstrapConfig(
        model=args.model, data_path=args.data_path, output=args.output, probe_count=args.probe_count
    )
    pool = probing_pool(bc, 30000)  # more than the tool's default of 20,000: the flag must reach it
    assert pool.size == expect and np.all(np.diff(pool) > 0) and pool[-1] < 30000


def test_wsd_schedule_and_eval_pack_flags(tmp_path):
    cfg = preset("test")  # 2 stages x 8 iterations
    for s in (
        "train.lr_decay_style=WSD",
        "train.wsd_cooldown=0.25",
        "train.eval_pack=/p.npz",
        "train.eval_pack_points=2",
    ):
        cfg.override(s)
    cfg.validate(need_data=False)
    args = by_name(build_plan(cfg, tmp_path))["stage1.pretrain"].args
    assert _arg(args, "--lr-decay-style") == "WSD" and _arg(args, "--lr-decay-iters") == "16"
    assert _arg(args, "--lr-wsd-decay-iters") == "4" and _arg(args, "--lr-wsd-decay-style") == "linear"
    assert _arg(args, "--gm-eval-pack") == "/p.npz" and _arg(args, "--gm-eval-points") == "2"
    cfg.override("train.lr_decay_style=linear")
    with pytest.raises(GMError, match="lr_decay_style must be cosine or WSD"):
        cfg.validate(need_data=False)


def test_first_stage_of_its_own_length(tmp_path):
    """A short random stage 0, then equal selected stages: boundaries as --gm-stage-iters lists them."""
    cfg = preset("test")
    cfg.stages = 3
    cfg.override("train.first_stage_iters=5")  # stages end at 5, 13, 21 (stage_iters 8)
    ph = by_name(build_plan(cfg, tmp_path))
    args = ph["stage1.pretrain"].args
    assert _arg(args, "--train-iters") == "21" and _arg(args, "--gm-stage-iters") == "5,13"
    assert [ph[f"stage{s}.pretrain"].env["GM_EXPECT_ITER"] for s in range(3)] == ["5", "13", "21"]
    from megatron_gm.megatron.args import stage_plan

    assert [(p.start, p.end) for p in (stage_plan(s, "5,13", 21) for s in range(3))] == [
        (0, 5),
        (5, 13),
        (13, 21),
    ]
    cfg.stages = 2  # one boundary: "5," (a bare "5" would mean stages of 5 iterations each)
    args = by_name(build_plan(cfg, tmp_path))["stage1.pretrain"].args
    assert _arg(args, "--gm-stage-iters") == "5," and _arg(args, "--train-iters") == "13"
    assert (stage_plan(1, "5,", 13).start, stage_plan(1, "5,", 13).end) == (5, 13)
    cfg.override("train.first_stage_iters=-1")
    with pytest.raises(GMError, match="first_stage_iters must be >= 0"):
        cfg.validate(need_data=False)
