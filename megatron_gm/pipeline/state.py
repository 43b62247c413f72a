"""The pipeline state file: which phase of which stage is done. A rerun continues from there.

``OUT/state.json`` holds, per phase: status (submitted, running, interrupted, failed, done), the
attempts, the Slurm job id, start and end times and the seconds spent (summed over attempts). Writers
are the local executor, the Slurm driver and the sbatch scripts on compute nodes, so every update takes
an exclusive lock (``fcntl.flock`` on ``state.json.lock``; the run folder must be on a file system that
honours it, as NFSv4 and Lustre do) and replaces the file atomically.

The sbatch scripts call this module::

    python -m megatron_gm.pipeline.state --file OUT/state.json begin|done|failed|interrupted PHASE
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megatron_gm.errors import GMError, cli_main
from megatron_gm.fs import atomic_write_text, read_json

STATUSES = ("submitted", "running", "interrupted", "failed", "done")


class RunState:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # --- low level --------------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": 1, "phases": {}}
        data = read_json(self.path, "state file", "fix or delete it (phases rerun)")
        if not isinstance(data, dict) or not isinstance(data.get("phases"), dict):
            raise GMError(f"{self.path}: not a pipeline state file; delete it or choose another --out")
        return data

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Read, let the caller modify, write back: all under the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self.read()
                yield data
                atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # --- queries ----------------------------------------------------------------------------------
    def phases(self) -> dict[str, dict[str, Any]]:
        return self.read()["phases"]

    def status(self, phase: str) -> str:
        return self.phases().get(phase, {}).get("status", "pending")

    def is_done(self, phase: str) -> bool:
        return self.status(phase) == "done"

    # --- transitions ------------------------------------------------------------------------------
    def _set(self, phase: str, **fields: Any) -> dict[str, Any]:
        with self.update() as data:
            rec = data["phases"].setdefault(phase, {"attempts": 0, "seconds": 0.0})
            rec.update(fields)
            return dict(rec)

    def submitted(self, phase: str, job_id: str) -> None:
        self._set(phase, status="submitted", job_id=str(job_id))

    def begin(self, phase: str, job_id: str = "") -> None:
        with self.update() as data:
            rec = data["phases"].setdefault(phase, {"attempts": 0, "seconds": 0.0})
            rec.update(status="running", started=time.time(), host=socket.gethostname())
            rec["attempts"] = int(rec.get("attempts", 0)) + 1
            if job_id:
                rec["job_id"] = str(job_id)

    def end(self, phase: str, status: str, rc: int = 0, cpu_seconds: float | None = None) -> None:
        """Close an attempt; ``cpu_seconds`` (user + system of the phase's processes) adds up too."""
        if status not in ("done", "failed", "interrupted"):
            raise ValueError(status)
        with self.update() as data:
            rec = data["phases"].setdefault(phase, {"attempts": 0, "seconds": 0.0})
            now = time.time()
            started = rec.get("started")
            if started is not None and rec.get("status") == "running":
                rec["last_seconds"] = round(now - float(started), 3)
                rec["seconds"] = round(float(rec.get("seconds", 0.0)) + rec["last_seconds"], 3)
            if cpu_seconds is not None:
                rec["cpu_seconds"] = round(float(rec.get("cpu_seconds", 0.0)) + cpu_seconds, 3)
            rec.update(status=status, finished=now, rc=int(rc))

    def reset(self, phase: str) -> None:
        with self.update() as data:
            data["phases"].pop(phase, None)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron_gm.pipeline.state", description=__doc__)
    p.add_argument("--file", required=True, help="the run's state.json")
    p.add_argument("action", choices=("begin", "done", "failed", "interrupted", "status"))
    p.add_argument("phase")
    p.add_argument("--job-id", default="")
    p.add_argument("--rc", type=int, default=0)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    st = RunState(a.file)
    if a.action == "begin":
        st.begin(a.phase, a.job_id)
    elif a.action == "status":
        print(st.status(a.phase))
    else:
        st.end(a.phase, a.action, a.rc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
