#!/usr/bin/env python
"""Evidence benchmark: Group-MATES vs random, MATES (individual), quota-only and a fastText quality filter,
on a GPT trained compute-optimally (>= 20 tokens a parameter), x seeds; random also at larger budgets.

    .venv/bin/python examples/benchmark/run_benchmark.py --out runs/evidence        # 64k pool, 3 seeds
    .venv/bin/python examples/benchmark/run_benchmark.py --out runs/evidence --report-only --heldout \\
        --results examples/benchmark/results/evidence                              # + held-out, committed
    .venv/bin/python examples/benchmark/run_benchmark.py --quick --out runs/evidence_quick   # a short look

Per seed (every run the same GPT, batch, WSD schedule and tokens; every stochastic choice from the seed):
- stage 0 trains on the whole pool (random order) for ``first_share`` of the tokens; shared by all methods.
- one selection round at its checkpoint: oracle (random + bootstrap trajectories on the reference half of
  WikiText-103 validation), then per method a selection of ``ratio`` of the pool, and stage 1 on it:
  group (relational model, cluster greedy), individual (its own model without the relation term,
  Gumbel-top-k as MATES), quota (individual's scores, per-cluster quotas), fasttext (a classifier of the
  reference half vs random pool documents, top share), random (a fresh uniform subset).
- random again at larger token budgets (its own complete WSD schedule each, from the shared stage 0) for
  token efficiency the paper's way.
Every stage scores a fixed evaluation pack 20 times in-process (reference = the other half of WikiText-103
validation, LAMBADA eval half, pool validation split). Rerunning the command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")  # Megatron's import-time notes about Apex and Transformer Engine
logging.getLogger("megatron").setLevel(logging.WARNING)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from megatron_gm.errors import GMError, cli_main  # noqa: E402

METHODS = ("random", "individual", "quota", "group", "fasttext")
DATA = ROOT.parent / "shared" / "data"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "evidence"), help="benchmark folder (resumable)")
    p.add_argument("--pool", choices=("20k", "64k"), default="64k", help="bundled pool (default: all of it)")
    p.add_argument("--pool-file", default="", help="another jsonl[.gz] pool instead of the bundled one")
    p.add_argument("--data-dir", default=str(DATA), help="folder of the bundled data")
    p.add_argument("--seeds", type=int, default=None, help="seeds (default 3; --quick 1)")
    p.add_argument(
        "--tokens-per-param", type=float, default=None, help="training tokens a parameter (20; --quick 3)"
    )
    p.add_argument("--budgets", default="1,1.5,2.5", help="random's token budgets, multiples of the methods'")
    p.add_argument(
        "--quick", action="store_true", help="short look: 2,000-document slice, tiny model, one seed"
    )
    p.add_argument("--quick-docs", type=int, default=2000, help="--quick: documents of the pool slice")
    p.add_argument("--set", action="append", default=[], help="extra run_pipeline --set for every run")
    p.add_argument("--heldout", action="store_true", help="final report also reads the held-out sets")
    p.add_argument("--heldout-dir", default=str(ROOT.parent / "shared" / "heldout"), help="held-out folder")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from what is there")
    p.add_argument("--results", default="", help="also copy results.json, report.md and PNGs to this folder")
    return p


def settings(a) -> None:
    """The scale: model, batch, stage split, oracle and evaluation sizes (``a`` gains the fields)."""
    if a.quick:
        a.model = dict(
            num_layers=1, hidden_size=32, num_attention_heads=2, ffn_hidden_size=128, seq_length=64
        )
        a.vocab, a.gbs, a.lr, a.warmup = 1024, 8, 3e-3, 10
        a.oracle = dict(trajectories=40, ref_samples=8)
        a.bootstrap = dict(beams_per_tail=4, probe_count=400)
        a.val_count, a.eval_sizes = 10, {"reference": 64, "lambada": 100, "pool_valid": 64}
        a.set = ["influence.train_batch_size=8", *a.set]
    else:
        a.model = dict(
            num_layers=2, hidden_size=48, num_attention_heads=4, ffn_hidden_size=192, seq_length=128
        )
        a.vocab, a.gbs, a.lr, a.warmup = 4096, 32, 3e-3, 40
        # 240 random + 60 bootstrap trajectories (T=10: 3,000 labels); 100 of them validate the influence model
        a.oracle = dict(trajectories=240, ref_samples=32)
        a.bootstrap = dict(beams_per_tail=30, probe_count=10000)
        a.val_count, a.eval_sizes = 100, {"reference": 128, "lambada": 500, "pool_valid": 128}
    a.seq_length = a.model["seq_length"]
    a.first_share, a.ratio, a.split = 1 / 3, 0.5, "98,2,0"
    a.budget_list = [float(x) for x in a.budgets.split(",")]
    if a.budget_list[0] != 1.0 or len(a.budget_list) < 3 or a.budget_list != sorted(a.budget_list):
        raise GMError(f"--budgets {a.budgets}: start at 1 and give at least three ascending multiples")


def run(cmd: list[str], log: Path | None = None) -> str:
    """A repository tool (path relative to the root) with the project's python; its output to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
    argv = [py(), *cmd] if cmd[0].endswith(".py") else cmd
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace")
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"{' '.join(argv)}\n{p.stdout}\n{p.stderr}")
    if p.returncode != 0:
        errs = [x for x in (p.stderr + p.stdout).splitlines() if x.startswith("error:")]
        tail = "\n".join(errs[-3:] or (p.stdout + p.stderr).splitlines()[-15:])
        raise GMError(f"{' '.join(cmd[:3])} ... failed (rc {p.returncode}):\n{tail}")
    return p.stdout


