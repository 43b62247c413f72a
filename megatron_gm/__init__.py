"""megatron-gm: Group-MATES data selection for Megatron-LM pretraining."""

__version__ = "0.1.0"


def install(cpu_shim: bool | None = None) -> None:
    """Plug group-level selection into Megatron's training loop (see megatron_gm.megatron.loader).

    Call it before Megatron parses its arguments; ``cpu_shim=None`` activates the CPU shim only when
    CUDA is unavailable. Imported lazily so ``import megatron_gm`` stays free of torch and Megatron.
    """
    from megatron_gm.megatron.loader import install as _install

    _install(cpu_shim)
