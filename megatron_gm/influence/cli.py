"""Command lines of tools/train_influence_model.py and tools/bootstrap_trajectories.py."""

from __future__ import annotations

import argparse
import json
import os

from megatron_gm.config import add_dataclass_args, from_namespace
from megatron_gm.dist import add_log_level_arg, is_rank0, tool_logging
from megatron_gm.errors import cli_main


def _threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


def train_parser() -> argparse.ArgumentParser:
    from megatron_gm.influence.train import TrainConfig

    p = argparse.ArgumentParser(
        description="Train the relational data influence model on oracle stores (DeepSpeed; run it with "
        "`deepspeed`, torchrun, mpirun/srun, or plain python for one process).",
    )
    add_dataclass_args(p, TrainConfig)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch default)")
    add_log_level_arg(p)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


@cli_main
def train_main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the config's module imports the encoder's libraries
    args = train_parser().parse_args(argv)
    with tool_logging(args.log_level):
        _threads(args.threads)
        from megatron_gm.influence.train import TrainConfig, summary, train_influence_model

        result = train_influence_model(from_namespace(TrainConfig, args))
        if is_rank0():
            print(summary(result), flush=True)
            print(
                f"model: {args.output} (metrics in {os.path.join(args.output, 'metrics.json')})", flush=True
            )
        return 0


def bootstrap_parser() -> argparse.ArgumentParser:
    from megatron_gm.influence.bootstrap import BootstrapConfig

    p = argparse.ArgumentParser(
        description="Beam-search bootstrap trajectories of lowest and highest predicted group influence "
        "(docs/method.md step 3); writes a trajectory file for tools/collect_oracle.py."
    )
    add_dataclass_args(p, BootstrapConfig)
    p.add_argument("--threads", type=int, default=0)
    add_log_level_arg(p)
    return p


@cli_main
def bootstrap_main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the config's module imports the encoder's libraries
    args = bootstrap_parser().parse_args(argv)
    with tool_logging(args.log_level):
        _threads(args.threads)
        from megatron_gm.influence.bootstrap import BootstrapConfig, run_bootstrap

        print(json.dumps(run_bootstrap(from_namespace(BootstrapConfig, args)), indent=2), flush=True)
        return 0
