"""Training data for the influence model: oracle stores (one or several rounds), split, z-scored labels."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.oracle.store import load_oracle


@dataclasses.dataclass
class TrajectoryData:
    documents: np.ndarray  # int64 [n, T] document indices into the pool dataset
    labels: np.ndarray  # float32 [n, T] raw oracle labels
    store: np.ndarray  # int64 [n] which store each trajectory came from
    manifests: list[Manifest]
    folders: list[str]

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def T(self) -> int:
        return int(self.documents.shape[1])

    def inputs(self) -> dict[str, str]:
        """Manifest ``inputs`` entries: one digest per oracle store."""
        return {f"oracle_{i}": m.digest() for i, m in enumerate(self.manifests)}


def load_stores(folders: list[str], dataset_fingerprint: str, num_docs: int | None = None) -> TrajectoryData:
    """Load and concatenate oracle stores of this dataset: same checkpoint, T and reference set."""
    if not folders:
        raise GMError("no oracle store given; pass --oracle DIR (several for several rounds)")
    parts = []
    for f in folders:
        if not os.path.isdir(f):
            raise GMError(f"{f}: oracle store not found; run tools/collect_oracle.py first or fix --oracle")
        parts.append(load_oracle(f, dataset_fingerprint=dataset_fingerprint))
    first = parts[0]
    for f, p in zip(folders[1:], parts[1:], strict=True):
        if p.T != first.T:
            raise GMError(
                f"{f}: trajectories have T={p.T}, but {folders[0]} has T={first.T}; use stores with one T"
            )
        for key in ("stage", "iteration"):
            a, b = getattr(first.manifest, key), getattr(p.manifest, key)
            if a is not None and b is not None and a != b:
                raise GMError(
                    f"{f}: oracle labels from {key} {b}, but {folders[0]} is from {key} {a}; "
                    "train on stores collected from the same checkpoint"
                )
        a, b = first.manifest.inputs.get("reference"), p.manifest.inputs.get("reference")
        if a is not None and b is not None and a != b:
            raise GMError(
                f"{f}: oracle labels measured on reference set {b}, but {folders[0]} on {a}; "
                "collect every store with the same --gm-oracle-ref-data"
            )
    docs = np.concatenate([p.documents for p in parts]).astype(np.int64)
    labels = np.concatenate([p.labels for p in parts]).astype(np.float32)
    store = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(parts)])
    if len(docs) == 0:
        raise GMError(f"{', '.join(folders)}: the oracle stores hold no trajectories")
    if num_docs is not None and (docs.min() < 0 or docs.max() >= num_docs):
        raise GMError(
            f"{folders[int(store[np.argmax((docs < 0) | (docs >= num_docs)) // docs.shape[1]])]}: document index "
            f"out of range for a dataset of {num_docs} documents; the store belongs to another dataset"
        )
    return TrajectoryData(docs, labels, store, [p.manifest for p in parts], [str(f) for f in folders])


def default_val_count(n: int) -> int:
    """min(1,000, 5 %) of the trajectories, at least one."""
    return max(1, min(1000, round(0.05 * n)))


def split_indices(n: int, val_count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of trajectory positions: (train, val), each sorted."""
    if not 1 <= val_count < n:
        raise GMError(
            f"need 1 <= validation trajectories < {n} (the store size), got {val_count}; fix --val-count"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_count:]), np.sort(perm[:val_count])


def zscore_stats(labels: np.ndarray) -> tuple[float, float]:
    mean = float(np.mean(labels, dtype=np.float64))
    std = float(np.std(labels, dtype=np.float64))
    if not np.isfinite(std) or std <= 0:
        raise GMError(
            "oracle labels of the training split are constant; nothing to learn (check the oracle store)"
        )
    return mean, std


def array_digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
