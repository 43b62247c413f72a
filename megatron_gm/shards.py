"""Rank-addressable shards with completion markers (in the manner of datatrove).

A ``ShardSet`` is a folder of ``num_shards`` shards. Shard ``i`` is written by whichever rank owns it
(``i % world_size == rank``), as ``shard-{i:05d}.npz`` plus an empty ``shard-{i:05d}.done`` marker
written last. A rerun after a kill skips shards whose marker exists, so work is idempotent and nothing
finished is redone. Shards hold numpy arrays only (``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest, atomic_write_bytes


class ShardSet:
    def __init__(self, folder: str | os.PathLike, num_shards: int):
        if num_shards < 1:
            raise GMError(f"{folder}: a shard set needs at least one shard, got {num_shards}")
        self.folder = Path(folder)
        self.num_shards = num_shards

    # -- paths -------------------------------------------------------------------------------
    def path(self, i: int) -> Path:
        return self.folder / f"shard-{i:05d}.npz"

    def marker(self, i: int) -> Path:
        return self.folder / f"shard-{i:05d}.done"

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    # -- manifest ----------------------------------------------------------------------------
    def open(self, manifest: Manifest) -> None:
        """Create the folder, or check that an existing one was started with the same manifest.

        Call on every rank (idempotent); ranks other than 0 may race rank 0 here, which is harmless
        because every rank writes the same manifest.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.exists():
            old = Manifest.load(self.manifest_path)
            if old.digest() != manifest.digest():
                raise GMError(
                    f"{self.folder}: holds shards of a different run (manifest differs); "
                    "use a new output folder or delete this one"
                )
        else:
            manifest.save(self.manifest_path)

    # -- shards ------------------------------------------------------------------------------
    def owned(self, rank: int, world_size: int) -> list[int]:
        return list(range(rank, self.num_shards, world_size))

    def is_done(self, i: int) -> bool:
        return self.marker(i).exists() and self.path(i).exists()

    def pending(self, rank: int = 0, world_size: int = 1) -> list[int]:
        return [i for i in self.owned(rank, world_size) if not self.is_done(i)]

    def all_done(self) -> bool:
        return all(self.is_done(i) for i in range(self.num_shards))

    def write(self, i: int, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.path(i), buf.getvalue())
        atomic_write_bytes(self.marker(i), b"")

    def read(self, i: int) -> dict[str, np.ndarray]:
        if not self.is_done(i):
            raise GMError(f"{self.path(i)}: shard is not complete; rerun the phase to finish it")
        with np.load(self.path(i), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def read_all(self) -> list[dict[str, np.ndarray]]:
        missing = [i for i in range(self.num_shards) if not self.is_done(i)]
        if missing:
            raise GMError(
                f"{self.folder}: {len(missing)} of {self.num_shards} shards unfinished "
                f"(first: {missing[0]}); rerun the phase to finish them"
            )
        return [self.read(i) for i in range(self.num_shards)]
