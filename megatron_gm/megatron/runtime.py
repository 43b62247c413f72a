"""Megatron in-process, the way ``pretrain()`` sets it up: for tools that work from a stage checkpoint.

    session = runtime.start(["--num-layers", "2", ..., "--load", "ckpt"])   # args, init, model, optimizer
    it = runtime.train_data_iterator()          # the stage's training iterator (selection-aware)
    losses = runtime.forward_losses(session, it) # forward only, Megatron's schedule

``start`` parses a flag list with our provider (``--gm-*`` included), initializes Megatron (CPU shim
when there is no CUDA), builds the GPT model, optimizer and scheduler with Megatron's
``setup_model_and_optimizer`` and, with ``--load``, loads the checkpoint (model, optimizer, scheduler,
RNG) exactly as pretrain does. Megatron keeps global state: one session per process.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any


@dataclasses.dataclass
class Session:
    args: Any
    config: Any  # PretrainConfigContainer
    model: list  # one module per virtual pipeline stage
    optimizer: Any
    scheduler: Any

    @property
    def iteration(self) -> int:
        return self.args.iteration


def parse_args(argv: list[str], extra_args_provider=None):
    """Megatron's parse_and_validate_args over ``argv`` (without the program name), ``--gm-*`` added."""
    import megatron_gm
    from megatron_gm.megatron import cpu_shim
    from megatron_gm.megatron.args import extra_args_provider as gm_provider

    megatron_gm.install()
    if cpu_shim.is_active():
        argv, _ = cpu_shim.with_cpu_flags(list(argv))
    from megatron.training.arguments import parse_and_validate_args

    saved = sys.argv
    sys.argv = ["megatron_gm", *argv]
    try:
        return parse_and_validate_args(
            extra_args_provider=gm_provider(extra_args_provider, for_training=False)
        )
    finally:
        sys.argv = saved


def initialize() -> None:
    """torch.distributed, model-parallel groups and seeds, as pretrain() does (reads the global args)."""
    from megatron.training.initialize import initialize_megatron, set_jit_fusion_options

    from megatron_gm.megatron import cpu_shim, gpt

    initialize_megatron(allow_no_cuda=cpu_shim.is_active(), get_embedding_ranks=gpt.get_embedding_ranks)
    from megatron.training import get_args

    set_jit_fusion_options(tp_size=get_args().tensor_model_parallel_size)


def build(args) -> Session:
    """GPT model + optimizer + scheduler through Megatron's setup_model_and_optimizer (loads ``--load``)."""
    from megatron.core.enums import ModelType
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.training import setup_model_and_optimizer

    from megatron_gm.megatron import gpt

    config = pretrain_cfg_container_from_args(args, gpt.model_config(args))
    model, optimizer, scheduler = setup_model_and_optimizer(
        ModelType.encoder_or_decoder,
        checkpointing_context={},
        cfg_container=config,
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
    )
    return Session(args=args, config=config, model=model, optimizer=optimizer, scheduler=scheduler)


def start(argv: list[str], extra_args_provider=None) -> Session:
    """parse_args + initialize + build: a model and optimizer at the loaded checkpoint."""
    args = parse_args(argv, extra_args_provider)
    initialize()
    return build(args)


def train_data_iterator():
    """The training data iterator pretrain() would use now (our loader: the stage's selection order)."""
    from megatron.training.training import build_train_valid_test_data_iterators

    from megatron_gm.megatron import gpt

    train, _, _ = build_train_valid_test_data_iterators(gpt.train_valid_test_datasets_provider)
    return train


def forward_losses(session: Session, data_iterator, num_microbatches: int | None = None) -> list[dict]:
    """Forward-only pass over one global batch with Megatron's schedule; the per-micro-batch reports.

    On the last pipeline stage each report holds ``"lm loss"`` = [sum of token losses, token count].
    """
    from megatron.core.num_microbatches_calculator import get_num_microbatches
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_gm.megatron import gpt

    args = session.args
    for m in session.model:
        m.eval()
    try:
        return get_forward_backward_func()(
            forward_step_func=gpt.forward_step,
            data_iterator=data_iterator,
            model=session.model,
            num_microbatches=num_microbatches or get_num_microbatches(),
            seq_length=args.seq_length,
            micro_batch_size=args.micro_batch_size,
            forward_only=True,
        )
    finally:
        for m in session.model:
            m.train()
