"""Distributed ground helpers: free local ports and the environment of a one-process group."""

from __future__ import annotations

import os
import socket


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
