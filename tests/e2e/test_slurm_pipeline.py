"""The Slurm driver and sbatch scripts on a real single-host Slurm (tests/slurm_cluster.py): a chain of
small real phases (tests/pipeline_toy_tool.py) across two node names, scancel / kill -9 / SIGUSR1-requeue
in the middle of a phase, resubmission, and the same result as the local executor."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from megatron_gm.errors import GMError
from megatron_gm.pipeline.config import LaunchConfig
from megatron_gm.pipeline.slurm import SlurmDriver
from megatron_gm.pipeline.state import RunState
from tests.pipeline_toy import expected_result, result, toy_plan, work_counts
from tests.slurm_cluster import SlurmCluster, slurm_available

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.megatron,
    pytest.mark.timeout(300),
    pytest.mark.skipif(slurm_available() is not None, reason=str(slurm_available())),
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), nodes=2)
    cluster.start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def _driver(out: Path, **kw) -> SlurmDriver:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    return SlurmDriver(toy_plan(out, **kw), RunState(out / "state.json"), LaunchConfig(), out / "logs",
                       root=ROOT, run_name=out.name, echo=lambda s: None)  # fmt: skip


def _wait_for(pred, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def _logs(out: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted((out / "logs").glob("*.log")))


def test_chain_survives_kill9_scancel_and_requeue(slurm, tmp_path):
    """One chain across two node names, interrupted three ways, one per phase:
    a (torchrun on 2 nodes): kill -9 of a worker -> the job fails, b and c are cancelled; resubmit.
    b (2 MPI ranks): scancel of every job -> resubmit; b resumes from its markers.
    c (torchrun): SIGUSR1 to the batch shell (--signal=B:USR1@N before the time limit) -> the phase
      saves, the job requeues itself and the same job id finishes.
    d (one process) then runs as one Slurm task.
    The result equals an uninterrupted run's (and the local executor's: tests/e2e/test_pipeline_local.py)."""
    out = tmp_path / "run"
    steps = 4
    drv = _driver(out, steps=steps, sleep=0.5, nodes=2)
    jobs = drv.submit()
    assert list(jobs) == ["a", "b", "c", "d"]
    assert drv.submit() == jobs  # a second submission keeps the queued jobs
    st = RunState(out / "state.json")

    # a: a crash, nothing saved
    _wait_for(lambda: (out / "a" / "step0001").exists(), 120, "phase a's second step", slurm)
    os.kill(int((out / "a" / "pid").read_text()), signal.SIGKILL)
    with pytest.raises(GMError, match="a: job .* without finishing the phase"):
        drv.wait(timeout=120, poll=0.3)
    assert slurm.wait_idle(60)
    assert st.status("a") == "failed"
    assert {slurm.jobs()[jobs[n]] for n in "bcd"} == {"CANCELLED"}  # --kill-on-invalid-dep
    starts = (out / "a" / "starts.log").read_text()
    assert '"world": 2' in starts  # torchrun on both node names found each other through MASTER_ADDR
    assert "master 127.0.0.1:" in (out / "logs" / f"a.{jobs['a']}.log").read_text()

    # b: scancel mid-phase
    jobs2 = drv.submit()
    assert set(jobs2) == set("abcd") and not set(jobs2.values()) & set(jobs.values())
    _wait_for(lambda: (out / "b" / "step0001").exists(), 120, "phase b's second step", slurm)
    slurm.run(["scancel", *jobs2.values()])
    assert slurm.wait_idle(60)
    assert [st.status(n) for n in "abcd"] == ["done", "interrupted", "submitted", "submitted"]
    assert 0 < len(work_counts(out)["b"]) < steps
    assert '"world": 2' in (out / "b" / "starts.log").read_text()  # two MPI ranks

    # c: the time-limit signal
    jobs3 = drv.submit()
    assert set(jobs3) == set("bcd")
    _wait_for(lambda: (out / "c" / "step0000").exists(), 120, "phase c's first step", slurm)
    slurm.run(["scancel", "--signal=USR1", "--batch", jobs3["c"]])
    drv.wait(timeout=180, poll=0.3)

    assert result(out) == expected_result(steps), _logs(out)
    counts = work_counts(out)
    assert sorted(counts["b"]) == sorted(counts["c"]) == list(range(steps))  # resumed, nothing redone
    phases = st.phases()
    assert [phases[n]["attempts"] for n in "abcd"] == [2, 2, 2, 1]
    assert '"world": 1' in (out / "d" / "starts.log").read_text()  # one process, as one Slurm task
    assert phases["c"]["job_id"] == jobs3["c"]
    c_starts = (out / "c" / "starts.log").read_text().splitlines()
    assert len(c_starts) == 2 and all(f'"job": "{jobs3["c"]}"' in s for s in c_starts)  # requeued
    log = (out / "logs" / f"c.{jobs3['c']}.log").read_text()
    assert "requeueing job" in log
    assert "toy: SIGTERM: saved through step" in log  # torchrun passed SIGTERM on; the phase saved
    assert drv.submit() == {}  # all done: nothing to submit