def py() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else sys.executable)


def iterations(a, data) -> tuple[int, int, int]:
    """(params, stage-0 iterations, stage-1 iterations) for >= tokens_per_param tokens a parameter."""
    from megatron_gm.pipeline.config import GPTConfig

    params = GPTConfig(**a.model, vocab_size=data.vocab_size).params()
    total = math.ceil(a.tokens_per_param * params / (a.gbs * a.seq_length))
    first = round(total * a.first_share)
    return params, first, total - first


def pipeline_argv(a, data, seed_dir: Path, seed: int) -> list[str]:
    """group's run_pipeline.py arguments: the run every other method shares stage 0 and the oracle with."""
    params, first, second = iterations(a, data)
    sets = [f"model.{k}={v}" for k, v in a.model.items()] + [
        f"model.vocab_size={data.vocab_size}", f"train.first_stage_iters={first}", f"train.stage_iters={second}",
        f"train.micro_batch_size={a.gbs}", f"train.global_batch_size={a.gbs}", f"train.lr={a.lr}",
        f"train.min_lr={a.lr / 10}", f"train.warmup_iters={a.warmup}", "train.lr_decay_style=WSD",
        "train.wsd_cooldown=0.2", f"train.eval_pack={data.pack}", "train.eval_pack_points=20",
        f"train.save_interval={max(1, (first + second) // 4)}", "train.eval_interval=100000", "train.eval_iters=1",
        "train.log_interval=50", "train.extra_args=--hidden-dropout 0 --attention-dropout 0 --num-workers 0",
        "oracle.T=10", "oracle.extra_args=--gm-oracle-ref-seed 1234",
        f"select.ratio={a.ratio}", f"select.embed_cache={Path(a.out) / 'embeddings'}",
        f"influence.val_count={a.val_count}",
    ] + [f"oracle.{k}={v}" for k, v in a.oracle.items()] + [f"bootstrap.{k}={v}" for k, v in a.bootstrap.items()]  # fmt: skip
    sets += [f"{k}.seed={seed}" for k in ("train", "oracle", "influence", "select")]
    argv = ["--preset", "tiny", "--stages", "2", "--random-twin", "--out", str(seed_dir / "group"),
            "--data-path", data.prefix, "--tokenizer-model", data.tokenizer, "--ref", data.ref_oracle]  # fmt: skip
    for s in [*sets, *a.set]:
        argv += ["--set", s]
    return argv


# --- the other methods: phases of their own, run with the pipeline's local executor -----------------------


