"""Signals in data-loader workers: a training process that fails must be able to end its workers.

With ``--exit-signal-handler`` Megatron replaces the handler of its exit signal (SIGTERM by default)
with one that only sets a flag, and its own ``worker_init_fn`` installs that flag-setter in every
data-loader worker too, so that a SLURM preemption (SIGTERM to every process of the job step) lets the
training process save before it stops. But the training process itself ends its workers with SIGTERM,
when it shuts a loader down and when it exits (``multiprocessing`` terminates, then joins, its daemonic
children). A worker that only sets a flag never dies, and a run whose training loop raised waits for it
forever: any error during training hung the job until its time limit.

``worker_signals`` is a ``worker_init_fn`` step that keeps the preemption behaviour and ends the hang:
the worker blocks the exit signals and a helper thread waits for them with ``sigwaitinfo``, which says
who sent each one. A signal from the training process (the worker's parent), or one that arrives after
the parent is gone, ends the worker at once, as the default action would; one from anyone else is
ignored, as Megatron intends.
"""

from __future__ import annotations

import os
import signal
import threading


def exit_signals(exit_signal=None) -> set[int]:
    """SIGTERM plus Megatron's ``--exit-signal`` when it is another one."""
    sigs = {int(signal.SIGTERM)}
    if exit_signal is not None:
        sigs.add(int(exit_signal))
    return sigs


def worker_signals(exit_signal=None) -> None:
    """In a freshly started worker: die on the exit signals the parent sends (see module doc)."""
    sigs = exit_signals(exit_signal)
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)  # threads started from now on inherit the mask

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo(sigs)
            if info.si_pid == parent or os.getppid() != parent:
                os._exit(128 + info.si_signo)  # the default action's exit status

    threading.Thread(target=wait, name="gm-worker-signals", daemon=True).start()


def chain_worker_init(loader, exit_signal=None):
    """Make ``loader`` (a torch DataLoader) run ``worker_signals`` after its own ``worker_init_fn``.

    Idempotent; a loader without workers is returned unchanged. Must be called before the first
    ``iter(loader)`` (workers start then).
    """
    if loader is None or getattr(loader, "num_workers", 0) == 0:
        return loader
    before = loader.worker_init_fn
    if getattr(before, "_gm_signals", False):
        return loader

    def worker_init_fn(worker_id: int) -> None:
        if before is not None:
            before(worker_id)  # Megatron's installs its flag-setter here; ours comes after it
        worker_signals(exit_signal)

    worker_init_fn._gm_signals = True
    loader.worker_init_fn = worker_init_fn
    return loader
