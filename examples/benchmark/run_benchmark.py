#!/usr/bin/env python
"""Benchmark: random vs individual (MATES) vs quota-only vs group (Group-MATES) selection, x seeds.

    .venv/bin/python examples/benchmark/run_benchmark.py                 # 20k pool, 3 seeds (~1 h on 2 cores)
    .venv/bin/python examples/benchmark/run_benchmark.py --pool 64k      # the whole bundled pool
    .venv/bin/python examples/benchmark/run_benchmark.py --quick         # a short look (one seed, pool slice)
    .venv/bin/python examples/benchmark/run_benchmark.py --heldout       # + held-out numbers in the final report

Every method trains the same GPT with the same flags, tokens, steps and LR schedule over ``--stages``
stages (stage 0 on a random selection, then one selection round before every later stage), all through
tools/run_pipeline.py (one run folder per seed and method, each with its own state file: a rerun skips
what is done). Shared within a seed: stage 0 (checkpoints, oracle store, influence model, i.e. the whole
first round up to scoring) and the round-1 pool scores: ``group`` runs the pipeline with its random twin
(``random``), ``individual`` and ``quota`` start from links to group's stage 0 and select round 1 from
group's scores. From round 2 on every method collects its own oracle from its own checkpoint, trains its
own influence model and scores the pool itself. Every saved checkpoint is evaluated with
tools/evaluate.py (WikiText-103 validation reference loss; LAMBADA eval half after each stage). The report
folder (OUT/report) holds report.md, PNG plots and results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from megatron_gm.errors import GMError, cli_main  # noqa: E402

METHODS = ("random", "individual", "quota", "group")
DATA = ROOT.parent / "shared" / "data"
POOLS = {"20k": "pool_20k.jsonl.gz", "64k": "pool.jsonl.gz"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmark"), help="benchmark folder (resumable)")
    p.add_argument("--pool", choices=tuple(POOLS), default="20k", help="bundled pool (default 20k)")
    p.add_argument("--pool-file", default="", help="another jsonl[.gz] pool instead of the bundled one")
    p.add_argument("--data-dir", default=str(DATA), help="folder of the bundled data")
    p.add_argument("--seeds", type=int, default=None, help="seeds (default 3; --quick 1)")
    p.add_argument("--stages", type=int, default=3, help="pretraining stages (stages - 1 selection rounds)")
    p.add_argument("--quick", action="store_true", help="short look: pool slice, tiny model, one seed")
    p.add_argument("--quick-docs", type=int, default=2000, help="--quick: documents of the pool slice")
    p.add_argument("--set", action="append", default=[], help="extra run_pipeline --set (all runs)")
    p.add_argument("--heldout", action="store_true", help="final report also reads ../shared/heldout")
    p.add_argument("--heldout-dir", default=str(ROOT.parent / "shared" / "heldout"), help="held-out folder")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from what is there")
    return p


def pipeline_sets(quick: bool, seed: int, out: Path) -> tuple[str, list[str]]:
    """(preset, --set list) shared by every method: equal model, tokens, steps and schedule.

    Every run shares one frozen-encoder embedding cache: the pool is embedded once for the whole
    benchmark, and each round only applies its own model's heads."""
    seeds = [f"{k}.seed={seed}" for k in ("train", "oracle", "influence", "select")]
    seeds.append(f"select.embed_cache={out / 'embeddings'}")
    # the pipeline's oracle command lacks --gm-stage-iters, which collect_oracle needs from stage 1 on
    iters = 30 if quick else 120
    seeds.append(f"oracle.extra_args=--gm-stage-iters {iters}")
    if quick:
        return "test", seeds + [
            f"train.stage_iters={iters}", "train.micro_batch_size=4", "train.global_batch_size=4",
            "train.save_interval=10", "train.eval_interval=1000", "train.eval_iters=1", "train.lr=3e-3",
            "train.warmup_iters=5", "oracle.trajectories=24", "oracle.traj_len=4", "oracle.ref_max_examples=8",
            "influence.val_count=4", "select.num_clusters=4",
        ]  # fmt: skip
    return "tiny", seeds + [
        f"train.stage_iters={iters}",
        "train.save_interval=40",
        "train.eval_interval=1000",
        "oracle.trajectories=128",  # twice the quickstart's: the influence model is fitted on 1,280 labels
    ]


