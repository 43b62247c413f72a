"""A real single-host Slurm for tests: slurmctld + one slurmd per node name, config under a temp folder.

Debian's slurm-wlm (22.05) daemons run in the foreground (``-D``) as children of this process, with
``AuthType=auth/none`` (no munge daemon needed), ``proctrack/linuxproc`` (it follows torchrun's
workers into their own sessions, which ``proctrack/pgid`` loses) and ``task/none``. Node names are
fake (``gmnode1``, ``gmnode2``) and all map to 127.0.0.1 through ``NodeAddr``; each slurmd listens on its
own port. Ports are picked free at start, so several clusters (and other users' Slurm) can coexist.

Stopping: every job is cancelled, then the daemons are stopped by the PIDs this object started; any
process left that carries this cluster's ``SLURM_CONF`` in its environment (job steps, slurmstepd) is
killed by PID as well. The daemons also get SIGTERM if the test process dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from megatron_gm.dist import free_ports

DAEMONS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def slurm_available() -> str | None:
    """None when the Slurm binaries are installed, else a reason (for pytest.skip)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return f"Slurm not installed ({', '.join(missing)}); run scripts/setup.sh"
    if os.geteuid() != 0:
        return "the test Slurm runs its daemons as root"
    return None


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgrp()


def _which(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """A throwaway Slurm cluster under ``root``; use as a context manager or call start()/stop()."""

    def __init__(self, root: str | os.PathLike, nodes: int = 2, cpus: int = 4, name: str = "gmtest"):
        self.root = Path(root).resolve()
        self.node_names = [f"gmnode{i + 1}" for i in range(nodes)]
        self.cpus = cpus
        self.name = name
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self._stopped = False

    # --- config ---------------------------------------------------------------------------------
    def _write_conf(self) -> None:
        r = self.root
        for d in ("state", "log", "run", *(f"spool/{n}" for n in self.node_names)):
            (r / d).mkdir(parents=True, exist_ok=True)
        ctl_port, *node_ports = free_ports(1 + len(self.node_names))
        host = socket.gethostname()
        mem = 4096
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p} CPUs={self.cpus} "
            f"RealMemory={mem} State=UNKNOWN"
            for n, p in zip(self.node_names, node_ports)
        )
        self.conf.write_text(
            f"""ClusterName={self.name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=5
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
MessageTimeout=10
SlurmdTimeout=60
InactiveLimit=0
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
PlugStackConfig={r}/plugstack.conf
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
        )
        (r / "plugstack.conf").write_text("")

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment every Slurm client (and job) needs."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen:
        out = open(self.root / "log" / log, "ab")
        p = subprocess.Popen(
            argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        out.close()
        self.procs.append(p)
        return p

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        self._write_conf()
        atexit.register(self.stop)
        self._spawn([_which("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)], "slurmctld.out")
        for n in self.node_names:
            self._spawn([_which("slurmd"), "-D", "-N", n, "-f", str(self.conf)], f"slurmd.{n}.out")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"a Slurm daemon exited at start ({p.args[0]}):\n{self.logs()}")
            r = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
            states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
            if r.returncode == 0 and all(states.get(n) in ("idle", "mix", "alloc") for n in self.node_names):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Slurm did not come up in {timeout:.0f}s:\n{self.logs()}")

    def run(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=check, **kw)

    def logs(self, tail: int = 30) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # --- jobs -----------------------------------------------------------------------------------
    def jobs(self) -> dict[str, str]:
        """job id -> state for every job slurmctld still knows."""
        r = self.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i %T"], check=False)
        return dict(line.split() for line in r.stdout.splitlines() if line.strip())

    def active_jobs(self) -> dict[str, str]:
        done = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
        return {j: s for j, s in self.jobs().items() if s not in done}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is pending, running or completing; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.active_jobs():
                return True
            time.sleep(0.5)
        return False

    def _stray_pids(self) -> list[int]:
        """PIDs (not ours to keep) whose environment names this cluster's SLURM_CONF."""
        needle = f"SLURM_CONF={self.conf}\0".encode()
        mine = os.getpid()
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == mine:
                continue
            try:
                if needle in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.procs and all(p.poll() is None for p in self.procs):
            self.run(["scancel", "--full", "-u", "root"], check=False, timeout=20)
            self.wait_idle(20)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pid in self._stray_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
