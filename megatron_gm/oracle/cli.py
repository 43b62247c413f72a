"""``tools/collect_oracle.py``: oracle labels from a stage checkpoint, on Megatron, under torchrun or srun.

Takes pretraining's Megatron flags (model sizes, --data-path, --tokenizer-*, --seq-length,
--tensor/pipeline-model-parallel-size, --load, --seed, ...) plus the ``--gm-oracle-*`` group below.
Training flags the probe step needs but a user may leave out are taken from the checkpoint's saved args
(``megatron/checkpoint_args.py``); the LR schedule always is (Megatron's
--use-checkpoint-opt-param-scheduler). Model flags that differ from the checkpoint's are refused. Every
input is checked before Megatron starts, so bad input fails in seconds with one line. The store is
complete when ``summary.json`` (label spread, timings) appears in it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from megatron_gm.errors import GMError, cli_main
from megatron_gm.fs import atomic_write_text
from megatron_gm.megatron.args import is_number
from megatron_gm.megatron.checkpoint_args import check_architecture, inherit_flags, pre_parse
from megatron_gm.oracle.trajectories import DEFAULT_T, POLICIES

MIN_REFERENCE_TOKENS = 32  # below this the reference loss is too noisy to label anything
SUMMARY = "summary.json"  # written last, once every shard is done: the store's completion marker


def add_oracle_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """An ``extra_args_provider``: the ``--gm-oracle-*`` group (second spellings: the pipeline's names)."""
    if "--gm-oracle-output" in parser._option_string_actions:
        return parser
    g = parser.add_argument_group(title="megatron-gm oracle collection")
    g.add_argument("--gm-oracle-output", type=str, default=None, metavar="DIR", help="oracle store folder")
    g.add_argument(
        "--gm-oracle-trajectories",
        type=int,
        default=None,
        metavar="N",
        help="number of trajectories (random policy; with a file: its first N rows, default all)",
    )
    g.add_argument(
        "--gm-oracle-T",
        "--gm-oracle-traj-len",
        dest="gm_oracle_T",
        type=int,
        default=None,
        help=f"candidates per trajectory (default {DEFAULT_T}, or the trajectory file's)",
    )
    g.add_argument("--gm-oracle-policy", choices=POLICIES, default="random")
    g.add_argument(
        "--gm-oracle-trajectory-file",
        type=str,
        default=None,
        metavar="DIR",
        help="trajectory folder from tools/bootstrap_trajectories.py (policy file)",
    )
    g.add_argument(
        "--gm-oracle-candidates",
        type=str,
        default=None,
        metavar="NPY|DIR",
        help="draw random trajectories from these documents only (.npy of indices or a selection)",
    )
    g.add_argument(
        "--gm-oracle-ref-data",
        "--gm-oracle-ref",
        dest="gm_oracle_ref_data",
        type=str,
        default=None,
        metavar="JSONL",
        help="reference set D_r, jsonl[.gz] of text or context/target records (required)",
    )
    g.add_argument(
        "--gm-oracle-ref-samples",
        "--gm-oracle-ref-max-examples",
        dest="gm_oracle_ref_samples",
        type=int,
        default=64,
        help="reference samples (seeded subset): examples, or windows of --seq-length tokens when packed",
    )
    g.add_argument(
        "--gm-oracle-ref-layout",
        choices=("natural", "packed"),
        default="natural",
        help="natural: each reference record at its own length, attention never across records (the "
        "paper's setting); packed: records joined into --seq-length windows (the old layout)",
    )
    g.add_argument(
        "--gm-oracle-ref-micro-batch-size",
        type=int,
        default=16,
        help="micro-batch size of the reference forward pass",
    )
    g.add_argument(
        "--gm-oracle-seed", type=int, default=None, help="trajectory and dropout seed (default --seed)"
    )
    g.add_argument(
        "--gm-oracle-ref-seed",
        type=int,
        default=1234,
        help="seed of the reference subset; keep it across stages and rounds so all labels share one D_r",
    )
    g.add_argument("--gm-oracle-shard-size", type=int, default=16, help="trajectories per store shard")
    g.add_argument(
        "--gm-oracle-max-shards",
        type=int,
        default=None,
        help="stop after this many shards per data-parallel group (time-boxed jobs); rerun to go on",
    )
    g.add_argument(
        "--gm-oracle-time-train-steps",
        type=int,
        default=0,
        metavar="N",
        help="first time N pretraining-sized steps (with the DP all-reduce) for the cost ratio",
    )
    g.add_argument("--gm-oracle-progress", action=argparse.BooleanOptionalAction, default=True)
    return parser  # fmt: skip


@dataclasses.dataclass
class OracleConfig:
    output: str
    trajectories: int | None
    T: int | None
    policy: str
    trajectory_file: str | None
    candidates: str | None
    ref_data: str
    ref_samples: int
    ref_micro_batch_size: int
    ref_layout: str
    seed: int
    ref_seed: int
    shard_size: int
    max_shards: int | None
    time_train_steps: int
    progress: bool

    @classmethod
    def from_args(cls, args) -> OracleConfig:
        return cls(
            output=args.gm_oracle_output,
            trajectories=args.gm_oracle_trajectories,
            T=args.gm_oracle_T,
            policy=args.gm_oracle_policy,
            trajectory_file=args.gm_oracle_trajectory_file,
            candidates=args.gm_oracle_candidates,
            ref_data=args.gm_oracle_ref_data or "",
            ref_samples=args.gm_oracle_ref_samples,
            ref_micro_batch_size=args.gm_oracle_ref_micro_batch_size,
            ref_layout=args.gm_oracle_ref_layout,
            seed=args.seed if args.gm_oracle_seed is None else args.gm_oracle_seed,
            ref_seed=args.gm_oracle_ref_seed,
            shard_size=args.gm_oracle_shard_size,
            max_shards=args.gm_oracle_max_shards,
            time_train_steps=args.gm_oracle_time_train_steps,
            progress=args.gm_oracle_progress,
        )

    def validate(self) -> OracleConfig:
        if not self.output:
            raise GMError("--gm-oracle-output DIR is required (the oracle store folder)")
        if self.T is not None and self.T < 1:
            raise GMError(f"--gm-oracle-T {self.T}: a trajectory needs at least one step (T >= 1)")
        if self.trajectories is not None and self.trajectories < 1:
            raise GMError(f"--gm-oracle-trajectories {self.trajectories}: must be at least 1")
        if self.ref_samples < 1 or self.ref_micro_batch_size < 1 or self.shard_size < 1:
            raise GMError(
                "--gm-oracle-ref-samples, --gm-oracle-ref-micro-batch-size and --gm-oracle-shard-size must be >= 1"
            )
        if self.max_shards is not None and self.max_shards < 1:
            raise GMError(f"--gm-oracle-max-shards {self.max_shards}: must be at least 1")
        for flag, value in (
            ("--gm-oracle-seed (or --seed)", self.seed),
            ("--gm-oracle-ref-seed", self.ref_seed),
        ):
            if not 0 <= value < 2**31:
                raise GMError(f"{flag} {value}: must be in [0, 2**31)")
        if self.time_train_steps < 0:
            raise GMError(f"--gm-oracle-time-train-steps {self.time_train_steps}: must be 0 or more")
        if not self.ref_data:
            raise GMError("--gm-oracle-ref-data JSONL is required (the reference set the labels measure)")
        if not os.path.isfile(self.ref_data):
            raise GMError(f"{self.ref_data}: reference set not found; pass --gm-oracle-ref-data JSONL")
        return self


def check_args(args) -> None:
    if args.no_load_optim or args.finetune:
        raise GMError("the oracle needs the checkpoint's optimizer state: drop --no-load-optim/--finetune")
    if args.use_distributed_optimizer:
        raise GMError(
            "the distributed optimizer shards Adam state over data-parallel ranks, which probe different "
            "trajectories; drop --use-distributed-optimizer for oracle collection"
        )
    if args.context_parallel_size > 1:
        raise GMError("--context-parallel-size > 1 is not supported by oracle collection")
    if args.rampup_batch_size is not None:
        raise GMError(
            "drop --rampup-batch-size: a probe step advances the schedule by one fixed global batch"
        )


def pool_prefix(args) -> str:
    paths = [p for p in (args.data_path or []) if not is_number(p)]
    if len(paths) != 1:
        raise GMError(f"--data-path: give exactly one dataset prefix (the candidate pool), got {len(paths)}")
    return paths[0]


def check_tokenizer(args, info) -> None:
    """The reference set is tokenized with the run's tokenizer: it must be the pool's (and cover its ids)."""
    from megatron_gm.data.indexed import check_tokenizer as check

    null = getattr(args, "tokenizer_type", None) == "NullTokenizer"
    check(info, getattr(args, "tokenizer_model", None), getattr(args, "vocab_size", None) if null else None)


def prepare(argv: list[str]):
    """Everything checkable before Megatron starts: args, checkpoint, pool, trajectories, reference set."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer

    from megatron_gm.data.indexed import load_dataset_info
    from megatron_gm.data.reference import build_reference
    from megatron_gm.megatron import runtime
    from megatron_gm.megatron.checkpoint import inspect_checkpoint, require_optimizer_state
    from megatron_gm.oracle.trajectories import build_source
    from megatron_gm.procs import lock_output

    pre = pre_parse(argv)
    ckpt = inspect_checkpoint(pre.load, pre.ckpt_step)
    require_optimizer_state(ckpt)
    inherited = inherit_flags(argv, ckpt)
    args = runtime.parse_args([*argv, *inherited], extra_args_provider=add_oracle_args)
    cfg = OracleConfig.from_args(args).validate()
    check_args(args)
    lock_output(cfg.output, "--gm-oracle-output")  # rank 0, before Megatron starts
    prefix = pool_prefix(args)
    info = load_dataset_info(prefix)
    check_tokenizer(args, info)
    dataset = IndexedDataset(prefix)
    if len(dataset) != info.num_docs:
        raise GMError(
            f"{prefix}.gm.json: describes {info.num_docs} documents, the .idx {len(dataset)}; rerun preprocessing"
        )
    source = build_source(
        cfg.policy, T=cfg.T, num_trajectories=cfg.trajectories, seed=cfg.seed,
        doc_lengths=dataset.sequence_lengths, dataset_fingerprint=info.fingerprint,
        candidates=cfg.candidates, trajectory_file=cfg.trajectory_file,
    )  # fmt: skip
    tokenizer = build_tokenizer(args)
    check_architecture(args, ckpt, tokenizer.vocab_size)
    reference = build_reference(
        cfg.ref_data, tokenizer.tokenize, tokenizer.eod, args.seq_length, cfg.ref_samples, cfg.ref_seed,
        layout=cfg.ref_layout,
    )  # fmt: skip
    if reference.num_tokens < MIN_REFERENCE_TOKENS:
        raise GMError(
            f"{cfg.ref_data}: the reference set holds {reference.num_tokens} loss tokens, fewer than "
            f"{MIN_REFERENCE_TOKENS}: its loss is noise, not a label; pass a larger --gm-oracle-ref-data "
            "or more --gm-oracle-ref-samples"
        )
    return args, cfg, ckpt, inherited, info, dataset, source, reference, tokenizer


def build_manifest(args, cfg, ckpt, info, source, reference):
    from megatron_gm.manifest import Manifest

    config = {
        **source.manifest_config(),
        "reference_hash": reference.digest,
        "reference_samples": len(reference),
        "reference_tokens": reference.num_tokens,
        "reference_layout": reference.layout,
        "reference_evaluated_tokens": reference.evaluated_tokens,
        "reference_file": os.path.basename(reference.source),
        "seq_length": args.seq_length,
    }
    inputs = {"reference": reference.digest, **source.inputs}
    return Manifest("oracle", info.fingerprint, stage=args.gm_stage, iteration=ckpt.iteration, seed=cfg.seed,
                    config=config, inputs=inputs)  # fmt: skip


def megatron_group():
    import torch
    from megatron.core import mpu

    from megatron_gm.oracle.collect import Group

    return Group(
        rank=torch.distributed.get_rank(),
        dp_rank=mpu.get_data_parallel_rank(),
        dp_size=mpu.get_data_parallel_world_size(),
        writer=mpu.get_tensor_model_parallel_rank() == 0 and mpu.is_pipeline_last_stage(ignore_virtual=True),
    )


def run(argv: list[str]) -> dict:
    import torch

    from megatron_gm.megatron import runtime
    from megatron_gm.megatron.samples import SampleFormat
    from megatron_gm.oracle.collect import collect
    from megatron_gm.oracle.megatron_engine import MegatronEngine
    from megatron_gm.oracle.store import label_stats, load_oracle

    args, cfg, ckpt, inherited, info, dataset, source, reference, tokenizer = prepare(argv)
    if not args.override_opt_param_scheduler:
        args.use_checkpoint_opt_param_scheduler = True  # the LR schedule position and shape of the checkpoint
    runtime.initialize()
    session = runtime.build(args)
    rank0 = torch.distributed.get_rank() == 0
    if session.iteration != ckpt.iteration:
        raise GMError(f"{args.load}: loaded iteration {session.iteration}, expected {ckpt.iteration}")
    if rank0 and inherited:
        print(f"oracle: from the checkpoint's args: {' '.join(inherited)}", flush=True)
    increment = ckpt.saved("global_batch_size") or args.global_batch_size
    engine = MegatronEngine(
        session, dataset, SampleFormat.from_args(args, tokenizer.eod), reference,
        ref_micro_batch_size=cfg.ref_micro_batch_size, scheduler_increment=increment,
    )  # fmt: skip
    train_step_s = None
    if cfg.time_train_steps > 0:
        mbs = ckpt.saved("micro_batch_size") or 1
        dp = session.args.data_parallel_size
        nmb = max(1, increment // (mbs * dp))
        docs = source.documents([0])[0] if source.num_trajectories else [0]
        docs = [docs[i % len(docs)] for i in range(mbs * nmb)]
        train_step_s = engine.time_training_steps(cfg.time_train_steps, mbs, nmb, docs)
    manifest = build_manifest(args, cfg, ckpt, info, source, reference)
    group = megatron_group()
    result = collect(engine, source, cfg.output, manifest, cfg.shard_size, group,
                     progress=cfg.progress, stop_after=cfg.max_shards)  # fmt: skip
    summary = {
        "output": cfg.output, "iteration": ckpt.iteration, "trajectories": result.trajectories,
        "data_parallel_groups": group.dp_size, "seconds": round(result.seconds, 3),
        "trajectories_per_hour": round(3600 * result.per_second * group.dp_size, 1),
        "base_ref_loss": result.base_loss, "reference_samples": len(reference),
        "reference_tokens": reference.num_tokens, "reference_layout": reference.layout,
        "reference_evaluated_tokens": reference.evaluated_tokens, "T": source.T, "complete": result.complete,
        "probe_train_step_s": engine.mean_time("step"), "reference_loss_s": engine.mean_time("ref"),
    }  # fmt: skip
    summary = {k: (None if isinstance(v, float) and v != v else v) for k, v in summary.items()}  # NaN -> null
    if train_step_s is not None:
        summary["pretrain_step_s"] = train_step_s
        step, ref = summary["probe_train_step_s"], summary["reference_loss_s"]
        if step is not None and ref is not None:  # a probe step = one 1-sample optimizer step + one L_ref
            summary["probe_step_over_train_step"] = (step + ref) / train_step_s
    if rank0:
        if result.complete:
            summary["labels"] = label_stats(load_oracle(cfg.output, dataset_fingerprint=info.fingerprint))
            path = Path(cfg.output) / SUMMARY
            if (
                result.trajectories or not path.exists()
            ):  # a rerun of a finished store keeps the first summary
                atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
        print("oracle summary: " + json.dumps(summary), flush=True)
    return summary


@cli_main
def main(argv: list[str] | None = None) -> int:
    try:
        run(list(sys.argv[1:] if argv is None else argv))
    except GMError:
        if int(os.environ.get("LOCAL_RANK", "0")) != 0:  # every rank of the node has the same error
            sys.exit(2)
        raise
    return 0
