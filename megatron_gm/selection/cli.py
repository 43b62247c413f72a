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

from megatron_gm.config import add_dataclass_args, from_namespace
from megatron_gm.dist import add_log_level_arg, tool_logging
from megatron_gm.errors import GMError, cli_main

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def build_parser() -> argparse.ArgumentParser:
    from megatron_gm.selection.config import SelectConfig

    p = argparse.ArgumentParser(
        prog="select_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataclass_args(p, SelectConfig)
    add_log_level_arg(p)
    return p


@cli_main
def run(args: argparse.Namespace) -> int:
    from megatron_gm.selection.comm import Comm
    from megatron_gm.selection.config import SelectConfig
    from megatron_gm.selection.run import run_selection

    cfg = from_namespace(SelectConfig, args)
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


def threads_flag(argv: list[str]) -> int | None:
    """``--threads`` read before the config's module loads numpy (None: not given or not a number, left to
    the full parser)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--threads", default=None)
    try:
        return int(pre.parse_known_args(argv)[0].threads)
    except (TypeError, ValueError):
        return None


DEFAULT_THREADS = 1  # SelectConfig.threads' default, needed before its module (and numpy) is imported


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    threads = threads_flag(argv)
    threads = DEFAULT_THREADS if threads is None else threads
    if threads < 1:
        print(f"error: --threads must be >= 1, got {threads}", file=sys.stderr)
        return 2
    for var in THREAD_VARS:  # before numpy, torch and faiss load their thread pools
        os.environ[var] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    with tool_logging(args.log_level):
        return run(args)
