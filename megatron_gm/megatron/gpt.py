"""The GPT pieces ``pretrain()`` needs: dataset provider, forward step, model config.

These follow Megatron-LM's ``pretrain_gpt.py`` for megatron-core 0.19 (plain pretraining: no SFT, FIM,
ModelOpt or knowledge distillation). The layer spec comes from ``--transformer-impl`` (``local`` on CPU,
Transformer Engine where it is installed), chosen by Megatron's own ``GPTModelConfig``.
"""

from __future__ import annotations

from functools import partial

import torch
from megatron.core import mpu
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.parallel_state import get_context_parallel_group, get_hybrid_data_context_parallel_groups
from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
from megatron.core.transformer.multi_token_prediction import get_mtp_ranks, mtp_on_this_rank
from megatron.core.utils import (
    flatten_batch_for_packed_sequences,
    get_attr_wrapped_model,
    get_batch_on_this_cp_rank,
    get_batch_on_this_tp_rank,
)
from megatron.training import get_args, get_timers, print_rank_0
from megatron.training.arguments import core_transformer_config_from_args
from megatron.training.utils import get_blend_and_blend_per_split, is_first_or_last_pipeline_stage

BATCH_KEYS = (
    "attention_mask",
    "cu_seqlens",
    "cu_seqlens_padded",
    "hybrid_cp_group",
    "labels",
    "local_cp_size",
    "loss_mask",
    "max_seqlen",
    "position_ids",
    "tokens",
)


def model_config(args):
    """Megatron's GPT model config from the parsed flags (what ``pretrain()`` builds the model from)."""
    from megatron.training.argument_utils import gpt_config_from_args

    return gpt_config_from_args(args)


def _mtp_here(vp_stage) -> bool:
    config = core_transformer_config_from_args(get_args())
    return mtp_on_this_rank(
        layout=config.pipeline_model_parallel_layout,
        mtp_num_layers=config.mtp_num_layers,
        ignore_virtual=False,
        vp_stage=vp_stage,
    )


def get_batch(data_iterator, vp_stage=None) -> dict:
    """Read a micro-batch on TP rank 0, broadcast it in the TP group, slice it for context parallelism."""
    args = get_args()
    has_cu_seqlens = bool(args.dataloader_inter_document_masking)
    mtp_here = _mtp_here(vp_stage)
    if not is_first_or_last_pipeline_stage(vp_stage) and not mtp_here and not has_cu_seqlens:
        return dict.fromkeys(BATCH_KEYS)
    tp_rank = mpu.get_tensor_model_parallel_rank()
    batch = {}
    if tp_rank == 0:
        batch = next(data_iterator)
        for key in BATCH_KEYS:
            value = batch.get(key)
            batch[key] = value.cuda(non_blocking=True) if value is not None else None
    batch = get_batch_on_this_tp_rank(
        batch,
        broadcast_src_rank=mpu.get_tensor_model_parallel_src_rank(),
        broadcast_group=mpu.get_tensor_model_parallel_group(),
        has_cu_seqlens=has_cu_seqlens,
        is_hybrid_cp=args.hybrid_context_parallel,
        create_attention_mask_in_dataloader=args.create_attention_mask_in_dataloader,
        cp_size=args.context_parallel_size,
        tp_rank=tp_rank,
        micro_batch_size=args.micro_batch_size,
        seq_length=args.seq_length,
        mtp_on_this_rank=mtp_here,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        is_pipeline_first_stage=mpu.is_pipeline_first_stage(),
        is_pipeline_last_stage=mpu.is_pipeline_last_stage(),
    )
    batch = flatten_batch_for_packed_sequences(batch)
    if not is_first_or_last_pipeline_stage(vp_stage) and not mtp_here:
        return {
            k: batch.get(k) if k in ("cu_seqlens", "cu_seqlens_padded", "max_seqlen") else None
            for k in BATCH_KEYS
        }
    batch = get_batch_on_this_cp_rank(
        batch,
        is_hybrid_cp=args.hybrid_context_parallel,
        cp_group=get_context_parallel_group(),
        hybrid_cp_group_func=get_hybrid_data_context_parallel_groups,
        use_per_sequence_balancing=bool(args.dataloader_inter_document_masking),
    )
    return {k: batch.get(k) for k in BATCH_KEYS}


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor, model=None):
    """Sum of masked token losses, the token count, and the report Megatron averages over DP."""
    losses = output_tensor.view(-1).float()
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().clone().detach().to(torch.int)
    report = {"lm loss": torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])}
    return loss, num_tokens, report


