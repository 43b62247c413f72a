"""The probe loop and the sharded, resumable collection driver (independent of the model framework).

An engine holds a model restored to the checkpoint and implements ``restore()`` (back to the checkpoint
state, in memory), ``train_step(doc, seed)`` (one optimizer step on pool document ``doc`` alone) and
``reference_loss()`` (mean token loss over the reference set, the same value on every rank). The Megatron
engine is ``megatron_gm.oracle.megatron_engine``; tests also drive a plain torch one.

Trajectory ids are cut into fixed blocks of ``shard_size``: block i is shard i of the store. Pending
shards are dealt round-robin to data-parallel groups; each group probes its shards and one rank of it
writes them (npz + .done marker), so a rerun with any world size skips finished blocks.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Protocol

import numpy as np

from megatron_gm.dist import get_logger
from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.oracle.trajectories import TrajectorySource
from megatron_gm.shards import ShardSet

log = get_logger(__name__)


class ProbeEngine(Protocol):
    def restore(self) -> None: ...
    def train_step(self, doc: int, seed: int) -> None: ...
    def reference_loss(self) -> float: ...


def step_seed(seed: int, traj_id: int, t: int) -> int:
    """The RNG seed (dropout) of step t of trajectory traj_id: independent of order and world size."""
    return (
        int(np.random.SeedSequence([int(seed), int(traj_id), int(t)]).generate_state(1)[0] % (2**31 - 2)) + 1
    )


def probe_trajectory(engine: ProbeEngine, docs, base_loss: float, seed: int, traj_id: int):
    """Restore, then one step per document; returns (labels [T], reference losses [T+1]) in float64."""
    engine.restore()
    losses = [float(base_loss)]
    for t, doc in enumerate(docs):
        engine.train_step(int(doc), step_seed(seed, traj_id, t))
        losses.append(float(engine.reference_loss()))
    losses = np.asarray(losses, dtype=np.float64)
    if not np.all(np.isfinite(losses)):
        t = int(np.argmin(np.isfinite(losses)))
        raise GMError(
            f"trajectory {traj_id}: the reference loss is not finite after step {t} (document {docs[t - 1]}); "
            "check the checkpoint and the learning rate"
        )
    return np.diff(losses), losses


def collect_shard(engine: ProbeEngine, ids, docs, base_loss: float, seed: int, bar=None):
    """Labels [n, T] and reference losses [n, T+1] (float64) of trajectories ``ids`` with documents ``docs``."""
    labels = np.empty(docs.shape, dtype=np.float64)
    losses = np.empty((len(ids), docs.shape[1] + 1), dtype=np.float64)
    for row, k in enumerate(ids):
        labels[row], losses[row] = probe_trajectory(engine, docs[row], base_loss, seed, int(k))
        if bar is not None:
            bar.update(1)
    return labels, losses


@dataclasses.dataclass
class Group:
    """Where this process sits: its data-parallel group, and whether it writes that group's shards."""

    rank: int = 0
    dp_rank: int = 0
    dp_size: int = 1
    writer: bool = True

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def shard_ids(shard: int, shard_size: int, num_trajectories: int) -> range:
    return range(shard * shard_size, min((shard + 1) * shard_size, num_trajectories))


@dataclasses.dataclass
class CollectResult:
    shards_done: int  # by this data-parallel group in this run
    trajectories: int
    seconds: float
    base_loss: float
    complete: bool

    @property
    def per_second(self) -> float:
        return self.trajectories / self.seconds if self.seconds > 0 else 0.0


def open_store(folder: str, manifest: Manifest, num_shards: int, group: Group) -> ShardSet:
    """Rank 0 creates the store (or checks it is this run's); the others check it after a barrier."""
    shards = ShardSet(folder, num_shards)
    if group.rank == 0:
        shards.open(manifest)
    group.barrier()
    if group.rank != 0:
        shards.open(manifest)
    return shards


def collect(
    engine: ProbeEngine,
    source: TrajectorySource,
    folder: str,
    manifest: Manifest,
    shard_size: int,
    group: Group,
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> CollectResult:
    """Probe every trajectory of unfinished shards dealt to this group; write them; return a summary.

    ``stop_after``: stop after this many shards of this group (tests, time-boxed jobs); rerun to go on.
    """
    if shard_size < 1:
        raise GMError(f"--gm-oracle-shard-size {shard_size}: must be at least 1")
    n = source.num_trajectories
    num_shards = math.ceil(n / shard_size)
    manifest.config.update(num_shards=num_shards, shard_size=shard_size)
    shards = open_store(folder, manifest, num_shards, group)
    pending = group.broadcast_object(
        [i for i in range(num_shards) if not shards.is_done(i)] if group.rank == 0 else None
    )
    mine = pending[group.dp_rank :: group.dp_size]
    if stop_after is not None:
        mine = mine[:stop_after]
    todo = sum(len(shard_ids(i, shard_size, n)) for i in mine)
    bar = _progress_bar(todo, group, progress, len(pending), num_shards)
    start = time.perf_counter()
    base = 0.0
    if mine:
        engine.restore()
        base = float(engine.reference_loss())
    done = 0
    for i in mine:
        ids = np.asarray(shard_ids(i, shard_size, n), dtype=np.int64)
        docs = source.documents(ids)
        labels, losses = collect_shard(engine, ids, docs, base, source.seed, bar)
        done += len(ids)
        if group.writer:
            shards.write(
                i,
                traj_id=ids,
                documents=docs,
                labels=labels.astype(np.float32),
                ref_loss=losses.astype(np.float32),
            )
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    group.barrier()
    return CollectResult(len(mine), done, seconds, base, shards.all_done())


def _progress_bar(todo: int, group: Group, enabled: bool, pending: int, num_shards: int):
    if group.rank != 0 or not enabled:
        return None
    from tqdm import tqdm

    log.info(
        f"oracle: {pending} of {num_shards} shards to probe over {group.dp_size} data-parallel group(s); "
        f"the bar counts all groups (rank 0's progress x {group.dp_size})"
    )
    return tqdm(
        total=todo,
        desc="oracle",
        unit="traj",
        unit_scale=group.dp_size if group.dp_size > 1 else False,
        mininterval=2.0,
        file=sys.stderr,
    )
