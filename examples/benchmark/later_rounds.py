#!/usr/bin/env python
"""Later selection rounds, full vs cheap (issue #13 item 3): a second round on a finished evidence run.

    .venv/bin/python examples/benchmark/later_rounds.py --evidence runs/evidence --out runs/levers   # resumable
    .venv/bin/python examples/benchmark/later_rounds.py --evidence runs/evidence --out runs/levers --report-only

Per seed, from group's stage-1 checkpoint nearest 3/4 of training (``--at-iteration``; a load folder of
symlinks, nothing copied, the evidence folder only read):
- one_round: no second round; the evidence's group run itself (stage 1 continued to the end on round 1's
  selection): its final evaluation is reused, nothing is retrained.
- full: round 2 like round 1: the same oracle trajectories (random + bootstrap) on the new checkpoint, the
  influence model trained from scratch, a group selection of the same share of the pool, then stage 2 (the
  rest of the run, the checkpoint's LR schedule continuing) on it.
- cheap: the pipeline's levers: ``oracle.later_round_fraction`` of the trajectories and bootstrap beams
  (plan.round_count), the influence model warm-started from round 1's (``influence.warm_start``); then
  selection and stage 2 as in full. (``influence.freeze_encoder_after_first_round`` changes nothing in
  fast mode: the encoder is frozen in every round.)
- cheap_cold (Spearman only): cheap's oracle stores, the model trained from scratch: separates the levers.
- restart (a control): stage 2 on round 1's selection. A new stage draws a new data order (and may repeat
  documents stage 1 trained on), which one_round's continuing stage does not: full and cheap are compared
  with it too, so that what a new selection changes is not confused with what restarting the stage does.
Measured: every model's Spearman on a common test store (oracle trajectories of another seed on the same
checkpoint), round 1's model as is ("stale") too; selection overlaps; the final evaluation pack of stage 2
vs one_round and the evidence's random twin (same tokens), paired by seed; the round's wall seconds and its
modelled FLOPs (megatron_gm/pipeline/estimate.py). Seeds run one after the other, each to its report.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_benchmark import ROOT, _phase, run_phases  # noqa: E402  (also sets up sys.path and warnings)

from megatron_gm.errors import GMError, cli_main  # noqa: E402

VARIANTS = {  # name -> (later_round_fraction, warm start from round 1's model); None: the defaults below
    "full": (1.0, False),
    "cheap": (None, True),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--evidence", required=True, help="a finished run_benchmark.py --out folder (only read)")
    p.add_argument("--out", required=True, help="this benchmark's folder (resumable)")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="seed indices (default: all the evidence's)"
    )
    p.add_argument("--at-iteration", type=int, default=None,
                   help="the stage-1 checkpoint round 2 starts from (default: the saved one nearest 3/4 of training)")  # fmt: skip
    p.add_argument("--fraction", type=float, default=0.25, help="cheap's oracle.later_round_fraction")
    p.add_argument("--test-trajectories", type=int, default=None,
                   help="random trajectories of the common test store (default: a quarter of round 1's)")  # fmt: skip
    p.add_argument(
        "--test-seed-offset", type=int, default=500, help="test store's oracle seed = round 1's + this"
    )
    p.add_argument("--no-cheap-cold", action="store_true", help="skip the cold-start model on cheap's stores")
    p.add_argument(
        "--no-restart", action="store_true", help="skip the control: round 1's selection as stage 2"
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the report from what is there")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile (for the report)")
    p.add_argument(
        "--results", default="", help="also copy results.json, report.md and the PNG to this folder"
    )
    return p


# --- the evidence run, read only -------------------------------------------------------------------------


def evidence_seeds(evidence: Path) -> list[int]:
    bench = evidence / "benchmark.json"
    groups = sorted(evidence.glob("seed*/group/config.json"))
    if not bench.is_file() or not groups:
        raise GMError(
            f"{evidence}: not an evidence benchmark folder (no benchmark.json or seed*/group/config.json); "
            "pass --evidence the --out folder of a finished examples/benchmark/run_benchmark.py run"
        )
    return sorted(int(p.parent.parent.name[4:]) for p in groups)


def group_config(group: Path):
    import logging

    from megatron_gm.pipeline.config import PipelineConfig

    # an evidence run's config.json may use the settings' old names: read as the new ones, without a warning
    # at every read (run_pipeline.py shows it when the evidence run itself continues)
    logging.getLogger("megatron_gm.pipeline.config").setLevel(logging.ERROR)
    return PipelineConfig.from_dict(json.loads((group / "config.json").read_text()))


def saved_iterations(ckpt: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in ckpt.glob("iter_*") if p.is_dir() and p.name[5:].isdigit())


def check_finished(group: Path, total: int) -> None:
    from megatron_gm.pipeline.plan import checkpoint_iteration

    ck = group / "stage1" / "checkpoints"
    if checkpoint_iteration(ck) != str(total) or not (ck / "gm_eval.jsonl").is_file():
        raise GMError(
            f"{ck}: group's stage 1 has not reached iteration {total} (with its gm_eval.jsonl); finish the "
            "evidence run first (rerun run_benchmark.py with its --out)"
        )


def link_load(load: Path, ckpt: Path, at: int) -> Path:
    """A Megatron load folder at iteration ``at`` of ``ckpt``: the tracker file and a symlink, no copy."""
    name = f"iter_{at:07d}"
    target = (ckpt / name).resolve()
    link = load / name
    load.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() != target:
        raise GMError(
            f"{link}: points at {link.resolve()}, not {target}; delete {load} (another --at-iteration?)"
        )
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)
    (load / "latest_checkpointed_iteration.txt").write_text(f"{at}\n")
    return load


def link_embeddings(src: Path, dst: Path) -> Path:
    """Selection's pool-embedding cache: the evidence's finished shards as symlinks in a folder of our own, so
    a selection run writes (a manifest, stale temporaries' cleanup) only here."""
    for folder in sorted(p for p in src.glob("*") if p.is_dir()):
        mine = dst / folder.name
        mine.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            if f.is_file() and not (mine / f.name).exists():
                (mine / f.name).symlink_to(f.resolve())
    return dst


# --- the phases ------------------------------------------------------------------------------------------


def at_stage(phase, stage: int):
    """The stage a phase belongs to: the cost model and round_count read it (oracle..influence of round 2 run
    on a stage-1 checkpoint, selection and pretraining are stage 2)."""
    return dataclasses.replace(phase, stage=stage)


def variant_config(cfg, fraction: float):
    """A later round's settings: ``fraction`` of the trajectories and beams (``plan.round_count``); the
    influence model's validation trajectories follow it through ``influence_args(..., stage=1)``."""
    c = copy.deepcopy(cfg)
    c.oracle.later_round_fraction = fraction
    return c


def stage2_phase(cfg, vdir: Path, sel: Path, load: Path, at: int, deps: tuple[str, ...] = ("select",)):
    """Stage 2 = iterations at..end on ``sel``: --gm-stage 2 with the boundaries (stage 0's end, at), the run's
    --train-iters and LR flags unchanged so the checkpoint's scheduler continues."""
    from later_rounds_logic import stage_iters_flag, with_flag

    from megatron_gm.pipeline.plan import pretrain_args

    ck = vdir / "stage2" / "checkpoints"
    ends = cfg.train.stage_ends(cfg.stages)
    total = ends[-1]
    args = with_flag(
        pretrain_args(cfg, 2, ck, sel), "--gm-stage-iters", stage_iters_flag(ends[:-1], at, total)
    )
    args += ["--data-cache-path", str(vdir.parent.parent / "data_cache")]  # Megatron's index cache: ours
    env = {"GM_CKPT_DIR": str(ck), "GM_INIT_CKPT": str(load), "GM_EXPECT_ITER": str(total)}
    return at_stage(_phase(cfg, "pretrain", "pretrain", args, list(deps), {"checkpoints": ck}, env=env), 2)


def round_phases(c, vdir: Path, load: Path, init: Path | None, embed_cache: Path | None, at: int) -> list:
    """Round 2 on the checkpoint in ``load`` as the pipeline plans a later round (build_plan), + stage 2."""
    from megatron_gm.pipeline.plan import bootstrap_args, influence_args, oracle_args, select_args

    ref = c.oracle.ref_data
    frozen = init is not None and c.influence.freeze_encoder_after_first_round
    o1, o2, m1, m2 = (
        vdir / "oracle",
        vdir / "oracle_bootstrap",
        vdir / "influence",
        vdir / "influence_bootstrap",
    )
    trajs, sel = vdir / "bootstrap", vdir / "stage2" / "selection"
    out = [
        at_stage(_phase(c, "oracle", "oracle", oracle_args(c, 1, load, o1, ref), [], {"oracle": o1}), 1),
        at_stage(_phase(c, "influence", "influence", influence_args(c, [o1], m1, init, frozen, 1), ["oracle"],
                        {"influence": m1}, marker=m1 / "manifest.json"), 1),
    ]  # fmt: skip
    model, last = m1, "influence"
    if c.bootstrap.beams_per_tail:
        out += [
            at_stage(_phase(c, "bootstrap", "bootstrap", bootstrap_args(c, m1, trajs, 1, embed_cache=embed_cache), ["influence"],
                            {"trajectories": trajs}, marker=trajs / "manifest.json"), 1),
            at_stage(_phase(c, "oracle_bootstrap", "oracle", oracle_args(c, 1, load, o2, ref, trajs), ["bootstrap"],
                            {"oracle": o2}), 1),
            at_stage(_phase(c, "influence_bootstrap", "influence", influence_args(c, [o1, o2], m2, init, frozen, 1),
                            ["oracle_bootstrap"], {"influence": m2}, marker=m2 / "manifest.json"), 1),
        ]  # fmt: skip
        model, last = m2, "influence_bootstrap"
    select = select_args(
        c, 2, sel, model=model, scores_from=None, method=c.select.method, embed_cache=embed_cache
    )
    out.append(at_stage(_phase(c, "select", "select", select, [last], {"selection": sel},
                               marker=sel / "manifest.json"), 2))  # fmt: skip
    return [*out, stage2_phase(c, vdir, sel, load, at)]


def test_phases(cfg, a, tdir: Path, load: Path) -> list:
    """The common test store: random trajectories of another oracle seed on the same checkpoint."""
    from megatron_gm.pipeline.plan import oracle_args

    c = copy.deepcopy(cfg)
    c.oracle.seed = cfg.oracle.seed + a.test_seed_offset
    c.oracle.trajectories = a.test_trajectories or max(1, round(cfg.oracle.trajectories / 4))
    store = tdir / "oracle"
    return [at_stage(_phase(c, "oracle", "oracle", oracle_args(c, 1, load, store, c.oracle.ref_data), [],
                            {"oracle": store}), 1)]  # fmt: skip


def cold_phases(c, sd: Path) -> list:
    """cheap's stores, the model trained from scratch (no warm start): Spearman only."""
    from megatron_gm.pipeline.plan import influence_args

    stores = [sd / "cheap" / "oracle"] + (
        [sd / "cheap" / "oracle_bootstrap"] if c.bootstrap.beams_per_tail else []
    )
    m = sd / "cheap_cold" / "influence_bootstrap"
    return [at_stage(_phase(c, "influence_bootstrap", "influence", influence_args(c, stores, m, stage=1), [],
                            {"influence": m}, marker=m / "manifest.json"), 1)]  # fmt: skip


def seed_plan(a, out: Path, k: int) -> dict:
    """Everything a seed runs: its folders, configs and phases (nothing is run or written but the links)."""
    group = Path(a.evidence) / f"seed{k}" / "group"
    cfg = group_config(group)
    ends = cfg.train.stage_ends(cfg.stages)
    from later_rounds_logic import pick_iteration

    at = pick_iteration(
        saved_iterations(group / "stage1" / "checkpoints"), ends[0], ends[-1], want=a.at_iteration
    )
    sd = out / f"seed{k}"
    load = sd / "load"
    from megatron_gm.pipeline.plan import embed_cache_dir

    embed_src = embed_cache_dir(cfg, group)  # the evidence's pool embeddings (None: off)
    embed = out / "embeddings" if embed_src is not None else None
    round1 = group / "stage0" / ("influence_bootstrap" if cfg.bootstrap.beams_per_tail else "influence")
    configs, phases = {}, {"test": test_phases(cfg, a, sd / "test", load)}
    for name, (fraction, warm) in VARIANTS.items():
        configs[name] = variant_config(cfg, a.fraction if fraction is None else fraction)
        phases[name] = round_phases(configs[name], sd / name, load, round1 if warm else None, embed, at)
    if not a.no_cheap_cold:
        phases["cheap_cold"] = cold_phases(configs["cheap"], sd)
    if not a.no_restart:  # round 1's selection as a new stage at ``at``: the same data-order restart
        phases["restart"] = [stage2_phase(cfg, sd / "restart", group / "stage1" / "selection", load, at, ())]
    return {"group": group, "cfg": cfg, "at": at, "total": ends[-1], "sd": sd, "load": load, "round1": round1,
            "configs": configs, "phases": phases, "embed": (embed_src, embed)}  # fmt: skip


def run_seed(a, out: Path, k: int) -> None:
    p = seed_plan(a, out, k)
    check_finished(p["group"], p["total"])
    link_load(p["load"], p["group"] / "stage1" / "checkpoints", p["at"])
    if p["embed"][1] is not None:
        link_embeddings(*p["embed"])
    t0 = time.monotonic()
    print(
        f"[levers] seed {k}: round 2 at iteration {p['at']} of {p['total']} ({', '.join(p['phases'])})",
        flush=True,
    )
    for name, phases in p["phases"].items():
        run_phases(f"seed {k}: {name}", p["sd"] / name, phases)
    from later_rounds_report import score_models

    score_models(p)
    print(f"[levers] seed {k}: done in {time.monotonic() - t0:.0f} s this call", flush=True)


SETTINGS = ("evidence", "at_iteration", "fraction", "test_trajectories", "test_seed_offset")


def check_run(out: Path, a) -> None:
    """run.json: what this folder was started with; a rerun must match it (--report-only takes it over)."""
    keys = SETTINGS
    want = {k: getattr(a, k) for k in keys}
    path = out / "run.json"
    if path.is_file() and a.report_only:
        have = json.loads(path.read_text())
        for k in keys:
            setattr(a, k, have.get(k, getattr(a, k)))
        return
    if path.is_file():
        have = json.loads(path.read_text())
        diff = [f"{k}: {have.get(k)!r} -> {want[k]!r}" for k in keys if have.get(k) != want[k]]
        if diff:
            raise GMError(
                f"{out}: was started with other settings ({'; '.join(diff)}); rerun with those or use another --out"
            )
        return
    if a.report_only:
        return
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**want, "argv": sys.argv[1:], "run_commit": commit}, indent=2) + "\n")