def forward_step(data_iterator, model, return_schedule_plan: bool = False):
    """One micro-batch forward; returns the output and the loss function Megatron's schedule calls."""
    from megatron.core.packed_seq_params import PackedSeqParams

    args = get_args()
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    b = get_batch(data_iterator, get_attr_wrapped_model(model, "vp_stage"))
    timers("batch-generator").stop()
    packed = None
    if b["cu_seqlens"] is not None:
        cu = b["cu_seqlens"].squeeze(0)
        cu_pad = b["cu_seqlens_padded"].squeeze(0) if b["cu_seqlens_padded"] is not None else None
        max_len = int(b["max_seqlen"].item())
        packed = PackedSeqParams(
            qkv_format="thd",
            cu_seqlens_q=cu_pad if cu_pad is not None else cu,
            cu_seqlens_kv=cu_pad if cu_pad is not None else cu,
            cu_seqlens_q_padded=cu_pad,
            cu_seqlens_kv_padded=cu_pad,
            max_seqlen_q=max_len,
            max_seqlen_kv=max_len,
            tokens_per_sample=args.seq_length,
        )
    output = model(
        b["tokens"],
        b["position_ids"],
        b["attention_mask"],
        labels=b["labels"],
        loss_mask=b["loss_mask"],
        packed_seq_params=packed,
    )
    return output, partial(loss_func, b["loss_mask"], model=model)


def dataset_config(args) -> GPTDatasetConfig:
    """Megatron's GPT dataset config from the flags (the fields pretrain_gpt.py fills)."""
    blend, blend_per_split = get_blend_and_blend_per_split(args)
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=args.split,
        multiple_validation_sets=args.multiple_validation_sets,
        full_validation=args.full_validation,
        num_dataset_builder_threads=args.num_dataset_builder_threads,
        path_to_cache=args.data_cache_path,
        mmap_bin_files=args.mmap_bin_files,
        tokenizer=build_tokenizer(args),
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=args.create_attention_mask_in_dataloader,
        object_storage_cache_path=args.object_storage_cache_path,
        mid_level_dataset_surplus=args.mid_level_dataset_surplus,
        allow_ambiguous_pad_tokens=args.allow_ambiguous_pad_tokens,
        fast_cache_load=args.dataloader_fast_cache_load,
        defer_npy_index_mmap=args.dataloader_defer_npy_index_mmap,
        context_parallel_size=args.context_parallel_size,
        data_parallel_size=args.data_parallel_size,
        sequence_parallel_size=args.tensor_model_parallel_size * args.sequence_parallel,
        hybrid_context_parallel=args.hybrid_context_parallel,
        inter_document_masking=args.dataloader_inter_document_masking,
    )


def is_dataset_built_on_rank(vp_stage=None) -> bool:
    """Datasets live on TP rank 0 of the first and last pipeline stages (and MTP stages)."""
    if mpu.get_tensor_model_parallel_rank() != 0:
        return False
    return is_first_or_last_pipeline_stage(vp_stage) or _mtp_here(vp_stage)


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    """Megatron's GPT datasets (or mock ones with ``--mock-data``) for the requested sample counts."""
    args = get_args()
    dataset_type = MockGPTDataset if args.mock_data else GPTDataset
    print_rank_0("> building train, validation, and test datasets for GPT ...")
    datasets = BlendedMegatronDatasetBuilder(
        dataset_type,
        train_val_test_num_samples,
        partial(is_dataset_built_on_rank, vp_stage=vp_stage),
        dataset_config(args),
    ).build()
    print_rank_0("> finished creating GPT datasets ...")
    return datasets


# Every rank calls the provider (core datasets are distributed-aware), as in pretrain_gpt.py.
train_valid_test_datasets_provider.is_distributed = True


def get_embedding_ranks(pp_ranks: list[int]) -> list[int]:
    """First pipeline stage, plus the last one when embeddings are tied, plus MTP stages."""
    args = get_args()
    ranks = {pp_ranks[0]}
    if len(pp_ranks) > 1:
        if not args.untie_embeddings_and_output_weights:
            ranks.add(pp_ranks[-1])
        ranks.update(get_mtp_ranks(pp_ranks, core_transformer_config_from_args(args)))
    return sorted(ranks)
