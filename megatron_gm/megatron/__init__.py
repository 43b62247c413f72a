"""Glue to Megatron-LM's training code (megatron-core >= 0.17 with ``megatron.training``).

Everything that touches Megatron's moving API lives here: the ``--gm-*`` flags (args), the patches that
plug selection into pretrain() (loader), the GPT providers (gpt), the CPU shim (cpu_shim), stage
checkpoints (checkpoint; the flags a run on one takes from it, checkpoint_args), training samples as
Megatron builds them (samples), scoring samples with a model (scoring) and the in-process helpers later
phases reuse (runtime).
"""