def _phase(cfg, name: str, kind: str, args: list[str], deps: list[str], outputs: dict, *, tool: str = "",
           launcher: str = "", marker: Path | None = None, env: dict | None = None):  # fmt: skip
    from megatron_gm.pipeline.plan import TOOLS, Phase

    known_tool, known_launcher, script = TOOLS.get(kind, (tool, launcher, ""))
    launcher = launcher or known_launcher
    L = cfg.launch
    ranks = L.select_ranks if launcher == "mpi" else (L.nproc_per_node if launcher == "torchrun" else 1)
    threads = (L.select_threads or L.threads) if launcher == "mpi" else L.threads
    return Phase(name=name, kind=kind, stage=1, branch="main", tool=tool or known_tool, args=args, deps=deps,
                 launcher=launcher, nodes=1, procs_per_node=ranks, threads=threads, time_limit="",
                 script=script, outputs={k: str(v) for k, v in outputs.items()},
                 complete_marker=str(marker) if marker else "", env=env or {})  # fmt: skip


def _pretrain(cfg, name: str, d: Path, selection: Path, init: Path, deps: list[str], extra=()):
    from megatron_gm.pipeline.plan import ckpt_env, pretrain_args

    ck = d / "checkpoints"
    args = [*pretrain_args(cfg, 1, ck, selection), *extra]
    return _phase(cfg, name, "pretrain", args, deps, {"checkpoints": ck}, env=ckpt_env(cfg, 1, ck, init))


def method_phases(cfg, seed_dir: Path, data, a) -> dict[str, list]:
    """individual, quota, fasttext and random's larger budgets, from group's stage 0, stores and scores."""
    from megatron_gm.pipeline.plan import embed_cache_dir, influence_args, select_args

    g = seed_dir / "group"
    stage0 = g / "stage0" / "checkpoints"
    stores = [g / "stage0" / "oracle", g / "stage0" / "oracle_bootstrap"]
    out: dict[str, list] = {}
    d = seed_dir / "individual"
    model, sel = d / "influence", d / "stage1" / "selection"
    out["individual"] = [
        _phase(cfg, "influence", "influence", [*influence_args(cfg, stores, model), "--no-relation"], [],
               {"influence": model}, marker=model / "manifest.json"),
        _phase(cfg, "select", "select", select_args(cfg, 1, sel, model=model, scores_from=None, method="individual",
               embed_cache=embed_cache_dir(cfg, Path(a.out))), ["influence"], {"selection": sel},
               marker=sel / "manifest.json"),
        _pretrain(cfg, "pretrain", d / "stage1", sel, stage0, ["select"]),
    ]  # fmt: skip
    d, scores = seed_dir / "quota", Path(f"{sel}.scores")
    sel = d / "stage1" / "selection"
    out["quota"] = [
        _phase(cfg, "select", "select", select_args(cfg, 1, sel, model=None, scores_from=scores, method="quota"),
               [], {"selection": sel}, marker=sel / "manifest.json"),
        _pretrain(cfg, "pretrain", d / "stage1", sel, stage0, ["select"]),
    ]  # fmt: skip
    d = seed_dir / "fasttext"
    ft, sel = d / "scores", d / "stage1" / "selection"
    ft_args = ["--data-path", data.prefix, "--positives", data.ref_oracle, "--h-from",
               str(g / "stage1" / "selection.scores"), "--output", str(ft), "--seed", str(cfg.select.seed)]  # fmt: skip
    out["fasttext"] = [
        _phase(cfg, "filter", "filter", ft_args, [], {"scores": ft}, tool="tools/quality_filter.py",
               launcher="single", marker=ft / "manifest.json"),
        _phase(cfg, "select", "select", [*select_args(cfg, 1, sel, model=None, scores_from=ft, method="individual"),
               "--gm-select-temperature", "0"], ["filter"], {"selection": sel}, marker=sel / "manifest.json"),
        _pretrain(cfg, "pretrain", d / "stage1", sel, stage0, ["select"]),
    ]  # fmt: skip
    first, second = cfg.train.first_stage_iters, cfg.train.stage_iters
    for b in a.budget_list[1:]:
        cb = copy.deepcopy(cfg)
        cb.train.stage_iters = round(b * (first + second)) - first
        d = seed_dir / f"random_x{b:g}"
        # WSD's constant phase does not depend on the total: the shared stage-0 checkpoint continues with a
        # complete schedule of this budget (the scheduler takes the new total, not the checkpoint's)
        out[f"random_x{b:g}"] = [
            _pretrain(cb, "pretrain", d / "stage1", g / "random" / "stage1" / "selection", stage0, [],
                      extra=["--override-opt_param-scheduler"])
        ]  # fmt: skip
    return out