def run(cmd: list[str], log: Path | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace")
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"{' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    if p.returncode != 0:
        errs = [x for x in (p.stderr + p.stdout).splitlines() if x.startswith("error:")]
        tail = "\n".join(errs[-3:] or (p.stdout + p.stderr).splitlines()[-15:])
        raise GMError(f"{' '.join(cmd[:3])} ... failed (rc {p.returncode}):\n{tail}")
    return p.stdout


def py() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else sys.executable)


# --- data ------------------------------------------------------------------------------------------------


def prepare_data(a, out: Path) -> tuple[str, str]:
    """Tokenizer + Megatron indexed pool under OUT/data (skipped when there). Returns (prefix, tokenizer)."""
    pool = Path(a.pool_file) if a.pool_file else Path(a.data_dir) / POOLS[a.pool]
    if not pool.is_file():
        raise GMError(f"{pool}: pool not found; pass --data-dir <folder with {POOLS[a.pool]}> or --pool-file")
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    if a.quick:
        import gzip

        sliced = d / f"pool_{a.quick_docs}.jsonl"
        if not sliced.exists():
            opener = gzip.open if str(pool).endswith(".gz") else open
            with opener(pool, "rt") as f:
                lines = [next(f) for _ in range(a.quick_docs)]
            sliced.write_text("".join(lines))
        pool = sliced
    tok = d / "tokenizer.model"
    if not tok.exists():
        print(f"[bench] training the tokenizer on {pool}", flush=True)
        run([py(), "tools/train_tokenizer.py", "--input", str(pool), "--model-prefix", str(d / "tokenizer"),
             "--vocab-size", "4096" if a.quick else "8192", "--max-docs", "20000"], d / "tokenizer.log")  # fmt: skip
    prefix = d / "pool_text_document"
    if not Path(f"{prefix}.gm.json").exists():
        print(f"[bench] preprocessing {pool}", flush=True)
        run([py(), "tools/preprocess_data.py", "--input", str(pool), "--output-prefix", str(d / "pool"),
             "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(tok), "--append-eod",
             "--workers", "2"], d / "preprocess.log")  # fmt: skip
    return str(prefix), str(tok)


# --- the runs --------------------------------------------------------------------------------------------


def pipeline_argv(a, seed_dir: Path, method: str, prefix: str, tok: str, seed: int, ref: str) -> list[str]:
    preset, sets = pipeline_sets(a.quick, seed, seed_dir.parent)
    argv = ["--preset", preset, "--stages", str(a.stages), "--out", str(seed_dir / method),
            "--data-path", prefix, "--tokenizer-model", tok, "--ref", ref,
            "--random-twin" if method == "group" else "--no-random-twin"]  # fmt: skip
    for s in [*sets, f"select.method={method}", *a.set]:
        argv += ["--set", s]
    return argv


def share_round_one(a, seed_dir: Path, method: str, argv: list[str], prefix: str) -> None:
    """Start ``method``'s run folder from group's stage 0 and select round 1 from group's scores.

    Its config is group's (written by run_pipeline.py itself) with only the method and the twin changed,
    so the pipeline accepts the folder as its own when it continues it."""
    from megatron_gm.manifest import atomic_write_text
    from megatron_gm.pipeline.config import PipelineConfig
    from megatron_gm.pipeline.plan import build_plan, select_args
    from megatron_gm.pipeline.state import RunState

    d = seed_dir / method
    saved = d / "config.json"
    if not saved.exists():
        cfg_dict = json.loads((seed_dir / "group" / "config.json").read_text())
        cfg_dict["select"]["method"], cfg_dict["random_twin"] = method, False
        (d / "logs").mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n")
    cfg = PipelineConfig.from_dict(json.loads(saved.read_text()))
    state = RunState(d / "state.json")
    if not (d / "stage0").exists():
        (d / "stage0").symlink_to(Path("..") / "group" / "stage0")
    stage0 = [ph.name for ph in build_plan(cfg, d) if ph.stage == 0 and ph.branch == "main"]
    for name in stage0:  # pretrain, oracle, influence (+ the bootstrap round where configured)
        if not state.is_done(name):
            state.begin(name)
            state.end(name, "done")  # shared: its cost is booked once, in group's run
        log = d / "logs" / f"{name}.log"
        if not log.exists() and not log.is_symlink():
            log.symlink_to(Path("..") / ".." / "group" / "logs" / f"{name}.log")
    sel = d / "stage1" / "selection"
    if not (sel / "manifest.json").exists():
        scores = seed_dir / "group" / "stage1" / "selection.scores"
        args = select_args(cfg, 1, sel, model=None, scores_from=scores, method=method)
        run([py(), "tools/select_data.py", *args], d / "logs" / "stage1.select.log")


