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
from typing import Any

from megatron_gm.config import SettingError, add_dataclass_args, check_settings, from_namespace, setting
from megatron_gm.dist import get_logger, is_rank0
from megatron_gm.errors import GMError, cli_main
from megatron_gm.fs import atomic_write_text
from megatron_gm.megatron.args import is_number
from megatron_gm.megatron.checkpoint_args import check_architecture, inherit_flags, pre_parse
from megatron_gm.oracle.trajectories import DEFAULT_T, POLICIES

log = get_logger(__name__)

MIN_REFERENCE_TOKENS = 32  # below this the reference loss is too noisy to label anything
SUMMARY = "summary.json"  # written last, once every shard is done: the store's completion marker


def add_oracle_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """An ``extra_args_provider``: the ``--gm-oracle-*`` group, one flag per ``OracleConfig`` field."""
    if "--gm-oracle-output" in parser._option_string_actions:
        return parser
    return add_dataclass_args(parser, OracleConfig, PREFIX, title="megatron-gm oracle collection")


PREFIX = "--gm-oracle-"


@dataclasses.dataclass
class OracleConfig:
    """The oracle's settings; each is the flag ``--gm-oracle-<field>`` (dashes for underscores)."""

    output: str | None = setting(None, "oracle store folder", metavar="DIR")
    trajectories: int | None = setting(
        None, "number of trajectories (random policy; with a file: its first N rows, default all)", low=1,
        metavar="N",
    )  # fmt: skip
    T: int | None = setting(
        None, f"candidates per trajectory (default {DEFAULT_T}, or the trajectory file's)"
    )
    policy: str = setting("random", "random: uniform trajectories; file: --gm-oracle-trajectory-file's",
                          choices=POLICIES)  # fmt: skip
    trajectory_file: str | None = setting(
        None, "trajectory folder from tools/bootstrap_trajectories.py (policy file)", metavar="DIR"
    )
    candidates: str | None = setting(
        None, "draw random trajectories from these documents only (.npy of indices or a selection)",
        metavar="NPY|DIR",
    )  # fmt: skip
    ref_data: str | None = setting(
        None, "reference set D_r, jsonl[.gz] of text or context/target records (required)", metavar="JSONL"
    )
    ref_samples: int = setting(
        64,
        "reference samples (seeded subset): examples, or windows of --seq-length tokens when packed",
        low=1,
    )
    ref_layout: str = setting(
        "natural",
        "natural: each reference record at its own length, attention never across records (the paper's "
        "setting); packed: records joined into --seq-length windows (the old layout)",
        choices=("natural", "packed"),
    )
    ref_micro_batch_size: int = setting(16, "micro-batch size of the reference forward pass", low=1)
    seed: int | None = setting(None, "trajectory and dropout seed (default --seed)", low=0, high=2**31 - 1)
    ref_seed: int = setting(
        1234, "seed of the reference subset; keep it across stages and rounds so all labels share one D_r",
        low=0, high=2**31 - 1,
    )  # fmt: skip
    shard_size: int = setting(16, "trajectories per store shard", low=1)
    max_shards: int | None = setting(
        None, "stop after this many shards per data-parallel group (time-boxed jobs); rerun to go on", low=1
    )
    time_train_steps: int = setting(
        0,
        "first time N pretraining-sized steps (with the DP all-reduce) for the cost ratio",
        low=0,
        metavar="N",
    )
    progress: bool = setting(True, "progress bar")

    @classmethod
    def from_args(cls, args) -> OracleConfig:
        """From Megatron's parsed args: the seed defaults to --seed, the reference set to the bundled one."""
        return from_namespace(
            cls, args, PREFIX, seed=args.seed if args.gm_oracle_seed is None else args.gm_oracle_seed,
            ref_data=args.gm_oracle_ref_data or "",
        )  # fmt: skip

    def validate(self, files: bool = True) -> OracleConfig:
        """Every rule; ``files``: also that the reference set exists (the pipeline checks it itself)."""
        if not self.output:
            raise GMError("--gm-oracle-output DIR is required (the oracle store folder)")
        if self.T is not None and self.T < 1:
            raise SettingError("--gm-oracle-T", "T", self.T, "a trajectory needs at least one step (T >= 1)")
        check_settings(self, PREFIX)
        if files and not self.ref_data:
            raise GMError("--gm-oracle-ref-data JSONL is required (the reference set the labels measure)")
        if files and not os.path.isfile(self.ref_data or ""):
            raise GMError(f"{self.ref_data}: reference set not found; pass --gm-oracle-ref-data JSONL")
        return self


@dataclasses.dataclass
class Prepared:
    """What ``prepare`` checked and built before Megatron starts."""

    args: argparse.Namespace  # Megatron's parsed args (the command line plus the inherited flags)
    cfg: OracleConfig
    ckpt: Any  # the inspected stage checkpoint (megatron.checkpoint.Checkpoint)
    inherited: list[str]  # flags taken from the checkpoint's saved args
    info: Any  # the pool's DatasetInfo
    dataset: Any  # the pool's IndexedDataset
    source: Any  # the trajectory source
    reference: Any  # the reference set
    tokenizer: Any


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


def prepare(argv: list[str]) -> Prepared:
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
    return Prepared(args, cfg, ckpt, inherited, info, dataset, source, reference, tokenizer)


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


def build_engine(prep: Prepared, **engine_kwargs):
    """Start Megatron on ``prep``'s args, load the stage checkpoint and wrap it in the probe engine.

    Returns (session, engine, scheduler increment); ``engine_kwargs`` go to ``MegatronEngine``."""
    from megatron_gm.megatron import runtime
    from megatron_gm.megatron.samples import SampleFormat
    from megatron_gm.oracle.megatron_engine import MegatronEngine

    args, ckpt = prep.args, prep.ckpt
    if not args.override_opt_param_scheduler:
        args.use_checkpoint_opt_param_scheduler = True  # the LR schedule position and shape of the checkpoint
    runtime.initialize()
    session = runtime.build(args)
    if session.iteration != ckpt.iteration:
        raise GMError(f"{args.load}: loaded iteration {session.iteration}, expected {ckpt.iteration}")
    increment = ckpt.saved("global_batch_size") or args.global_batch_size
    engine = MegatronEngine(
        session, prep.dataset, SampleFormat.from_args(args, prep.tokenizer.eod), prep.reference,
        ref_micro_batch_size=prep.cfg.ref_micro_batch_size, scheduler_increment=increment, **engine_kwargs,
    )  # fmt: skip
    return session, engine, increment


def run(argv: list[str]) -> dict:
    from megatron_gm.oracle.collect import collect
    from megatron_gm.oracle.store import label_stats, load_oracle

    prep = prepare(argv)
    args, cfg, ckpt, inherited, info = prep.args, prep.cfg, prep.ckpt, prep.inherited, prep.info
    source, reference = prep.source, prep.reference
    session, engine, increment = build_engine(prep)
    if inherited:
        log.info(f"oracle: from the checkpoint's args: {' '.join(inherited)}")
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
    if is_rank0():
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