def run_phases(name: str, folder: Path, phases: list) -> None:
    from megatron_gm.pipeline.local import LocalExecutor
    from megatron_gm.pipeline.state import RunState

    (folder / "logs").mkdir(parents=True, exist_ok=True)
    state = RunState(folder / "state.json")
    if all(state.is_done(p.name) for p in phases):
        return
    t0 = time.monotonic()
    print(f"[bench] {name} ...", flush=True)
    LocalExecutor(phases, state, folder / "logs", root=ROOT, python=py(), echo=lambda s: None).run()
    print(f"[bench] {name} done in {time.monotonic() - t0:.0f} s", flush=True)


def run_seed(a, out: Path, k: int, data) -> None:
    from megatron_gm.pipeline.config import PipelineConfig

    seed = 1234 + 1000 * k
    seed_dir = out / f"seed{k}"
    group = seed_dir / "group"
    t0 = time.monotonic()
    print(f"[bench] seed {k}: group (+ stage 0, oracle, bootstrap, random twin) ...", flush=True)
    log = seed_dir / f"group.pipeline.{time.strftime('%Y%m%dT%H%M%S')}.log"  # the pipeline skips done phases
    run(["tools/run_pipeline.py", *pipeline_argv(a, data, seed_dir, seed)], log)
    print(f"[bench] seed {k}: group done in {time.monotonic() - t0:.0f} s", flush=True)
    cfg = PipelineConfig.from_dict(json.loads((group / "config.json").read_text()))
    for method, phases in method_phases(cfg, seed_dir, data, a).items():
        run_phases(f"seed {k}: {method}", seed_dir / method, phases)


@cli_main
def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    a.seeds = a.seeds or (1 if a.quick else 3)
    a.tokens_per_param = a.tokens_per_param or (3.0 if a.quick else 20.0)
    settings(a)
    out = Path(a.out).resolve()
    a.out = str(out)
    t_start = time.monotonic()
    from prepare import prepare

    data = prepare(run, a, out)
    params, first, second = iterations(a, data)
    tpi = a.gbs * a.seq_length
    largest = (round(a.budget_list[-1] * (first + second)) - first) * tpi  # random's longest stage 1
    if not a.report_only or not (out / "benchmark.json").exists():  # the run's command, not the report's
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        bench = {"argv": sys.argv[1:], "run_commit": commit.strip(), "quick": a.quick, "seeds": a.seeds,
                 "params": params, "stage_iters": [first, second], "tokens_per_iteration": tpi,
                 "pool_tokens": data.pool_tokens, "pool_docs": data.pool_docs, "budgets": a.budget_list,
                 "data": vars(data)}  # fmt: skip
        (out / "benchmark.json").write_text(json.dumps(bench, indent=2) + "\n")
    print(f"[bench] GPT {params:,} parameters, {(first + second) * tpi / params:.1f} tokens a parameter ({first}+"
          f"{second} iterations of {tpi} tokens); pool {data.pool_tokens:,} tokens: {data.pool_tokens / (second * tpi):.1f}x "
          f"a method's selected stage, {data.pool_tokens / largest:.1f}x random's longest", flush=True)  # fmt: skip
    if not a.report_only:
        for k in range(a.seeds):
            run_seed(a, out, k, data)
    from report import write_report

    path = write_report(out, a, data, heldout=a.heldout, results_dir=a.results)
    print(f"[bench] report: {path} (wall {time.monotonic() - t_start:.0f} s this call)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
