"""The ranks of a selection run: mpi4py's COMM_WORLD (mpirun, srun --mpi=pmix/pmi2, or one process).

Errors: ``agree(fn)`` runs a step on every rank and turns a GMError on any rank into the same GMError
on all ranks (no rank is left waiting in a collective). Any other exception aborts the whole job after
printing its traceback, so a bug never hangs the other ranks.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from megatron_gm.errors import GMError

T = TypeVar("T")

# Set by a launcher inside a multi-task job step (not by sbatch for the batch script itself).
_LAUNCHER_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
# Set in a task by srun's MPI plugins (pmix, pmi2) or by mpirun; without any, MPI_Init cannot form a job.
_WIREUP_VARS = ("PMIX_RANK", "PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK")


class Comm:
    def __init__(self):
        tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")
        if tasks.isdigit() and int(tasks) > 1 and not any(v in os.environ for v in _WIREUP_VARS):
            raise GMError(
                f"srun started {tasks} tasks without an MPI plugin; use srun --mpi=pmix (Open MPI) or "
                "--mpi=pmi2 (MPICH), or set MpiDefault in slurm.conf"
            )
        try:
            from mpi4py import MPI
        except ImportError as e:  # mpi4py missing, or no MPI library for it
            raise GMError(
                f"mpi4py cannot be loaded ({e}); install it with an MPI library (pip install -r requirements.txt, "
                "plus Open MPI or MPICH)"
            ) from e
        self.MPI = MPI
        self.world = MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        if self.size == 1:
            self._check_singleton()
        if self.size > 1:
            self._install_abort_hook()

    @staticmethod
    def _check_singleton() -> None:
        """srun without an MPI plugin starts N independent singletons that would all act as rank 0."""
        for var in _LAUNCHER_SIZE_VARS:
            n = os.environ.get(var, "")
            if n.isdigit() and int(n) > 1:
                raise GMError(
                    f"launched as {n} tasks ({var}) but MPI sees one rank; use srun --mpi=pmi2 (or pmix) or "
                    "mpirun, so the tasks form one MPI job"
                )

    def _install_abort_hook(self) -> None:
        previous = sys.excepthook

        def hook(etype, value, tb):
            if issubclass(etype, (GMError, KeyboardInterrupt)):
                previous(etype, value, tb)
                return
            traceback.print_exception(etype, value, tb)
            sys.stderr.flush()
            self.world.Abort(1)

        sys.excepthook = hook

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """A barrier that sleeps while it waits (MPI's own spins and would take a core from busy ranks)."""
        if self.size == 1:
            return
        req = self.world.Ibarrier()
        delay = 1e-4
        while not req.Test():
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def bcast(self, obj: Any) -> Any:
        return self.world.bcast(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        return self.world.allgather(obj)

    def gather(self, obj: Any) -> list[Any] | None:
        return self.world.gather(obj, root=0)

    def allreduce_sum(self, value: float) -> float:
        return self.world.allreduce(value)

    def abort(self, code: int = 1) -> None:
        self.world.Abort(code)

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it raises GMError on any rank, raise the first one on all ranks."""
        err = None
        out = None
        try:
            out = fn()
        except GMError as e:
            err = str(e)
        self.barrier()
        errors = self.allgather(err) if self.size > 1 else [err]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise GMError(first)
        return out

    def root_then_bcast(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and broadcast its result (or its GMError) to every rank."""
        err = None
        out = None
        if self.is_root:
            try:
                out = fn()
            except GMError as e:
                err = str(e)
        self.barrier()
        err, out = self.bcast((err, out)) if self.size > 1 else (err, out)
        if err is not None:
            raise GMError(err)
        return out
