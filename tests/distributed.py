"""Multi-process tests on CPU: ``run_distributed_test(fn, world_size)`` (after OLMo-core).

``fn(rank, world_size, *args)`` runs in ``world_size`` spawned processes with a gloo process group
initialised; its return values come back in rank order. An exception in any rank fails the test with
that rank's traceback.
"""

from __future__ import annotations

import os
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_gm.dist import free_port


def _worker(rank, world_size, port, fn, args, queue, backend):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    try:
        if backend:
            dist.init_process_group(backend, rank=rank, world_size=world_size)
        out = fn(rank, world_size, *args)
        queue.put((rank, "ok", out))
    except BaseException:  # noqa: BLE001 - report any failure to the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if backend and dist.is_initialized():
            dist.destroy_process_group()


def run_distributed_test(fn, world_size: int, *args, backend: str | None = "gloo", timeout: float = 600):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, fn, args, queue, backend))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results = {}
    errors = []
    for _ in range(world_size):
        rank, status, out = queue.get()
        if status == "ok":
            results[rank] = out
        else:
            errors.append(f"rank {rank}:\n{out}")
            break
    for p in procs:
        p.join(timeout=5 if errors else timeout)
        if p.is_alive():
            p.kill()
    if errors:
        raise AssertionError("distributed test failed\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]
