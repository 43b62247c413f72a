"""``tools/select_data.py``: score the pool, cluster, select, write one selection artifact.

Run it as one process, under ``mpirun -n N`` (Open MPI as root: ``--allow-run-as-root --oversubscribe``)
or under ``srun --mpi=pmi2`` (or pmix). Every rank must see the scores folder (a shared file system).

    mpirun -n 4 python tools/select_data.py --data-path data/pool_text_document \\
        --gm-influence-model runs/s0/influence --gm-stage 1 --output runs/s0/selection

Or select from precomputed scores (a folder written by a scoring run or by
``megatron_gm.selection.score_store.write_scores``): ``--scores-from runs/s0/selection.scores``.

The artifact has the same bytes for any number of ranks at the same ``--threads``. A killed run, rerun
with the same flags, scores only the shards that were not finished.
"""

from __future__ import annotations

import argparse
import os
import sys

from megatron_gm.errors import GMError, cli_main

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="select_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("inputs")
    g.add_argument("--data-path", default=None, help="dataset prefix (the .bin/.idx without extension)")
    g.add_argument("--gm-influence-model", default=None, help="influence model folder (scores the pool)")
    g.add_argument("--scores-from", default=None, help="a finished scores folder: select without scoring")
    g.add_argument(
        "--scores-dir", default=None, help="where scoring writes its shards (default OUTPUT.scores)"
    )
    g.add_argument(
        "--embed-cache",
        default=None,
        help="folder of pool embeddings kept across rounds; with a frozen encoder (influence --mode fast) "
        "later rounds only apply the new heads",
    )
    g = p.add_argument_group("selection")
    g.add_argument("--gm-select-method", default="group", choices=("group", "individual", "quota", "random"))
    g.add_argument(
        "--gm-select-ratio", type=float, default=0.5, help="share of each cluster to keep, in (0, 1]"
    )
    g.add_argument(
        "--gm-num-clusters",
        type=int,
        default=None,
        help="k-means clusters (default: about 3000 documents a cluster, as in the paper)",
    )
    g.add_argument("--gm-select-temperature", type=float, default=1.0, help="Gumbel temperature (individual)")
    g.add_argument("--gm-kmeans-iters", type=int, default=100, help="k-means iterations (paper: 100)")
    g.add_argument(
        "--gm-kmeans-points-per-centroid",
        type=int,
        default=256,
        help="k-means trains on a seeded sample of this many documents per centroid",
    )
    g.add_argument("--seed", type=int, default=1234, help="k-means, Gumbel and random seed (paper: 1234)")
    g = p.add_argument_group("output")
    g.add_argument("--gm-stage", type=int, required=True, help="the stage that trains on this selection")
    g.add_argument("--output", required=True, help="selection folder to write (what --gm-selection reads)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing selection at --output")
    g = p.add_argument_group("runtime")
    g.add_argument("--shard-size", type=int, default=1000, help="documents per score shard (resume unit)")
    g.add_argument("--micro-batch-size", type=int, default=32, help="encoder batch size when scoring")
    g.add_argument("--threads", type=int, default=1, help="CPU threads per rank (torch, BLAS, faiss)")
    g.add_argument(
        "--device", default="auto", choices=("auto", "cpu"), help="scoring device (auto: a GPU if any)"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars (the summary line stays)")
    return p


@cli_main
def run(args: argparse.Namespace) -> int:
    from megatron_gm.selection.comm import Comm
    from megatron_gm.selection.config import SelectConfig
    from megatron_gm.selection.run import run_selection

    cfg = SelectConfig(
        output=args.output,
        stage=args.gm_stage,
        data_path=args.data_path,
        influence_model=args.gm_influence_model,
        scores_from=args.scores_from,
        scores_dir=args.scores_dir,
        embed_cache=args.embed_cache,
        method=args.gm_select_method,
        ratio=args.gm_select_ratio,
        num_clusters=args.gm_num_clusters,
        seed=args.seed,
        temperature=args.gm_select_temperature,
        kmeans_iters=args.gm_kmeans_iters,
        kmeans_points_per_centroid=args.gm_kmeans_points_per_centroid,
        shard_size=args.shard_size,
        batch_size=args.micro_batch_size,
        threads=args.threads,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    try:
        comm = Comm()
    except GMError:
        if os.environ.get("SLURM_PROCID", "0") != "0":  # every task has the same error; task 0 reports it
            sys.exit(2)
        raise
    try:
        summary = run_selection(cfg, comm)
    except GMError:
        if comm.rank != 0:  # every rank has the same error; rank 0 reports it
            sys.exit(2)
        raise
    if comm.is_root:
        print(summary.line(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    for var in THREAD_VARS:  # before numpy, torch and faiss load their thread pools
        os.environ[var] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run(args)
