#!/usr/bin/env python
"""A small real phase for testing the pipeline machinery (state, dependencies, requeue, resume).

It behaves like our phase tools where the machinery is concerned: resumable steps with completion
markers, SIGTERM = finish the current step and exit (a "save"), an artifact whose manifest is written
last, and under torchrun a gloo all-reduce across every rank (so a wrong MASTER_ADDR hangs or fails).

    toy_tool.py --out DIR --steps N [--input FILE] [--sleep S]

The result (``DIR/result.txt``) is a hash chain over the input and every step: equal results mean the
same work was done, however often the run was interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

stop = False


def _on_term(signum, frame) -> None:
    global stop
    stop = True


def atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def distributed_check() -> tuple[int, int]:
    """Under torchrun: an all-reduce over gloo; returns (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    world = dist.get_world_size()
    assert t.item() == world * (world + 1) / 2, t.item()
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    return rank, world


def mpi_check() -> tuple[int, int]:
    if not any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK")):
        return 0, 1
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    got = comm.allgather(comm.Get_rank())
    assert got == list(range(comm.Get_size())), got
    return comm.Get_rank(), comm.Get_size()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--input", default="")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--mpi", action="store_true")
    p.add_argument("--fail", action="store_true", help="exit 3 (a failing phase)")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, _on_term)
    rank, world = mpi_check() if a.mpi else distributed_check()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic(out / "pid", str(os.getpid()))
        with open(out / "starts.log", "a") as f:
            f.write(json.dumps({"world": world, "job": os.environ.get("SLURM_JOB_ID", "")}) + "\n")
    if a.fail:
        return 3
    if rank != 0:
        return 0
    h = hashlib.sha256(Path(a.input).read_bytes() if a.input else b"start").hexdigest()
    for i in range(a.steps):
        step = out / f"step{i:04d}"
        if step.exists():
            h = step.read_text()
            continue
        if stop:
            print(f"toy: SIGTERM: saved through step {i - 1}, exiting", flush=True)
            return 143
        time.sleep(a.sleep)
        h = hashlib.sha256(f"{h}:{i}".encode()).hexdigest()
        atomic(step, h)
        with open(out / "work.log", "a") as f:
            f.write(f"{i}\n")
    atomic(out / "result.txt", h + "\n")
    atomic(out / "manifest.json", json.dumps({"kind": "toy", "steps": a.steps, "world": world}) + "\n")
    print(f"toy: done, world {world}, result {h[:12]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
