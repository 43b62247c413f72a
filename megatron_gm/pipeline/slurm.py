"""Submit the plan to Slurm: one sbatch job per phase, chained with ``--dependency=afterok``.

Phases already done (state file) are not submitted; a phase whose job from an earlier submission is still
queued or running keeps that job (no double submission). Every job is ``--requeue`` with
``--signal=B:USR1@N`` and ``--kill-on-invalid-dep=yes`` (a failed phase cancels what depends on it instead
of leaving it pending forever). Rerunning the driver after a cancel, a failure or a lost node resubmits
what is missing; each phase resumes from its own checkpoints or markers.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from megatron_gm.errors import GMError
from megatron_gm.pipeline.config import LaunchConfig
from megatron_gm.pipeline.plan import Phase
from megatron_gm.pipeline.run import phase_env, python_exe
from megatron_gm.pipeline.state import RunState

ACTIVE = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED",
}  # fmt: skip


def task_shape(phase: Phase, launch: LaunchConfig) -> tuple[int, int]:
    """(Slurm tasks per node, CPUs per task): one torchrun task per node, or one task per MPI rank."""
    if phase.launcher == "torchrun":
        return 1, launch.cpus_per_task or phase.threads * phase.procs_per_node
    return phase.procs_per_node, launch.cpus_per_task or phase.threads  # mpi, single


def describe_resources(phase: Phase, launch: LaunchConfig) -> str:
    tasks, cpus = task_shape(phase, launch)
    gpus = f", {launch.gpus_per_node} gpu" if launch.gpus_per_node and phase.launcher == "torchrun" else ""
    return f"{phase.nodes}N x {tasks}T x {cpus}c{gpus}, {phase.time_limit}"


def sbatch_options(phase: Phase, launch: LaunchConfig, log_dir: Path, run_name: str) -> list[str]:
    """Resources and requeue settings of one phase's job (the sbatch script's #SBATCH lines are defaults)."""
    tasks_per_node, cpus = task_shape(phase, launch)
    opts = [
        f"--job-name=gm.{run_name}.{phase.name}",
        f"--output={log_dir}/{phase.name}.%j.log",
        "--open-mode=append",
        f"--nodes={phase.nodes}",
        f"--ntasks-per-node={tasks_per_node}",
        f"--cpus-per-task={cpus}",
        f"--time={phase.time_limit}",
        "--requeue",
        f"--signal=B:USR1@{launch.signal_seconds}",
        "--kill-on-invalid-dep=yes",
    ]
    if launch.gpus_per_node and phase.launcher == "torchrun":
        opts.append(f"--gpus-per-node={launch.gpus_per_node}")
    if launch.partition:
        opts.append(f"--partition={launch.partition}")
    if launch.account:
        opts.append(f"--account={launch.account}")
    return opts + list(launch.sbatch_args)


LOCAL_HINT = (
    "start a single-host one with `bash scripts/local_slurm.sh up` (it prints the SLURM_CONF to export)"
)


