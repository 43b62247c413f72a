#!/usr/bin/env python
"""Cost of the selection-driven sampler: index build for N samples, and training step time.

1. Index build (in-process, no training): the stage dataset our loader builds on each rank (Megatron's
   GPTDataset over the selected documents, one epoch, --samples samples; synthetic document lengths,
   the .bin is a sparse file) and our sampler's per-pass permutation over those samples.
2. Step time: pretrain_gpt_gm.py with Megatron's own loader vs with --gm-selection (same model, flags
   and data), alternated --repeats times; medians of Megatron's "elapsed time per iteration" and of its
   "batch-generator" timer, skipping the first --warmup iterations of each run.

    .venv/bin/python benchmarks/bench_sampler.py --workdir /tmp/bench_sampler
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_gm.errors import cli_main  # noqa: E402


def bench_index(workdir: Path, samples: int, seq_length: int, mean_doc: int, seed: int) -> dict:
    """Seconds to build the stage GPTDataset (Megatron's indices) and our pass permutation."""
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset, _IndexWriter
    from megatron.core.datasets.utils import Split
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

    from megatron_gm.sampler import StageOrder

    rng = np.random.default_rng(seed)
    tokens_needed = samples * seq_length + 1
    num_docs = tokens_needed // mean_doc + 1
    lengths = rng.integers(mean_doc // 2, mean_doc * 3 // 2, num_docs).astype(np.int32)
    lengths[-1] += max(0, tokens_needed - int(lengths.sum()))
    prefix = workdir / "index_bench"
    with _IndexWriter(f"{prefix}.idx", np.uint16) as w:
        w.write(lengths, None, np.arange(num_docs + 1, dtype=np.int64))
    with open(f"{prefix}.bin", "wb") as f:  # sparse: the index build never reads tokens
        f.truncate(int(lengths.sum()) * 2)
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, split="100,0,0", path_to_cache="",
        tokenizer=NullTokenizer(8192), reset_position_ids=False, reset_attention_mask=False,
        eod_mask_loss=False,
    )  # fmt: skip
    indexed = IndexedDataset(str(prefix), mmap=True)
    t0 = time.perf_counter()
    ds = GPTDataset(indexed, str(prefix), np.arange(num_docs, dtype=np.int32), None, Split.train, config)
    t_dataset = time.perf_counter() - t0
    n = len(ds)
    order = StageOrder(n, seed=seed, stage=1)
    t0 = time.perf_counter()
    order.permutation(0)
    t_perm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, n, 1 << 20):  # walk a whole pass in 1M-sample windows
        order.samples(start, min(n, start + (1 << 20)))
    t_walk = time.perf_counter() - t0
    for ext in (".idx", ".bin"):
        os.remove(f"{prefix}{ext}")
    return {"samples": n, "documents": num_docs, "dataset_s": t_dataset, "perm_s": t_perm, "walk_s": t_walk}


def make_pool(workdir: Path, vocab: int, num_docs: int, seed: int):
    from megatron_gm.data.indexed import write_indexed_dataset
    from megatron_gm.data.selection import save_selection
    from megatron_gm.manifest import Manifest

    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(0, vocab - 1, rng.integers(50, 800)), vocab - 1) for _ in range(num_docs)]
    spec = {"type": "NullTokenizer", "model": None, "model_sha256": None, "vocab_size": vocab}
    info = write_indexed_dataset(workdir / "pool", docs, tokenizer=spec, source="bench")
    chosen = np.sort(rng.choice(int(num_docs * 0.95), num_docs // 2, replace=False))
    save_selection(workdir / "selection", chosen, Manifest("selection", info.fingerprint, stage=0, seed=seed))
    return info


def run_training(workdir: Path, args, selected: bool, tag: str) -> tuple[list[float], list[float]]:
    flags = [
        "--num-layers", str(args.layers), "--hidden-size", str(args.hidden), "--num-attention-heads", "4",
        "--seq-length", str(args.seq_length), "--max-position-embeddings", str(args.seq_length),
        "--micro-batch-size", str(args.micro_batch), "--global-batch-size", str(args.global_batch),
        "--train-iters", str(args.iters), "--lr", "1e-4", "--lr-decay-style", "constant",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", str(args.vocab),
        "--data-path", str(workdir / "pool"), "--split", "95,5,0", "--data-cache-path", str(workdir / "cache"),
        "--eval-iters", "0", "--eval-interval", "100000", "--log-interval", "1", "--num-workers", "0",
        "--timing-log-level", "2", "--seed", "1234",
    ]  # fmt: skip
    if selected:
        flags += ["--gm-selection", str(workdir / "selection")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
    cmd += [str(ROOT / "pretrain_gpt_gm.py"), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace")
    (workdir / f"{tag}.log").write_text(p.stdout + p.stderr)
    if p.returncode:
        raise SystemExit(f"error: training run failed (rc {p.returncode}); see {workdir / f'{tag}.log'}")
    out = p.stdout + p.stderr
    step = [float(v) for v in re.findall(r"elapsed time per iteration \(ms\): ([0-9.]+)", out)]
    batch = [float(v) for v in re.findall(r"batch-generator \.+: \(([0-9.]+), [0-9.]+\)", out)]
    return step[args.warmup :], batch[args.warmup :]


@cli_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/bench_sampler")
    ap.add_argument("--samples", type=int, default=10_000_000, help="index build: samples in the stage")
    ap.add_argument("--index-seq-length", type=int, default=1024)
    ap.add_argument("--mean-doc-tokens", type=int, default=2048)
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2, help="alternating baseline/selection launches each")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seq-length", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--pool-docs", type=int, default=2000)
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if not args.skip_index:
        r = bench_index(workdir, args.samples, args.index_seq_length, args.mean_doc_tokens, seed=1)
        print(
            f"index build, {r['samples']:,} samples ({r['documents']:,} documents, seq {args.index_seq_length}): "
            f"stage GPTDataset {r['dataset_s']:.2f} s, our pass permutation {r['perm_s']:.2f} s, "
            f"walking a whole pass {r['walk_s'] * 1000:.0f} ms",
            flush=True,
        )
    if not args.skip_training:
        make_pool(workdir, args.vocab, args.pool_docs, seed=1)
        base_step, base_batch, sel_step, sel_batch = [], [], [], []
        for i in range(args.repeats):
            s, b = run_training(workdir, args, selected=False, tag=f"baseline{i}")
            base_step += s
            base_batch += b
            s, b = run_training(workdir, args, selected=True, tag=f"selection{i}")
            sel_step += s
            sel_batch += b
        mb, ms = statistics.median(base_step), statistics.median(sel_step)
        print(
            f"step time (median ms over {len(base_step)}/{len(sel_step)} iterations, {args.nproc} process(es)): "
            f"Megatron's loader {mb:.1f}, with --gm-selection {ms:.1f}, ratio {ms / mb:.3f}",
            flush=True,
        )
        if base_batch and sel_batch:
            print(
                f"batch-generator (median ms): Megatron's loader {statistics.median(base_batch):.2f}, "
                f"with --gm-selection {statistics.median(sel_batch):.2f}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
