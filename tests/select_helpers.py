"""Helpers for the selection tests: synthetic scores and running tools/select_data.py as users do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_gm.selection.cluster import assign, kmeans_sample, train_centroids
from megatron_gm.selection.methods import draw_seed, select_documents
from megatron_gm.selection.score_store import write_scores

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "select_data.py"
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]


def synthetic_scores(folder: Path, n=3000, d=32, topics=12, shard_size=700, seed=0, fingerprint="f00d"):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, d)).astype(np.float32)
    h = centers[rng.integers(0, topics, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    h *= (rng.uniform(0.6, 1.0, n) / np.linalg.norm(h, axis=1))[:, None].astype(np.float32)
    s = (rng.standard_normal(n) + 0.3).astype(np.float32)
    write_scores(
        folder,
        h,
        s,
        alpha=0.8,
        tau=1.4,
        dataset_fingerprint=fingerprint,
        model_hash="model0",
        shard_size=shard_size,
        iteration=50,
    )
    return h, s


def reference_selection(
    h,
    s,
    *,
    method,
    k,
    ratio=0.5,
    seed=1234,
    niter=100,
    ppc=256,
    shard_size=700,
    alpha=0.8,
    tau=1.4,
    temperature=1.0,
    stage=1,
):
    """What the tool must select, computed in this process with the same building blocks."""
    seed = draw_seed(seed, stage)  # the tool draws from (seed, stage)
    sample = kmeans_sample(len(s), k, seed, ppc)
    cents = train_centroids(h[sample], k, seed=seed, niter=niter)
    labels = np.concatenate([assign(h[lo : lo + shard_size], cents) for lo in range(0, len(s), shard_size)])
    return select_documents(
        method,
        labels,
        h,
        s,
        num_clusters=k,
        ratio=ratio,
        alpha=alpha,
        tau=tau,
        temperature=temperature,
        seed=seed,
    )


def run_tool(*args, ranks: int | None = None, timeout=120, **popen) -> subprocess.CompletedProcess:
    """``python tools/select_data.py ARGS`` (``ranks`` set: under mpirun -n ranks)."""
    cmd = [sys.executable, str(TOOL), *map(str, args)]
    if ranks is not None:
        if shutil.which("mpirun") is None:
            pytest.skip("mpirun not installed")
        cmd = [*MPIRUN, "-n", str(ranks), *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, **popen)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The tool's one-line error (mpirun adds its own banner around it)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]
