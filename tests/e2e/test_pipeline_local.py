"""The local executor on a real three-phase chain (tests/pipeline_toy_tool.py): torchrun, mpirun, state,
resume after SIGTERM and after kill -9 of the driver, a failing phase."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_gm.errors import GMError
from megatron_gm.pipeline.state import RunState
from tests.pipeline_toy import expected_result, result, run_local, work_counts

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.megatron, pytest.mark.mpi, pytest.mark.timeout(240)]


def _start_driver(out: Path, steps: int, sleep: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "pipeline_toy.py"), str(out), str(steps), str(sleep)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_interrupted_local_run_resumes_to_the_same_result(tmp_path, how):
    """Interrupt the driver in the middle of the MPI phase; the rerun finishes with the same result."""
    out = tmp_path / "run"
    steps = 4
    drv = _start_driver(out, steps, 1.0)  # a wide window for the interrupt, also on a loaded machine
    _wait_for(lambda: (out / "b" / "step0000").exists(), 90, "phase b to start working")
    if how == "sigterm":
        drv.send_signal(signal.SIGTERM)  # the driver asks the phase to save, records it, exits 130
        assert drv.wait(60) == 130, drv.stdout.read().decode()
        assert RunState(out / "state.json").status("b") == "interrupted"
    else:
        drv.kill()  # no chance to record anything: the phase dies with its parent (PDEATHSIG)
        drv.wait(10)
        pid = int((out / "b" / "pid").read_text())
        _wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the orphaned phase to stop")
        assert RunState(out / "state.json").status("b") == "running"  # stale: the rerun must redo it
    drv.stdout.close()
    done_before = work_counts(out)["b"]
    assert 0 < len(done_before) < steps and not (out / "c").exists()

    if how == "sigterm":  # and a failing phase on the way: the chain stops there, the rerun goes on
        with pytest.raises(GMError, match=r"(?s)c: exit code 1 .*last lines of.*exitcode  : 3"):
            run_local(out, steps=steps, fail="c")
        assert RunState(out / "state.json").status("c") == "failed"
    run_local(out, steps=steps, sleep=0.0)
    assert result(out) == expected_result(steps)
    counts = work_counts(out)
    assert counts["a"] == list(range(steps))  # done before: not rerun
    # b resumed where it saved: no step was computed twice
    assert sorted(counts["b"]) == list(range(steps)), counts["b"]
    st = RunState(out / "state.json").phases()
    assert st["a"]["attempts"] == 1 and st["b"]["attempts"] == 2
    assert st["c"]["attempts"] == (2 if how == "sigterm" else 1)
    assert all(st[n]["status"] == "done" for n in "abcd")
    # a third run has nothing to do
    run_local(out, steps=steps, sleep=0.0)
    assert RunState(out / "state.json").phases()["d"]["attempts"] == 1