def check_controller(timeout: float = 20.0) -> str:
    """One line on the reachable controller; a one-line GMError saying what to do when there is none."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise GMError("sbatch/scontrol not found: Slurm's client is not installed here; run scripts/setup.sh "
                      "or use --mode local")  # fmt: skip
    conf = os.environ.get("SLURM_CONF", "")
    if conf and not Path(conf).is_file():
        raise GMError(f"SLURM_CONF={conf}: file not found; {LOCAL_HINT}, or use --mode local")
    try:
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout)
        out = (r.stdout + r.stderr).strip()
    except subprocess.TimeoutExpired:
        r, out = None, f"no answer in {timeout:.0f}s"
    if r is None or r.returncode != 0 or " is UP" not in out:
        first = out.splitlines()[-1] if out else "no output"
        where = f"SLURM_CONF={conf}" if conf else "SLURM_CONF unset"
        raise GMError(f"no reachable Slurm controller ({where}; scontrol ping: {first}); {LOCAL_HINT}, "
                      "or use --mode local")  # fmt: skip
    return next(line for line in out.splitlines() if " is UP" in line).strip()


def queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """job id -> Slurm state for the given jobs that slurmctld still knows; None if squeue failed.

    A job pending on a dependency that can never be met (its reason DependencyNeverSatisfied: an
    upstream job failed and the job was not cancelled for it) is reported as ``DEAD``."""
    if not job_ids:
        return {}
    # all of this user's jobs: ``-j`` with one id slurmctld has forgotten fails the whole query
    r = subprocess.run(
        ["squeue", "--me", "-h", "-a", "-t", "all", "-o", "%i %T %r"], capture_output=True, text=True
    )
    if r.returncode != 0:
        return None
    wanted = set(job_ids)
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in wanted:
            dead = parts[1] == "PENDING" and len(parts) > 2 and parts[2] == "DependencyNeverSatisfied"
            out[parts[0]] = "DEAD" if dead else parts[1]
    return out


class SlurmDriver:
    def __init__(
        self,
        phases: list[Phase],
        state: RunState,
        launch: LaunchConfig,
        log_dir: str | os.PathLike,
        *,
        root: str | os.PathLike,
        run_name: str,
        python: str | None = None,
        echo: Callable[[str], None] = print,
    ):
        self.phases = phases
        self.state = state
        self.launch = launch
        self.log_dir = Path(log_dir).resolve()
        self.root = Path(root).resolve()
        self.run_name = run_name
        self.python = python or python_exe()
        self.echo = echo

    def command(self, phase: Phase, deps: list[str]) -> list[str]:
        argv = ["sbatch", "--parsable", *sbatch_options(phase, self.launch, self.log_dir, self.run_name)]
        if deps:
            argv.append("--dependency=afterok:" + ":".join(deps))
        return [*argv, str(self.root / phase.script), *phase.args]

    def plan_lines(self) -> list[str]:
        """The sbatch commands a submission would run (dependencies by phase name), for --dry-run."""
        lines = []
        for p in self.phases:
            cmd = self.command(p, [f"<{d}>" for d in p.deps])
            lines.append(f"# {p.name}\n" + shlex.join(cmd))
        return lines

    def submit(self) -> dict[str, str]:
        """Submit every phase that is neither done nor queued; returns phase -> job id of live jobs."""
        if shutil.which("sbatch") is None:
            raise GMError("sbatch not found: Slurm's client is not installed here; use --mode local")
        recorded = {n: r.get("job_id", "") for n, r in self.state.phases().items()}
        live = queue_states([j for j in recorded.values() if j])
        if live is None:
            raise GMError("squeue failed: is slurmctld reachable (SLURM_CONF, scontrol ping)?")
        jobs: dict[str, str] = {}
        for p in self.phases:
            status = self.state.status(p.name)
            if status == "done":
                continue
            job = recorded.get(p.name, "")
            if job and live.get(job) == "DEAD":
                subprocess.run(["scancel", job], capture_output=True)
            if job and live.get(job) in ACTIVE:
                jobs[p.name] = job
                self.echo(f"[pipeline] {p.name}: job {job} is {live[job].lower()}, kept")
                continue
            deps = [jobs[d] for d in p.deps if d in jobs]
            missing = [d for d in p.deps if d not in jobs and self.state.status(d) != "done"]
            if missing:
                raise GMError(
                    f"{p.name}: dependency {missing[0]} is neither done nor queued (plan order bug)"
                )
            env = {**os.environ, **phase_env(p, self.state, self.python)}
            r = subprocess.run(self.command(p, deps), env=env, capture_output=True, text=True, cwd=self.root)
            if r.returncode != 0:
                raise GMError(f"{p.name}: sbatch failed: {r.stderr.strip() or r.stdout.strip()}")
            job = r.stdout.strip().split(";")[0]
            self.state.submitted(p.name, job)
            jobs[p.name] = job
            after = f" after {', '.join(deps)}" if deps else ""
            self.echo(f"[pipeline] {p.name}: submitted job {job}{after}")
        return jobs

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> None:
        """Block until every phase is done; GMError when a job ended without finishing its phase."""
        deadline = None if timeout is None else time.monotonic() + timeout
        names = [p.name for p in self.phases]
        misses: dict[str, int] = {}
        shown = ""
        while True:
            phases = self.state.phases()
            pending = [n for n in names if phases.get(n, {}).get("status") != "done"]
            running = [n for n in pending if phases.get(n, {}).get("status") == "running"]
            line = (
                f"{len(names) - len(pending)}/{len(names)} phases done; running: {', '.join(running) or '-'}"
            )
            if line != shown:
                self.echo(f"[pipeline] {line}")
                shown = line
            if not pending:
                return
            jobs = {n: phases.get(n, {}).get("job_id", "") for n in pending}
            live = queue_states([j for j in jobs.values() if j])
            for n, j in jobs.items() if live is not None else ():
                if live.get(j) in ACTIVE:
                    misses.pop(n, None)
                    continue
                # the job left the queue (or ended) and its phase is not done: allow for the state write
                misses[n] = misses.get(n, 0) + 1
                if misses[n] >= 3 and self.state.status(n) != "done":
                    how = live.get(j, "gone from the queue")
                    raise GMError(
                        f"{n}: job {j or '?'} {how.lower()} without finishing the phase; see "
                        f"{self.log_dir}/{n}.{j}.log, then rerun tools/run_pipeline.py --mode slurm to resubmit"
                    )
            if deadline is not None and time.monotonic() > deadline:
                raise GMError(f"timed out waiting for {', '.join(pending)}")
            time.sleep(poll)