def run_seed(a, out: Path, k: int, prefix: str, tok: str, ref: str) -> None:
    seed = 1234 + 1000 * k
    seed_dir = out / f"seed{k}"
    for method in ("group", "individual", "quota"):
        argv = pipeline_argv(a, seed_dir, method, prefix, tok, seed, ref)
        if method != "group":
            share_round_one(a, seed_dir, method, argv, prefix)
        t0 = time.monotonic()
        print(f"[bench] seed {k}: {method}{' (+ random twin)' if method == 'group' else ''} ...", flush=True)
        run([py(), "tools/run_pipeline.py", *argv], seed_dir / f"{method}.pipeline.log")
        print(f"[bench] seed {k}: {method} done in {time.monotonic() - t0:.0f} s", flush=True)


def stage_dir(seed_dir: Path, method: str, stage: int) -> Path:
    """``method``'s folder of a selected stage (>= 1): random is group's twin."""
    return (seed_dir / "group" / "random" if method == "random" else seed_dir / method) / f"stage{stage}"


def checkpoint_dirs(seed_dir: Path, method: str, stages: int) -> dict[int, Path]:
    """Stage -> checkpoint folder of ``method`` (stage 0 is shared: group's)."""
    dirs = {0: seed_dir / "group" / "stage0" / "checkpoints"}
    for s in range(1, stages):
        dirs[s] = stage_dir(seed_dir, method, s) / "checkpoints"
    return dirs


def evaluate_seed(a, out: Path, k: int, ref: str, lambada: str) -> None:
    seed_dir = out / f"seed{k}"
    done_dirs: set[Path] = set()
    for method in METHODS:
        for stage, ck in checkpoint_dirs(seed_dir, method, a.stages).items():
            if ck in done_dirs:
                continue
            done_dirs.add(ck)
            dest = seed_dir / "eval" / f"{'shared' if stage == 0 else method}_stage{stage}.json"
            if dest.exists():
                continue
            print(f"[bench] seed {k}: evaluating {ck}", flush=True)
            run([py(), "tools/evaluate.py", "--load", str(ck), "--gm-eval-ref", ref,
                 "--gm-eval-ref-samples", "64" if a.quick else "256", "--gm-eval-prompts", lambada,
                 "--gm-eval-prompts-max", "500" if a.quick else "0", "--gm-eval-prompts-latest-only", "--gm-eval-iterations", "all",
                 "--gm-eval-output", str(dest)], seed_dir / "eval" / f"{dest.stem}.log")  # fmt: skip


@cli_main
def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.seeds is None:
        a.seeds = 1 if a.quick else 3
    if a.stages < 3:
        raise GMError("--stages must be >= 3 (at least two selection rounds)")
    out = Path(a.out).resolve()
    ref = str(Path(a.data_dir) / "ref_wikitext103_valid.jsonl.gz")
    lambada = str(Path(a.data_dir) / "lambada_eval.jsonl.gz")
    for f in (ref, lambada):
        if not Path(f).is_file():
            raise GMError(f"{f}: not found; pass --data-dir <folder with the bundled data>")
    t_start = time.monotonic()
    if not a.report_only:
        prefix, tok = prepare_data(a, out)
        bench = {"argv": sys.argv[1:], "quick": a.quick, "pool": (a.pool_file or a.pool) + (f" (first {a.quick_docs} documents)" if a.quick else ""), "seeds": a.seeds,
                 "stages": a.stages, "data_path": prefix, "tokenizer": tok}  # fmt: skip
        (out / "benchmark.json").write_text(json.dumps(bench, indent=2) + "\n")
        for k in range(a.seeds):
            run_seed(a, out, k, prefix, tok, ref)
            evaluate_seed(a, out, k, ref, lambada)
    from report import write_report

    path = write_report(out, a, heldout=a.heldout)
    print(f"[bench] report: {path} (wall {time.monotonic() - t_start:.0f} s this call)", flush=True)
    return 0


def select_phase_seconds(log: Path) -> dict[str, float]:
    """The selection tool's per-phase seconds (its summary line)."""
    if not log.exists():
        return {}
    found = re.findall(r"seconds: (.*?); CPU-seconds", log.read_text(errors="replace"))
    if not found:
        return {}
    parts = found[-1].split()
    return {parts[i]: float(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}


if __name__ == "__main__":
    sys.exit(main())
