"""Slurm you can try: the controller check before any work, and scripts/local_slurm.sh up|status|down."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from megatron_gm.errors import GMError
from megatron_gm.pipeline.slurm import check_controller
from tests.slurm_cluster import slurm_available

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.timeout(240),
    pytest.mark.skipif(slurm_available() is not None, reason=str(slurm_available())),
]


def test_no_controller_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing.conf"))
    with pytest.raises(GMError, match="missing.conf: file not found; start a single-host one with"):
        check_controller()
    # the quickstart stops before training a tokenizer or preprocessing
    out = tmp_path / "qs"
    env = {**os.environ, "OUT": str(out), "SLURM_CONF": str(tmp_path / "missing.conf")}
    p = subprocess.run(["bash", "examples/quickstart.sh", "--mode", "slurm", "--wait"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=200)  # fmt: skip
    assert p.returncode != 0
    errors = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "scripts/local_slurm.sh up" in errors[0], p.stderr
    assert not (out / "tokenizer.model").exists() and not list(out.glob("pool_*"))


def _slurm_pids(conf: Path) -> list[int]:
    needle = f"SLURM_CONF={conf}\0".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_local_slurm_up_status_down(tmp_path, monkeypatch):
    env = {**os.environ, "GM_SLURM_DIR": str(tmp_path / "s")}
    conf = tmp_path / "s" / "slurm.conf"

    def sh(*args):
        return subprocess.run(["bash", "scripts/local_slurm.sh", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    up = sh("up")
    try:
        assert up.returncode == 0, up.stderr + (tmp_path / "s/keeper.log").read_text()
        assert up.stdout.strip().endswith(f"export SLURM_CONF={conf}")
        assert "already up" in sh("up").stdout  # a second `up` keeps the running one
        status = sh("status")
        assert status.returncode == 0 and "is UP" in status.stdout and "gmnode1 idle" in status.stdout
        monkeypatch.setenv("SLURM_CONF", str(conf))
        assert " is UP" in check_controller()
        job = subprocess.run(["sbatch", "--wait", "-o", str(tmp_path / "job.out"), "--wrap", "echo hello"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert job.returncode == 0 and (tmp_path / "job.out").read_text() == "hello\n"
    finally:
        down = sh("down")
    assert down.returncode == 0 and "local Slurm down" in down.stdout, down.stderr
    assert _slurm_pids(conf) == []  # no daemon or job step outlives `down`
    assert sh("status").returncode == 3
    with pytest.raises(GMError, match="no reachable Slurm controller"):
        check_controller(timeout=30)
