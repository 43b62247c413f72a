"""``tools/run_pipeline.py``: the whole Group-MATES loop for S stages, locally or through Slurm.

    stage 0 (random) -> oracle -> influence model -> selection -> stage 1 -> ... -> stage S-1

plus, with ``--random-twin``, a twin that trains stages 1.. on a random selection of the same size, for
the comparison in the final report. Locally every phase runs on this machine (torchrun / mpirun);
with ``--mode slurm`` every phase is one sbatch job (slurm/*.sbatch) chained with
``--dependency=afterok``. ``OUT/state.json`` records what is done: rerunning the same command continues
(and, on Slurm, resubmits only what is neither done nor queued). ``--dry-run`` prints the plan, the
resources and a rough FLOPs/time estimate per phase, and touches nothing.

    python tools/run_pipeline.py --preset tiny --data-path runs/quickstart/pool_text_document \\
        --tokenizer-model runs/quickstart/tokenizer.model --out runs/quickstart/loop
    python tools/run_pipeline.py --mode slurm --preset small --stages 4 ... --dry-run
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from megatron_gm.dist import add_log_level_arg, tool_logging
from megatron_gm.errors import GMError, cli_main
from megatron_gm.pipeline.config import PipelineConfig
from megatron_gm.pipeline.estimate import (
    KINDS,
    cost_summary,
    estimate_plan,
    human_flops,
    human_time,
    reference_tokens,
)
from megatron_gm.pipeline.plan import Phase, build_plan
from megatron_gm.pipeline.presets import PRESETS, preset
from megatron_gm.pipeline.run import ROOT
from megatron_gm.pipeline.slurm import describe_resources
from megatron_gm.pipeline.state import RunState


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_pipeline.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mode", choices=("local", "slurm"), default="local")
    p.add_argument(
        "--preset",
        default=None,
        help=f"sizes: {', '.join(PRESETS)} (default: the run folder's saved config, else tiny)",
    )
    p.add_argument("--stages", type=int, default=None, help="number of pretraining stages (preset's default)")
    p.add_argument("--out", required=True, help="run folder (config, state, logs, every artifact)")
    p.add_argument("--data-path", default="", help="Megatron dataset prefix of the pool (with .gm.json)")
    p.add_argument("--tokenizer-type", default=None, help="Megatron tokenizer type")
    p.add_argument("--tokenizer-model", default="", help="tokenizer model file")
    p.add_argument(
        "--ref", default="", help="oracle reference set jsonl[.gz] (required to run oracle phases)"
    )
    twin = p.add_mutually_exclusive_group()
    twin.add_argument("--random-twin", dest="random_twin", action="store_true", default=None,
                      help="also train on a random selection of the same size, for comparison")  # fmt: skip
    twin.add_argument("--no-random-twin", dest="random_twin", action="store_false")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a preset field, e.g. train.stage_iters=50 (repeatable)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate; run nothing")
    p.add_argument("--wait", action="store_true", help="slurm: block until the chain is done, then report")
    p.add_argument("--poll", type=float, default=10.0, help="slurm --wait: seconds between queue checks")
    p.add_argument("--verbose", action="store_true", help="local: show every phase's output")
    p.add_argument("--report", action="store_true", help="print the report of an existing run and exit")
    add_log_level_arg(p)
    return p


def make_config(args: argparse.Namespace) -> PipelineConfig:
    """The preset (or, without --preset, the run folder's saved config), then the flags on top."""
    saved = Path(args.out) / "config.json"
    if args.preset is None and saved.is_file():
        try:
            cfg = PipelineConfig.from_dict(json.loads(saved.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise GMError(f"{saved}: unreadable ({e}); pass --preset or choose another --out") from e
    else:
        cfg = preset(args.preset or "tiny")
    if args.stages is not None:
        cfg.stages = args.stages
    if args.random_twin is not None:
        cfg.random_twin = args.random_twin
    if args.data_path:
        cfg.data_path = str(Path(args.data_path).resolve())
    if args.tokenizer_model:
        cfg.tokenizer_model = str(Path(args.tokenizer_model).resolve())
    if args.tokenizer_type:
        cfg.tokenizer_type = args.tokenizer_type
    for a in args.set:
        cfg.override(a)
    return cfg


def reference_set(args: argparse.Namespace, cfg: PipelineConfig) -> str:
    ref = args.ref or cfg.oracle.ref_data
    return str(Path(ref).resolve()) if ref else ""


def print_plan(
    cfg: PipelineConfig, phases: list[Phase], out: Path, mode: str, state: RunState | None
) -> None:
    ests, hw, pool = estimate_plan(cfg, phases)
    src = "from the dataset sidecar" if pool.measured else "assumed: no dataset sidecar found"
    print(f"plan: preset {cfg.preset}, {cfg.stages} stage(s), random twin {'on' if cfg.random_twin else 'off'}, "
          f"mode {mode}, run folder {out}")  # fmt: skip
    print(f"pool: {pool.num_docs} documents, {pool.num_tokens / 1e6:.2f}M tokens ({src})")
    print(f"estimate assumes {hw.name}; rough, orders of magnitude\n")
    print("resources per job: nodes x tasks per node x CPUs per task[, GPUs per node], time limit")
    print("launch: torchrun NODESxPROCS_PER_NODE, or mpi NODESxRANKS_PER_NODE\n")
    head = f"{'phase':<24} {'after':<38} {'launch':<14} {'resources':<28} {'est. FLOPs':>12} {'est. time':>9}  note"
    print(head)
    print("-" * len(head))
    total_t = total_f = 0.0
    for p, e in zip(phases, ests):
        done = state is not None and state.is_done(p.name)
        how = f"{p.launcher} {p.nodes}x{p.procs_per_node}"
        after = ", ".join(p.deps) or "-"
        res = describe_resources(p, cfg.launch)
        print(f"{p.name:<24} {after:<38} {how:<14} {res:<28} {human_flops(e.flops):>12} "
              f"{human_time(e.seconds):>9}  {e.note}{' [done]' if done else ''}")  # fmt: skip
        if not done:
            total_t += e.seconds
            total_f += e.flops
    print(f"{'left to run':<24} {'':<38} {'':<14} {'':<28} {human_flops(total_f):>12} {human_time(total_t):>9}  "
          "(in sequence; on Slurm the twin overlaps)")  # fmt: skip


def print_cost(cfg: PipelineConfig, phases: list[Phase]) -> None:
    """Every phase kind's share as in the paper's Table 5; the last line is the overhead in FLOPs."""
    ests, hw, pool = estimate_plan(cfg, phases)
    cost = cost_summary(phases, ests)
    rounds = sum(p.kind == "select" and p.branch == "main" for p in phases)
    _, per, how = reference_tokens(cfg)
    i = cfg.influence
    print(
        f"\ncost of the main branch ({rounds} selection round(s); the random twin is a control, not counted)"
    )
    print(f"{'phase':<16} {'FLOPs':>12} {'of pretraining':>15} {'device time':>12} {'share of run':>13}")
    for kind in KINDS:
        f, sec = cost.flops[kind], cost.seconds[kind]
        print(f"{kind:<16} {human_flops(f):>12} {100 * f / cost.flops['pretraining']:>14.1f}% "
              f"{human_time(sec):>12} {100 * cost.time_share(kind):>12.1f}%")  # fmt: skip
    print(f"assumes: {hw.name}; pool {pool.num_tokens / 1e9:.2f}B tokens"
          f"{'' if pool.measured else ' (assumed)'}; oracle {cfg.oracle.trajectories} trajectories + "
          f"2 x {cfg.bootstrap.beams_per_tail} bootstrap x T={cfg.oracle.T} (later rounds x "
          f"{cfg.oracle.later_round_fraction:g}), reference {how}; influence {i.mode} mode, encoder "
          f"{i.encoder or 'bundled MiniLM'}{', frozen after round 1' if i.freeze_encoder_after_first_round else ''}")  # fmt: skip
    print(f"overhead: {100 * cost.overhead_flops:.1f}% of pretraining FLOPs")


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tool_logging(args.log_level):
        cfg = make_config(args)
        out = Path(args.out).resolve()
        cfg.oracle.ref_data = reference_set(args, cfg)  # saved with the run: a rerun uses the same
        ref = cfg.oracle.ref_data
        cfg.validate(need_data=not args.dry_run)
        phases = build_plan(cfg, out, ref)
        state = RunState(out / "state.json") if (out / "state.json").exists() else None
        name = out.name

        if args.report:
            from megatron_gm.pipeline.report import write_report

            if state is None:
                raise GMError(f"{out}: no state.json; nothing has run there")
            print(write_report(out, phases, state), end="")
            return 0

        if args.dry_run:
            print_plan(cfg, phases, out, args.mode, state)
            if args.mode == "slurm":
                from megatron_gm.pipeline.slurm import SlurmDriver

                drv = SlurmDriver(phases, state or RunState(out / "state.json"), cfg.launch, out / "logs",
                                  root=ROOT, run_name=name)  # fmt: skip
                print("\nsbatch commands (dependencies shown as <phase>):")
                for line in drv.plan_lines():
                    print(line)
            else:
                from megatron_gm.pipeline.local import launch_argv
                from megatron_gm.pipeline.run import python_exe

                print("\ncommands:")
                for p in phases:
                    print(f"# {p.name}\n{shlex.join(launch_argv(p, python_exe(), ROOT))}")
            print_cost(cfg, phases)
            return 0

        if args.mode == "slurm":  # before any work: a run without a controller would fail after it
            from megatron_gm.pipeline.slurm import check_controller

            print(f"[pipeline] Slurm: {check_controller()}")
        if any(p.kind == "oracle" for p in phases) and not ref:
            raise GMError(
                "--ref is required: the oracle's reference set (jsonl[.gz]), or set oracle.ref_data"
            )
        if any(p.kind == "oracle" for p in phases) and not Path(ref).is_file():
            raise GMError(f"{ref}: reference set not found; pass --ref <jsonl[.gz]> or set oracle.ref_data")
        from megatron_gm.pipeline.run import open_run

        state = open_run(out, cfg)
        if args.mode == "slurm":
            from megatron_gm.pipeline.slurm import SlurmDriver

            drv = SlurmDriver(phases, state, cfg.launch, out / "logs", root=ROOT, run_name=name)
            drv.submit()
            if not args.wait:
                print(
                    f"[pipeline] submitted; state in {state.path}. Rerun with --wait to follow, --report to summarise."
                )
                return 0
            drv.wait(poll=args.poll)
        else:
            from megatron_gm.pipeline.local import Interrupted, LocalExecutor

            try:
                LocalExecutor(phases, state, out / "logs", root=ROOT, verbose=args.verbose).run()
            except Interrupted as e:
                print(f"error: {e}", file=sys.stderr)
                return 130
        from megatron_gm.pipeline.report import write_report

        print()
        print(write_report(out, phases, state), end="")
        return 0
