"""The whole Group-MATES loop with the real phases, locally and through sbatch on a real Slurm.

stage 0 (random) -> oracle -> influence model -> selection -> stage 1, for the ``test`` preset on a
300-document slice of the bundled pool. The Slurm run is cancelled (scancel of every job) in the middle
of oracle collection, after its first shard, and resubmitted; its artifacts must be the same bytes as
the uninterrupted local run's: oracle store, influence model, and the final selection.
"""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from megatron_gm.pipeline.state import RunState
from tests.slurm_cluster import SlurmCluster, slurm_available

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
POOL = DATA / "pool_20k.jsonl.gz"
N_DOCS = 300
# four oracle shards, so that the scancel lands between shards
SETS = ["--set", "oracle.extra_args=--gm-oracle-shard-size 4"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.megatron,
    pytest.mark.mpi,
    pytest.mark.timeout(600),
    pytest.mark.skipif(slurm_available() is not None, reason=str(slurm_available())),
    pytest.mark.skipif(not POOL.exists(), reason=f"{POOL} not found (the bundled data)"),
]


def _tool(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if check and r.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    return r


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, str]:
    """A slice of the bundled pool as a Megatron indexed dataset with its own small tokenizer."""
    d = tmp_path_factory.mktemp("pool")
    with gzip.open(POOL, "rb") as f, open(d / "pool.jsonl", "wb") as g:
        g.writelines(itertools.islice(f, N_DOCS))
    _tool("tools/train_tokenizer.py", "--input", str(d / "pool.jsonl"), "--vocab-size", "1000",
          "--model-prefix", str(d / "tok"))  # fmt: skip
    _tool("tools/preprocess_data.py", "--input", str(d / "pool.jsonl"), "--output-prefix", str(d / "pool"),
          "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(d / "tok.model"),
          "--append-eod", "--workers", "1")  # fmt: skip
    return {"data": str(d / "pool_text_document"), "tok": str(d / "tok.model")}


def _args(pool: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["tools/run_pipeline.py", "--preset", "test", "--stages", "2", "--out", str(out),
            "--data-path", pool["data"], "--tokenizer-model", pool["tok"], "--ref", str(DATA / "ref_wikitext103_valid.jsonl.gz"), *SETS, *extra]  # fmt: skip


def _same_files(a: Path, b: Path, pattern: str) -> list[str]:
    names = sorted(p.relative_to(a).as_posix() for p in a.glob(pattern) if p.is_file())
    assert names, f"no {pattern} under {a}"
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), f"{n} differs between {a} and {b}"
    return names


def test_slurm_loop_with_scancel_equals_local_loop(pool, tmp_path):
    # the reference: the local driver, uninterrupted, alongside the Slurm run (each phase uses one
    # thread, so the two chains share two cores without slowing each other much)
    local = tmp_path / "local"
    ref = subprocess.Popen(
        [sys.executable, *_args(pool, local)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    try:
        with SlurmCluster(tmp_path / "slurm", nodes=2) as cluster:
            env = {"SLURM_CONF": str(cluster.conf)}
            run = tmp_path / "slurm-run"
            r = _tool(*_args(pool, run, "--mode", "slurm"), env=env)
            assert "stage0.oracle: submitted job" in r.stdout
            # cancel everything once the oracle has stored its first shard of trajectories
            deadline = time.monotonic() + 240
            while not (run / "stage0" / "oracle" / "shard-00000.done").exists():
                assert time.monotonic() < deadline, f"oracle never started:\n{cluster.logs()}"
                assert cluster.active_jobs(), f"the chain ended early:\n{r.stdout}\n{cluster.logs()}"
                time.sleep(0.2)
            jobs = [rec["job_id"] for rec in RunState(run / "state.json").phases().values()]
            cluster.run(["scancel", *jobs])
            assert cluster.wait_idle(60)
            st = RunState(run / "state.json")
            assert st.status("stage0.pretrain") == "done" and st.status("stage0.oracle") != "done"
            shards_before = len(list((run / "stage0" / "oracle").glob("shard-*.done")))

            # resubmit: only what is not done; wait for the chain and its report
            r = _tool(*_args(pool, run, "--mode", "slurm", "--wait", "--poll", "0.5"), env=env)
            assert "stage0.pretrain" not in r.stdout.split("Group-MATES run")[0], r.stdout  # not resubmitted
            assert "stage1.pretrain              done" in r.stdout, r.stdout

        out, _ = ref.communicate(timeout=300)
    finally:
        if ref.poll() is None:
            ref.kill()  # its phases get SIGTERM through PR_SET_PDEATHSIG
            ref.communicate()
    assert ref.returncode == 0 and "stage1.pretrain              done" in out, out
    phases = RunState(run / "state.json").phases()
    assert phases["stage0.oracle"]["attempts"] == 2 and phases["stage0.pretrain"]["attempts"] == 1
    assert 1 <= shards_before < 4  # the oracle resumed after its finished shards
    # the same bytes as the uninterrupted local run
    _same_files(local / "stage1" / "selection", run / "stage1" / "selection", "*")
    _same_files(local / "stage0" / "influence", run / "stage0" / "influence", "*.safetensors")
    for name in _same_files(local / "stage0" / "oracle", run / "stage0" / "oracle", "shard-*.npz"):
        assert np.load(local / "stage0" / "oracle" / name)["labels"].size > 0
    docs = np.load(run / "stage1" / "selection" / "documents.npy")
    assert 0 < len(docs) < N_DOCS
    for d in (local, run):
        assert (
            d / "stage1" / "checkpoints" / "latest_checkpointed_iteration.txt"
        ).read_text().strip() == "16"
    assert "validation loss" in (run / "report.txt").read_text()
