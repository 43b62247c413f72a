"""One writer per output, and no process outliving its launcher.

``lock_output(folder)`` takes an exclusive ``flock`` on ``{parent}/.{name}.lock`` for the rest of the
process. While another live process holds it, the call is a one-line GMError naming that process; a
lock left by a killed process is free again (the kernel drops ``flock`` locks with their holder), so it
is simply taken over. A clean exit removes the lock file. In a multi-rank job only the launching rank
(global rank 0) takes it, before any collective; the other ranks of a job that failed to get it are
ended by their launcher.

``die_with_launcher()`` asks the kernel to SIGKILL this process when its parent (torchrun's agent) dies (``PR_SET_PDEATHSIG``, Linux): a ``kill -9`` of the launcher
no longer leaves workers running that keep writing to the output a rerun is writing to.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import os
import signal
import socket
from pathlib import Path

from megatron_gm.errors import GMError

PR_SET_PDEATHSIG = 1
_held: dict[str, int] = {}  # lock path -> open descriptor (kept for the life of the process)

# Only torchrun: PR_SET_PDEATHSIG fires when the parent *thread* ends, and torchrun's agent starts its
# workers from its main thread; daemons that fork from worker threads (slurmstepd, prted) clean up their
# own tasks.
LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID",)


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def lock_output(folder: str | os.PathLike, flag: str = "the output") -> Path | None:
    """Hold the exclusive lock of ``folder`` until this process exits (idempotent); see module doc."""
    if int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))) != 0:
        return None
    path = lock_path(folder)
    if str(path) in _held:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise GMError(
                    f"{path}: cannot lock {flag} ({e.strerror}); check the folder's permissions"
                ) from e
            raise GMError(
                f"{folder}: another run is writing {flag} (process {holder}); wait for it to finish or stop "
                "it, then rerun"
            ) from None
        try:  # the file we locked may have been removed by a holder that just finished: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[str(path)] = fd
    return path


def release_output(folder: str | os.PathLike) -> None:
    _release(lock_path(folder))


def _release(path: Path) -> None:
    fd = _held.pop(str(path), None)
    if fd is None:
        return
    try:
        path.unlink()  # while still locked: nobody can have locked the file we remove
    except FileNotFoundError:
        pass
    os.close(fd)


@atexit.register
def release_all() -> None:
    """Release every lock this process holds (at exit, or when a tool returns in-process)."""
    for path in list(_held):
        _release(Path(path))


def die_with_launcher(sig: int = signal.SIGKILL) -> None:
    """Under torchrun: be killed when the parent process dies (Linux only)."""
    if not any(k in os.environ for k in LAUNCHER_ENV):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the launcher's own teardown is all there is
        return
    if os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), sig)