@cli_main
def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    evidence = Path(a.evidence).resolve()
    a.evidence = str(evidence)
    seeds = evidence_seeds(evidence)
    out = Path(a.out).resolve()
    check_run(out, a)  # --report-only: takes the run's settings over
    a.seeds = a.seeds if a.seeds is not None else seeds
    missing = [k for k in a.seeds if k not in seeds]
    if missing:
        raise GMError(f"{evidence}: has no seed{missing[0]}/group; its seeds: {', '.join(map(str, seeds))}")
    if not 0 < a.fraction <= 1:
        raise GMError(f"--fraction {a.fraction}: must be in (0, 1]")
    t_start = time.monotonic()
    from later_rounds_report import write_report

    def plans() -> dict[int, dict]:  # the seeds started so far
        return {k: seed_plan(a, out, k) for k in a.seeds if (out / f"seed{k}").is_dir()}

    if not a.report_only:
        for k in a.seeds:
            run_seed(a, out, k)
            print(f"[levers] report: {write_report(out, a, plans())}", flush=True)
    path = write_report(out, a, plans())
    if a.results:
        import shutil

        dest = Path(a.results)
        dest.mkdir(parents=True, exist_ok=True)
        for f in path.parent.iterdir():
            if f.suffix in (".json", ".md", ".png"):
                shutil.copy2(f, dest / f.name)
    print(f"[levers] report: {path} (wall {time.monotonic() - t_start:.0f} s this call)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
