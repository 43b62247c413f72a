"""Run the plan on this machine, phase after phase: torchrun for the Megatron and DeepSpeed phases, mpirun
(or one plain process) for the MPI phase. Done phases are skipped; an interrupted phase resumes through
its own checkpoints or shard markers. Ctrl-C or SIGTERM asks the running phase to save and stop."""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from megatron_gm.dist import get_logger
from megatron_gm.errors import GMError
from megatron_gm.pipeline.plan import Phase, checkpoint_iteration, load_dir
from megatron_gm.pipeline.run import phase_env, python_exe
from megatron_gm.pipeline.state import RunState

log = get_logger(__name__)

STOP_GRACE_S = 60.0  # how long a phase may take to save after SIGTERM before it is killed


def launch_argv(phase: Phase, python: str, root: str | os.PathLike) -> list[str]:
    """The local command: the same tool and arguments the sbatch script runs, on one machine."""
    tool = str(Path(root) / phase.tool)
    args = list(phase.args)
    if phase.kind == "pretrain" and "GM_CKPT_DIR" in phase.env:
        args += ["--load", load_dir(phase)]
    world = phase.world_size
    if phase.launcher == "torchrun":
        return [  # torchrun through our wrapper: a worker's one-line error is the last line, exit code 2
            python, "-m", "megatron_gm.megatron.launch", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(world), tool, *args,
        ]  # fmt: skip
    if world == 1 or phase.launcher == "single":
        return [python, tool, *args]
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise GMError(
            f"{phase.name} needs {world} MPI ranks but mpirun is not installed; run scripts/setup.sh"
        )
    as_root = ["--allow-run-as-root"] if os.geteuid() == 0 else []  # Open MPI (scripts/setup.sh)
    return [mpirun, *as_root, "--oversubscribe", "-n", str(world), python, tool, *args]


def is_complete(phase: Phase) -> bool:
    """The phase's artifact is there and whole (it died after writing it): no need to run it again."""
    if phase.complete_marker:
        return Path(phase.complete_marker).exists()
    expect = phase.env.get("GM_EXPECT_ITER", "")
    return bool(expect) and checkpoint_iteration(phase.env["GM_CKPT_DIR"]) == expect


def log_summary(log_path: Path, lines: int = 25) -> str:
    """A tool's own one-line errors (``error: ...``) if it printed any, else the end of its log."""
    text = log_path.read_text(errors="replace").splitlines()
    errors = [line for line in text if line.startswith("error:")]
    return "\n".join(errors[-3:] if errors else text[-lines:])


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphan if the driver is killed
    os.setpgrp()


class Interrupted(Exception):
    pass


class LocalExecutor:
    def __init__(
        self,
        phases: list[Phase],
        state: RunState,
        log_dir: str | os.PathLike,
        *,
        root: str | os.PathLike,
        python: str | None = None,
        verbose: bool = False,
        echo: Callable[[str], None] = log.info,
    ):
        self.phases = phases
        self.state = state
        self.log_dir = Path(log_dir)
        self.root = Path(root)
        self.python = python or python_exe()
        self.verbose = verbose
        self.echo = echo
        self._child: subprocess.Popen | None = None
        self._stop_signal: int | None = None

    # --- signals ----------------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signum
        if self._child is not None and self._child.poll() is None:
            try:
                os.killpg(self._child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # --- running ----------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Run every phase not done yet; returns the seconds each phase took in this call."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        took: dict[str, float] = {}
        try:
            for phase in self.phases:
                if self._stop_signal is not None:  # a signal between two phases: start no other
                    raise Interrupted(f"stopped before {phase.name}; rerun to continue")
                if self.state.is_done(phase.name):
                    self.echo(f"[pipeline] {phase.name}: done already, skipped")
                    continue
                took[phase.name] = self._run_phase(phase)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return took

    def _run_phase(self, phase: Phase) -> float:
        for dep in phase.deps:
            if not self.state.is_done(dep):
                raise GMError(f"{phase.name}: depends on {dep}, which is not done; rerun the pipeline")
        if is_complete(phase):
            self.state.begin(phase.name)
            self.state.end(phase.name, "done")
            self.echo(
                f"[pipeline] {phase.name}: artifact already complete ({', '.join(phase.outputs.values())})"
            )
            return 0.0
        argv = launch_argv(phase, self.python, self.root)
        env = {**os.environ, **phase_env(phase, self.state, self.python)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), os.environ.get("PYTHONPATH", "")]))
        log_path = self.log_dir / f"{phase.name}.log"
        self.echo(f"[pipeline] {phase.name}: running (log {log_path})")
        t0 = time.monotonic()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.state.begin(phase.name)
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
            log.flush()
            self._child = subprocess.Popen(
                argv, cwd=self.root, env=env, stdout=subprocess.PIPE if self.verbose else log,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )  # fmt: skip
            rc = self._wait(log)
        self._child = None
        took = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        if self._stop_signal is not None:
            self.state.end(phase.name, "interrupted", rc, cpu)
            raise Interrupted(f"{phase.name}: interrupted after {took:.1f} s; rerun to continue")
        expect = phase.env.get("GM_EXPECT_ITER", "")
        if rc == 0 and expect and checkpoint_iteration(phase.env["GM_CKPT_DIR"]) != expect:
            got = checkpoint_iteration(phase.env["GM_CKPT_DIR"]) or "none"
            self.state.end(phase.name, "interrupted", rc, cpu)
            raise GMError(
                f"{phase.name}: exited at checkpoint iteration {got} before the stage's end ({expect}); "
                f"see {log_path}, then rerun to continue"
            )
        if rc != 0:
            self.state.end(phase.name, "failed", rc, cpu)
            tail = log_summary(log_path)
            raise GMError(
                f"{phase.name}: exit code {rc} after {took:.1f} s; last lines of {log_path}:\n{tail}"
            )
        self.state.end(phase.name, "done", cpu_seconds=cpu)
        self.echo(f"[pipeline] {phase.name}: done in {took:.1f} s ({cpu:.1f} CPU-seconds)")
        return took

    def _wait(self, log) -> int:
        child = self._child
        assert child is not None
        if self.verbose and child.stdout is not None:
            for line in iter(child.stdout.readline, b""):
                log.write(line)
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
        deadline = None
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if self._stop_signal is not None:
                    deadline = deadline or time.monotonic() + STOP_GRACE_S
                    if time.monotonic() > deadline:
                        os.killpg(child.pid, signal.SIGKILL)
