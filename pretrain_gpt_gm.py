#!/usr/bin/env python
"""Pretrain a GPT with Megatron's own ``pretrain()``, with Group-MATES selection installed.

Megatron-LM's ``pretrain_gpt.py`` for megatron-core 0.19 plus ``megatron_gm.install()``: the same flags,
plus the ``--gm-*`` group (``--gm-selection``, ``--gm-stage``, ``--gm-stage-iters``, ...). Launch it like
pretrain_gpt.py (torchrun, srun, mpirun). Without CUDA the CPU shim is active and the CPU flags
(gloo, local transformer implementation, no fused kernels) are added unless given.

    torchrun --nproc-per-node 2 pretrain_gpt_gm.py <Megatron flags> --gm-stage 1 --gm-stage-iters 100 \
        --gm-selection runs/x/selection_stage1 --load ckpt --save ckpt
"""

import sys


def main() -> None:
    import megatron_gm
    from megatron_gm.megatron import cpu_shim

    megatron_gm.install()
    if cpu_shim.is_active():
        sys.argv, added = cpu_shim.with_cpu_flags(sys.argv)
        if added and int(__import__("os").environ.get("RANK", "0")) == 0:
            print(f"megatron-gm: no CUDA, CPU shim on; added {' '.join(added)}", flush=True)

    from megatron.core.enums import ModelType
    from megatron.training import pretrain
    from megatron.training.argument_utils import pretrain_cfg_container_from_args
    from megatron.training.arguments import parse_and_validate_args

    from megatron_gm.megatron import gpt
    from megatron_gm.megatron.args import extra_args_provider

    args = parse_and_validate_args(extra_args_provider=extra_args_provider())
    config = pretrain_cfg_container_from_args(args, gpt.model_config(args))
    pretrain(
        config,
        gpt.train_valid_test_datasets_provider,
        ModelType.encoder_or_decoder,
        gpt.forward_step,
        get_embedding_ranks=gpt.get_embedding_ranks,
    )


if __name__ == "__main__":
    main()
