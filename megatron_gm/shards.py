"""Rank-addressable shards with completion markers (in the manner of datatrove).

A ``ShardSet`` is a folder of ``num_shards`` shards. Shard ``i`` is written by whichever rank owns it
(``i % world_size == rank``), as ``shard-{i:05d}.npz`` plus a ``shard-{i:05d}.done`` marker written
last. The marker records the size and sha256 of the shard it vouches for. A rerun after a kill skips
shards whose marker exists and whose size matches it, so work is idempotent and nothing finished is
redone, while a shard cut short after its marker was written is redone. Reading a shard checks its
checksum; on a mismatch the marker is withdrawn (so the rerun redoes that shard only) and the read is a
one-line error. Shards hold numpy arrays only (``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from megatron_gm.dist import EVERY_RANK, get_logger
from megatron_gm.errors import GMError
from megatron_gm.fs import atomic_write_bytes, remove_stale_temporaries
from megatron_gm.manifest import Manifest

log = get_logger(__name__)


def num_shards(num_docs: int, shard_size: int) -> int:
    """Shards of ``shard_size`` contiguous documents over ``num_docs`` (at least one)."""
    return max(1, math.ceil(num_docs / shard_size))


def shard_range(i: int, num_docs: int, shard_size: int) -> tuple[int, int]:
    """Documents ``[lo, hi)`` of shard ``i``: fixed boundaries, independent of the number of ranks."""
    return i * shard_size, min((i + 1) * shard_size, num_docs)


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
        remove_stale_temporaries(self.folder)  # shards and markers a killed writer left half-renamed
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

    def record(self, i: int) -> dict | None:
        """The marker's record ``{"bytes", "sha256"}``; None without a marker, ``{}`` for an old empty one."""
        try:
            text = self.marker(i).read_text()
        except FileNotFoundError:
            return None
        if not text.strip():
            return {}  # written before markers held a checksum: trusted as before
        try:
            rec = json.loads(text)
            return rec if isinstance(rec, dict) else {"bytes": -1}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"bytes": -1}  # a damaged marker vouches for nothing

    def is_done(self, i: int) -> bool:
        """The marker exists and the shard has the size it records (cheap: no read of the shard)."""
        rec = self.record(i)
        if rec is None:
            return False
        try:
            size = self.path(i).stat().st_size
        except FileNotFoundError:
            return False
        return "bytes" not in rec or rec["bytes"] == size

    def pending(self, rank: int = 0, world_size: int = 1) -> list[int]:
        return [i for i in self.owned(rank, world_size) if not self.is_done(i)]

    def all_done(self) -> bool:
        return all(self.is_done(i) for i in range(self.num_shards))

    def write(self, i: int, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        atomic_write_bytes(self.path(i), data)
        rec = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_bytes(self.marker(i), (json.dumps(rec) + "\n").encode())

    def read(self, i: int) -> dict[str, np.ndarray]:
        if not self.is_done(i):
            if self.marker(i).exists():
                self._withdraw(i)
                raise GMError(
                    f"{self.path(i)}: missing or not the size its .done marker records (truncated?); "
                    "rerun the phase to redo this shard"
                )
            raise GMError(f"{self.path(i)}: shard is not complete; rerun the phase to finish it")
        data = self.path(i).read_bytes()
        want = (self.record(i) or {}).get("sha256")
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            self._withdraw(i)
            raise GMError(
                f"{self.path(i)}: checksum differs from its .done marker (changed after writing); "
                "rerun the phase to redo this shard"
            )
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise GMError(
                f"{self.path(i)}: unreadable shard ({e}); delete it and its .done marker, rerun"
            ) from e

    def _withdraw(self, i: int) -> None:
        """Remove the marker of a shard it no longer vouches for, so that a rerun redoes the shard."""
        try:
            self.marker(i).unlink()
            log.warning("%s: withdrew the marker of a damaged shard", self.marker(i), extra=EVERY_RANK)
        except OSError:
            pass

    def read_all(self) -> list[dict[str, np.ndarray]]:
        missing = [i for i in range(self.num_shards) if not self.is_done(i)]
        if missing:
            raise GMError(
                f"{self.folder}: {len(missing)} of {self.num_shards} shards unfinished "
                f"(first: {missing[0]}); rerun the phase to finish them"
            )
        return [self.read(i) for i in range(self.num_shards)]
