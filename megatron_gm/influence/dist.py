"""Process-group helpers for the influence tools (DeepSpeed's init, or a plain single process)."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from megatron_gm.dist import free_port


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, NCCL on GPU); returns (rank, world).

    Works under the ``deepspeed`` launcher, torchrun, mpirun/srun (via DeepSpeed's MPI discovery) and a plain
    ``python`` (one process). On CPU, DeepSpeed's shared-memory all-reduce op would be compiled at first use
    (25–60 s); we switch it off so plain gloo is used, unless GM_DS_SHM_COMM=1 (then set
    TORCH_EXTENSIONS_DIR to a cache folder so the compile happens once).
    """
    import deepspeed
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    deepspeed.utils.logger.setLevel(logging.WARNING)
    on_cpu = get_accelerator().device_name() == "cpu"
    if on_cpu and os.environ.get("GM_DS_SHM_COMM", "0") != "1":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    mpi = "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ
    if not dist.is_initialized() and "RANK" not in os.environ and not mpi:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend="gloo" if on_cpu else "nccl", auto_mpi_discovery=mpi)
    if not on_cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(obj):
    """All-gather a picklable object; a list in rank order (only ever our own numpy arrays)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_scalar(x: float) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()
