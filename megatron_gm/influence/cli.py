"""Command lines of tools/train_influence_model.py and tools/bootstrap_trajectories.py."""

from __future__ import annotations

import argparse
import json
import os

from megatron_gm.errors import cli_main


def _threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train the relational data influence model on oracle stores (DeepSpeed; run it with "
        "`deepspeed`, torchrun, mpirun/srun, or plain python for one process).",
    )
    p.add_argument("--data-path", required=True, help="Megatron data prefix of the candidate pool")
    p.add_argument(
        "--oracle", nargs="+", required=True, help="oracle store folder(s); several = several rounds"
    )
    p.add_argument("--output", required=True, help="model folder to write (the best model and metrics.json)")
    p.add_argument(
        "--train-dir", default="", help="training state: checkpoints, caches (default OUTPUT_train)"
    )
    p.add_argument(
        "--mode",
        choices=("full", "fast"),
        default="full",
        help="full: fine-tune the encoder (paper); fast: frozen encoder, heads on cached embeddings",
    )
    p.add_argument("--encoder", default="", help="local HF encoder folder (default: the bundled MiniLM)")
    p.add_argument(
        "--init-from",
        default="",
        metavar="MODEL",
        help="warm start from a saved influence model (the previous round's): its heads, and its encoder "
        "unless --encoder is given; with --mode fast that encoder is frozen, so a fine-tuned first round's "
        "encoder serves every later round and their pool embeddings can be cached",
    )
    p.add_argument("--chunk-len", type=int, default=0, help="tokens per chunk (default: encoder maximum)")
    p.add_argument("--max-chunks", type=int, default=0, help="chunks per document at most (default: all)")
    p.add_argument("--no-relation", action="store_true", help="train s(x) only (the MATES ablation)")
    p.add_argument("--epochs", type=int, default=0, help="default: 5 (full), 50 (fast)")
    p.add_argument("--lr", type=float, default=0.0, help="default: 5e-5 (full, paper), 1e-2 (fast)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--val-count", type=int, default=0, help="held-out trajectories (default min(1000, 5%%))")
    p.add_argument(
        "--eval-interval", type=int, default=0, help="optimizer steps between evaluations (0: epoch)"
    )
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--embed-batch-size", type=int, default=32, help="chunks per encoder call when embedding")
    p.add_argument(
        "--deepspeed_config",
        "--deepspeed-config",
        dest="deepspeed_config",
        default="",
        help="DeepSpeed JSON (batch sizes, zero_optimization, bf16, gradient_clipping)",
    )
    p.add_argument("--zero-stage", type=int, default=-1, help="override the config's ZeRO stage")
    p.add_argument("--train-batch-size", type=int, default=0, help="trajectories per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=0, help="trajectories per process per micro-step")
    p.add_argument(
        "--ablation",
        choices=("same", "fast", "none"),
        default="same",
        help="also train without the relation term: in the same mode, in fast mode, or not",
    )
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (same LR schedule)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch default)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


@cli_main
def train_main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _threads(args.threads)
    from megatron_gm.influence.train import TrainConfig, summary, train_influence_model

    cfg = TrainConfig(
        data_path=args.data_path,
        oracle=args.oracle,
        output=args.output,
        mode=args.mode,
        encoder=args.encoder,
        chunk_len=args.chunk_len,
        max_chunks=args.max_chunks,
        relation=not args.no_relation,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        val_count=args.val_count,
        eval_interval=args.eval_interval,
        seed=args.seed,
        embed_batch_size=args.embed_batch_size,
        deepspeed_config=args.deepspeed_config,
        zero_stage=args.zero_stage,
        train_batch_size=args.train_batch_size,
        micro_batch_size=args.micro_batch_size,
        ablation=args.ablation,
        max_steps=args.max_steps,
        progress=not args.no_progress,
        train_dir=args.train_dir,
        init_from=args.init_from,
    )
    result = train_influence_model(cfg)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(summary(result), flush=True)
        print(f"model: {args.output} (metrics in {os.path.join(args.output, 'metrics.json')})", flush=True)
    return 0


def bootstrap_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Beam-search bootstrap trajectories of lowest and highest predicted group influence "
        "(docs/method.md step 3); writes a trajectory file for tools/collect_oracle.py."
    )
    p.add_argument("--model", required=True, help="influence model folder (tools/train_influence_model.py)")
    p.add_argument("--data-path", required=True, help="Megatron data prefix of the candidate pool")
    p.add_argument("--output", required=True, help="trajectory folder to write")
    p.add_argument("--T", "--trajectory-length", dest="T", type=int, default=10)
    p.add_argument("--width", type=int, default=5, help="beam width: extensions kept per beam and step")
    p.add_argument(
        "--beams-per-tail", type=int, default=10000, help="beams kept per step = trajectories per tail"
    )
    p.add_argument("--tails", choices=("both", "low", "high"), default="both")
    p.add_argument("--probe-count", type=int, default=20000, help="random pool documents to search (0: all)")
    p.add_argument("--probe-indices", default="", help=".npy of document indices to search instead")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--embed-batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


@cli_main
def bootstrap_main(argv: list[str] | None = None) -> int:
    args = bootstrap_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _threads(args.threads)
    from megatron_gm.influence.bootstrap import BootstrapConfig, run_bootstrap

    cfg = BootstrapConfig(
        model=args.model,
        data_path=args.data_path,
        output=args.output,
        T=args.T,
        width=args.width,
        beams_per_tail=args.beams_per_tail,
        tails=args.tails,
        probe_count=args.probe_count,
        probe_indices=args.probe_indices,
        seed=args.seed,
        embed_batch_size=args.embed_batch_size,
        progress=not args.no_progress,
    )
    print(json.dumps(run_bootstrap(cfg), indent=2), flush=True)
    return 0
