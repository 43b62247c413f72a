"""The oracle store: trajectories of candidate documents and their incremental labels.

A ``ShardSet`` folder (one shard per data-parallel group and round of work) whose manifest has kind
``oracle`` and records stage, checkpoint iteration, dataset fingerprint, reference-set hash, T, policy
and seed in ``config``. Each shard holds:

- ``traj_id``   int64   [n]       global trajectory id (unique across shards)
- ``documents`` int64   [n, T]    document indices into the pool's indexed dataset, in step order
- ``labels``    float32 [n, T]    I_t = L_ref(θ_t) − L_ref(θ_{t−1})   (negative = helpful)
- ``ref_loss``  float32 [n, T+1]  L_ref(θ_0..θ_T), kept for audit

``load_oracle`` concatenates all shards sorted by ``traj_id``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.shards import ShardSet


@dataclasses.dataclass
class OracleData:
    traj_id: np.ndarray
    documents: np.ndarray
    labels: np.ndarray
    ref_loss: np.ndarray
    manifest: Manifest

    def __len__(self) -> int:
        return len(self.traj_id)

    @property
    def T(self) -> int:
        return self.documents.shape[1]


def load_oracle(folder: str | os.PathLike, *, dataset_fingerprint: str | None = None) -> OracleData:
    manifest = Manifest.load(os.path.join(folder, "manifest.json"))
    if manifest.kind != "oracle":
        raise GMError(f"{folder}: is a {manifest.kind!r} artifact, not an oracle store")
    manifest.check(path=folder, dataset_fingerprint=dataset_fingerprint)
    num_shards = int(manifest.config.get("num_shards", 0))
    shards = ShardSet(folder, num_shards).read_all()
    cat = {k: np.concatenate([s[k] for s in shards]) for k in ("traj_id", "documents", "labels", "ref_loss")}
    order = np.argsort(cat["traj_id"], kind="stable")
    cat = {k: v[order] for k, v in cat.items()}
    if len(np.unique(cat["traj_id"])) != len(cat["traj_id"]):
        raise GMError(f"{folder}: duplicate trajectory ids across shards; the store is corrupt")
    if not np.all(np.isfinite(cat["labels"])):
        bad = int(np.sum(~np.isfinite(cat["labels"])))
        raise GMError(f"{folder}: {bad} labels are NaN or infinite; recollect those trajectories")
    return OracleData(manifest=manifest, **cat)


def write_oracle_store(folder, manifest: Manifest, shards: list[dict[str, np.ndarray]]) -> None:
    """Write a complete store in one go (tests, synthetic data, merging rounds)."""
    if manifest.kind != "oracle":
        raise GMError(f"{folder}: oracle store manifest must have kind 'oracle'")
    manifest.config["num_shards"] = len(shards)
    s = ShardSet(folder, len(shards))
    s.open(manifest)
    for i, arrays in enumerate(shards):
        s.write(i, **arrays)


def label_stats(data: OracleData) -> dict[str, float]:
    """Spread of the labels: count, mean, std and quantiles (all positions of all trajectories)."""
    x = data.labels.astype(np.float64).reshape(-1)
    q = np.quantile(x, [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]) if x.size else [float("nan")] * 7
    names = ("q01", "q10", "q25", "q50", "q75", "q90", "q99")
    out = {"count": int(x.size), "mean": float(x.mean()) if x.size else float("nan"), "std": float(x.std())}
    out.update({k: float(v) for k, v in zip(names, q, strict=True)})
    out["negative_share"] = float((x < 0).mean()) if x.size else float("nan")
    return out
