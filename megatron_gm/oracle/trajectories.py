"""Which documents each trajectory probes, by trajectory id.

- ``random``: T distinct documents drawn from the candidate pool (every document with at least two
  tokens, or a given subset) by a generator seeded with (seed, trajectory id), so trajectory k is the
  same whatever the world size, shard size or resume point.
- ``file``: rows of a trajectory file written by ``tools/bootstrap_trajectories.py`` (format, writer and
  loader at the end of this module: ``documents.npy`` int64 [n, T] + manifest of kind "trajectories");
  trajectory k is row k.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.fs import atomic_write_bytes
from megatron_gm.manifest import Manifest

POLICIES = ("random", "file")
DEFAULT_T = 10
TRAJ_KIND = "trajectories"


def random_trajectory(candidates: np.ndarray, T: int, seed: int, traj_id: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), int(traj_id)])
    return candidates[rng.choice(len(candidates), size=T, replace=False)]


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()[:16]


@dataclasses.dataclass
class TrajectorySource:
    policy: str
    T: int
    num_trajectories: int
    seed: int
    candidates: np.ndarray | None = None  # random policy: document indices to draw from
    table: np.ndarray | None = None  # file policy: [n, T]
    inputs: dict = dataclasses.field(default_factory=dict)  # manifest inputs (name -> digest)

    def documents(self, traj_ids) -> np.ndarray:
        ids = np.asarray(list(traj_ids), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_trajectories):
            raise IndexError(f"trajectory ids out of range 0..{self.num_trajectories - 1}")
        if self.policy == "file":
            return self.table[ids].astype(np.int64)
        out = np.empty((len(ids), self.T), dtype=np.int64)
        for row, k in enumerate(ids):
            out[row] = random_trajectory(self.candidates, self.T, self.seed, int(k))
        return out

    def manifest_config(self) -> dict:
        cfg = {"policy": self.policy, "T": self.T, "num_trajectories": self.num_trajectories}
        if self.candidates is not None:
            cfg["num_candidates"] = int(len(self.candidates))
        return cfg


def load_candidates(path: str, num_docs: int, dataset_fingerprint: str | None) -> np.ndarray:
    """A .npy of document indices, or a selection folder (documents.npy + manifest.json)."""
    if os.path.isdir(path):
        from megatron_gm.data.selection import load_selection

        docs, _ = load_selection(path, dataset_fingerprint=dataset_fingerprint, num_docs=num_docs)
        return docs
    try:
        docs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise GMError(
            f"{path}: unreadable candidates ({e}); pass a .npy of document indices or a selection"
        ) from e
    if not np.issubdtype(docs.dtype, np.integer):
        raise GMError(f"{path}: candidates must be integer document indices, got {docs.dtype}")
    docs = np.unique(docs.reshape(-1).astype(np.int64))
    if docs.size == 0 or docs[0] < 0 or docs[-1] >= num_docs:
        raise GMError(f"{path}: candidates empty or out of range for a dataset of {num_docs} documents")
    return docs


def build_source(
    policy: str,
    *,
    T: int | None,
    num_trajectories: int | None,
    seed: int,
    doc_lengths: np.ndarray,
    dataset_fingerprint: str | None,
    candidates: str | None = None,
    trajectory_file: str | None = None,
) -> TrajectorySource:
    """Check the flags against the pool and return the trajectory source."""
    if policy not in POLICIES:
        raise GMError(f"--gm-oracle-policy {policy!r}: use one of {', '.join(POLICIES)}")
    if T is not None and T < 1:
        raise GMError(f"--gm-oracle-T {T}: a trajectory needs at least one step (T >= 1)")
    if num_trajectories is not None and num_trajectories < 1:
        raise GMError(f"--gm-oracle-trajectories {num_trajectories}: must be at least 1")
    num_docs = len(doc_lengths)
    if policy == "file":
        if not trajectory_file:
            raise GMError("--gm-oracle-policy file needs --gm-oracle-trajectory-file DIR")
        table, manifest = load_trajectories(
            trajectory_file, dataset_fingerprint=dataset_fingerprint, num_docs=num_docs
        )
        if T is not None and T != table.shape[1]:
            raise GMError(
                f"{trajectory_file}: trajectories have T={table.shape[1]}, but --gm-oracle-T is {T}"
            )
        n = len(table) if num_trajectories is None else num_trajectories
        if n > len(table):
            raise GMError(f"{trajectory_file}: holds {len(table)} trajectories, {n} were asked for")
        return TrajectorySource(
            "file", int(table.shape[1]), n, seed, table=table[:n],
            inputs={"trajectories": manifest.digest(), "trajectory_table": _digest(table[:n])},
        )  # fmt: skip
    if trajectory_file:
        raise GMError("--gm-oracle-trajectory-file needs --gm-oracle-policy file")
    if num_trajectories is None:
        raise GMError("--gm-oracle-policy random needs --gm-oracle-trajectories N")
    T = DEFAULT_T if T is None else T
    pool = load_candidates(candidates, num_docs, dataset_fingerprint) if candidates else np.arange(num_docs)
    pool = pool[np.asarray(doc_lengths)[pool] >= 2]  # a one-token document has no label to train on
    if T > len(pool):
        where = candidates or "the dataset"
        raise GMError(f"{where}: {len(pool)} candidate documents (2+ tokens), fewer than T={T}")
    return TrajectorySource(
        "random", T, num_trajectories, seed, candidates=pool, inputs={"candidates": _digest(pool)}
    )


# -- trajectory files (tools/bootstrap_trajectories.py writes them) --------------------------------------


def _save_npy(path: Path, a: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, a)
    atomic_write_bytes(path, buf.getvalue())


def save_trajectories(
    folder: str | os.PathLike,
    documents: np.ndarray,
    manifest: Manifest,
    *,
    predicted: np.ndarray | None = None,
    tail: np.ndarray | None = None,
    probe_documents: np.ndarray | None = None,
) -> Path:
    folder = Path(folder)
    docs = np.asarray(documents, dtype=np.int64)
    if docs.ndim != 2 or docs.size == 0:
        raise GMError(f"{folder}: trajectories must be a non-empty [n, T] array of document indices")
    if manifest.kind != TRAJ_KIND:
        raise GMError(f"{folder}: trajectory manifest must have kind {TRAJ_KIND!r}")
    folder.mkdir(parents=True, exist_ok=True)
    _save_npy(folder / "documents.npy", docs)
    if predicted is not None:
        _save_npy(folder / "predicted.npy", np.asarray(predicted, dtype=np.float32))
    if tail is not None:
        _save_npy(folder / "tail.npy", np.asarray(tail, dtype=np.int8))
    if probe_documents is not None:
        _save_npy(folder / "probe_documents.npy", np.asarray(probe_documents, dtype=np.int64))
    manifest.config["T"] = int(docs.shape[1])
    manifest.config["num_trajectories"] = int(docs.shape[0])
    manifest.save(folder / "manifest.json")
    return folder


def load_trajectories(
    folder: str | os.PathLike, *, dataset_fingerprint: str | None = None, num_docs: int | None = None
) -> tuple[np.ndarray, Manifest]:
    """documents [n, T] int64 and the manifest; refuses a file made for another dataset."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GMError(f"{folder}: trajectory file not found; write one with tools/bootstrap_trajectories.py")
    manifest = Manifest.load(folder / "manifest.json")
    if manifest.kind != TRAJ_KIND:
        raise GMError(f"{folder}: is a {manifest.kind!r} artifact, not a trajectory file")
    manifest.check(path=folder, dataset_fingerprint=dataset_fingerprint)
    try:
        docs = np.load(folder / "documents.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise GMError(f"{folder}/documents.npy: unreadable ({e}); regenerate the trajectories") from e
    if docs.ndim != 2 or docs.dtype != np.int64 or docs.size == 0:
        raise GMError(f"{folder}/documents.npy: not a non-empty int64 [n, T] array; regenerate it")
    if num_docs is not None and (docs.min() < 0 or docs.max() >= num_docs):
        raise GMError(f"{folder}: document index out of range for a dataset of {num_docs} documents")
    return docs, manifest
