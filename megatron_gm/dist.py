"""Distributed ground helpers: free local ports, the environment of a one-process group, this process's
rank, and rank-0 logging (``get_logger``, ``setup_logging``, ``--log-level``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from typing import TextIO


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (the sockets are closed before the caller binds them)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def free_port() -> int:
    return free_ports(1)[0]


def single_process_env() -> None:
    """Started without torchrun: the env:// rendezvous of a one-process group on a free local port."""
    if "RANK" in os.environ:
        return
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    )


# -- logging: library modules log through get_logger(__name__); tools call setup_logging once ---------

PACKAGE = "megatron_gm"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EVERY_RANK = {"every_rank": True}  # log.warning(..., extra=EVERY_RANK): a line every rank prints


RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")  # torchrun, mpirun, srun --mpi=...


def rank() -> int:
    """This process's global rank: torch.distributed's once initialized, else the launcher's (torchrun,
    mpirun, srun's MPI plugins), else 0."""
    dist = sys.modules.get("torch.distributed")  # never imports torch itself
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for var in RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def is_rank0() -> bool:
    return rank() == 0


class RankZeroFilter(logging.Filter):
    """Passes records on rank 0, and records logged with ``extra=EVERY_RANK`` on every rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "every_rank", False) or is_rank0()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` that is silent on ranks other than 0 (see ``EVERY_RANK``)."""
    log = logging.getLogger(name)
    if not any(isinstance(f, RankZeroFilter) for f in log.filters):
        log.addFilter(RankZeroFilter())
    return log


def add_log_level_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="the least severe log line shown (default INFO; WARNING hides progress lines, not the summary)",
    )


def setup_logging(
    level: str = "INFO", stream: TextIO | None = None, fmt: str = "%(message)s"
) -> logging.Handler:
    """Show the package's log lines at ``level`` and above on ``stream`` (default stdout, where the tools
    print), formatted with ``fmt``; calling it again replaces the handler it installed before."""
    log = logging.getLogger(PACKAGE)
    for h in [h for h in log.handlers if getattr(h, "gm_handler", False)]:
        log.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(logging.Formatter(fmt))
    handler.gm_handler = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False  # a root handler (Megatron's, pytest's) would print each line twice
    return handler


@contextlib.contextmanager
def tool_logging(
    level: str = "INFO", stream: TextIO | None = None, fmt: str = "%(message)s"
) -> Iterator[None]:
    """``setup_logging`` for the length of one tool's ``main``; restores the package logger after (for
    tools called in-process, as the tests do)."""
    log = logging.getLogger(PACKAGE)
    saved = log.level, log.propagate, list(log.handlers)
    setup_logging(level, stream, fmt)
    try:
        yield
    finally:
        log.handlers[:] = saved[2]
        log.setLevel(saved[0])
        log.propagate = saved[1]


def ensure_logging() -> None:
    """``setup_logging()`` unless a tool already set it up (``megatron_gm.install()`` in a training script)."""
    if not any(getattr(h, "gm_handler", False) for h in logging.getLogger(PACKAGE).handlers):
        setup_logging()
