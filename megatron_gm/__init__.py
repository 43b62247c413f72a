"""megatron-gm: Group-MATES data selection for Megatron-LM pretraining."""

__version__ = "0.1.0"


def install(cpu_shim: bool | None = None) -> None:
    """Plug group-level selection into Megatron's training loop (see megatron_gm.megatron.loader).

    Call it before Megatron parses its arguments; ``cpu_shim=None`` activates the CPU shim only when
    CUDA is unavailable. Imported lazily so ``import megatron_gm`` stays free of torch and Megatron.
    With the shim on (no GPU visible), the CPU flags Megatron needs (``cpu_shim.CPU_FLAGS``: gloo, the
    local transformer implementation, no fused kernels) are added to ``sys.argv`` unless given; a
    command line that asks for NCCL or Transformer Engine stops here with one line naming the flags.
    """
    from megatron_gm.dist import ensure_logging
    from megatron_gm.megatron.loader import install as _install

    ensure_logging()  # a training script's lines; the tool's --log-level applies once Megatron parses it
    _install(cpu_shim)
    from megatron_gm.megatron import cpu_shim as shim

    if shim.is_active():
        _add_cpu_flags(shim)


def _add_cpu_flags(shim) -> None:
    import sys

    from megatron_gm.dist import get_logger

    needed = {flag[0]: flag[1] for flag in shim.CPU_FLAGS if len(flag) == 2}
    argv = sys.argv
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in needed:
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            if value != needed[name]:
                cpu = " ".join(" ".join(f) for f in shim.CPU_FLAGS)
                print(
                    f"error: {name} {value}: needs a GPU and none is visible; on CPU pass {cpu} "
                    "(or drop the flag and megatron_gm.install() adds them)",
                    file=sys.stderr,
                    flush=True,
                )
                sys.exit(2)
    sys.argv, added = shim.with_cpu_flags(argv)
    if added:
        get_logger(__name__).info(f"megatron-gm: no CUDA, CPU shim on; added {' '.join(added)}")
