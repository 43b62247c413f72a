"""Pool scores: h [n, d] and s [n] of every document, as a ShardSet with a "scores" manifest.

Shard ``i`` holds documents ``[i * shard_size, min((i + 1) * shard_size, num_docs))`` (fixed boundaries,
independent of the number of ranks) as arrays ``documents`` (int64), ``h`` (float32) and ``s`` (float32).
The manifest's config records num_docs, shard_size, dim and the model's alpha and tau; ``inputs`` records
the influence-model hash. tools/select_data.py writes such a folder (``--scores-dir``) or reads a finished
one (``--scores-from``); ``write_scores`` writes one from arrays (tests, benchmarks, outside embedders).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.shards import ShardSet, num_shards, shard_range

KIND = "scores"


def scores_manifest(
    *,
    dataset_fingerprint: str,
    num_docs: int,
    shard_size: int,
    dim: int,
    alpha: float,
    tau: float,
    model_hash: str,
    stage: int | None = None,
    iteration: int | None = None,
    extra: dict | None = None,
) -> Manifest:
    config = {
        "num_docs": int(num_docs),
        "shard_size": int(shard_size),
        "dim": int(dim),
        "alpha": float(alpha),
        "tau": float(tau),
    }
    config.update(extra or {})
    return Manifest(
        kind=KIND,
        dataset_fingerprint=dataset_fingerprint,
        stage=stage,
        iteration=iteration,
        config=config,
        inputs={"influence_model": model_hash},
    )


def open_scores(folder: str | os.PathLike) -> tuple[ShardSet, Manifest]:
    """Open a finished scores folder for reading; refuse anything else with a one-line error."""
    folder = Path(folder)
    manifest = Manifest.load(folder / "manifest.json")
    if manifest.kind != KIND:
        raise GMError(f"{folder}: is a {manifest.kind!r} artifact, not pool scores")
    cfg = manifest.config
    shards = ShardSet(folder, num_shards(int(cfg["num_docs"]), int(cfg["shard_size"])))
    missing = [i for i in range(shards.num_shards) if not shards.is_done(i)]
    if missing:
        raise GMError(
            f"{folder}: {len(missing)} of {shards.num_shards} score shards unfinished (first: {missing[0]}); "
            "finish the scoring run first"
        )
    return shards, manifest


def check_shard(shards: ShardSet, i: int, arrays: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    lo, hi = shard_range(i, int(cfg["num_docs"]), int(cfg["shard_size"]))
    docs, h, s = arrays.get("documents"), arrays.get("h"), arrays.get("s")
    ok = (
        docs is not None
        and h is not None
        and s is not None
        and docs.shape == (hi - lo,)
        and np.array_equal(docs, np.arange(lo, hi))
        and h.shape == (hi - lo, int(cfg["dim"]))
        and h.dtype == np.float32
        and s.shape == (hi - lo,)
        and s.dtype == np.float32
    )
    if not ok:
        raise GMError(f"{shards.path(i)}: not a score shard for documents {lo}..{hi - 1}; rescore it")
    if not (np.isfinite(h).all() and np.isfinite(s).all()):
        raise GMError(f"{shards.path(i)}: non-finite h or s; delete the shard and its .done marker, rerun")
    return arrays


def read_shard(shards: ShardSet, i: int, cfg: dict) -> dict[str, np.ndarray]:
    return check_shard(shards, i, shards.read(i), cfg)


def write_scores(
    folder: str | os.PathLike,
    h: np.ndarray,
    s: np.ndarray,
    *,
    alpha: float,
    tau: float,
    dataset_fingerprint: str,
    model_hash: str,
    shard_size: int = 10000,
    stage: int | None = None,
    iteration: int | None = None,
) -> Path:
    """Write given embeddings and scores as a finished scores folder (must not exist yet)."""
    folder = Path(folder)
    if folder.exists():
        raise GMError(f"{folder}: exists; scores are written to a new folder")
    h = np.ascontiguousarray(h, dtype=np.float32)
    s = np.ascontiguousarray(s, dtype=np.float32)
    n = s.shape[0]
    if h.ndim != 2 or h.shape[0] != n or n == 0:
        raise GMError(f"{folder}: expected h [n, d] and s [n] with n > 0, got {h.shape} and {s.shape}")
    manifest = scores_manifest(
        dataset_fingerprint=dataset_fingerprint,
        num_docs=n,
        shard_size=shard_size,
        dim=h.shape[1],
        alpha=alpha,
        tau=tau,
        model_hash=model_hash,
        stage=stage,
        iteration=iteration,
    )
    shards = ShardSet(folder, num_shards(n, shard_size))
    shards.open(manifest)
    for i in range(shards.num_shards):
        lo, hi = shard_range(i, n, shard_size)
        shards.write(i, documents=np.arange(lo, hi, dtype=np.int64), h=h[lo:hi], s=s[lo:hi])
    return folder
