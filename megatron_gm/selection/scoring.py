"""Step 1 of selection: embed and score the pool with the influence model, shard by shard.

Each pending shard is decoded from the indexed dataset (``document_texts``), embedded (``embed_texts``, or
read from the frozen encoder's embedding cache), scored with the model's heads (``individual_scores``)
and written with its completion marker; a rerun after a kill scores only the shards without a marker.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.fs import sha256_files
from megatron_gm.manifest import Manifest
from megatron_gm.selection.comm import Comm
from megatron_gm.selection.config import Clock, Plan, SelectConfig
from megatron_gm.selection.score_store import shard_range
from megatron_gm.shards import ShardSet

# Files of a saved influence model that identify it (metrics.json is informational only).
_SKIP = {"metrics.json"}


def influence_model_hash(folder: str | os.PathLike) -> str:
    """sha256 (16 hex) over every file of a saved influence model folder except metrics.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GMError(f"{folder}: influence model not found; pass --gm-influence-model the model folder")
    files = sorted(q for q in folder.rglob("*") if q.is_file() and q.name not in _SKIP)
    return sha256_files((str(p.relative_to(folder)).encode() + b"\0", p) for p in files)[:16]


def score_shards(
    shards: ShardSet,
    todo: list[int],
    *,
    model,
    data_path: str,
    num_docs: int,
    shard_size: int,
    batch_size: int,
    on_shard: Callable[[int], None] | None = None,
    embed_cache: ShardSet | None = None,
) -> int:
    """Score the listed shards; return the number of documents embedded with the encoder.

    With ``embed_cache`` (frozen encoder), h is read from the cache where it has the shard, else
    computed and added to it; s always comes from this model's heads."""
    from megatron_gm.data.documents import document_texts
    from megatron_gm.influence.embed import embed_texts, individual_scores
    from megatron_gm.influence.embed_cache import cached_h

    done = 0
    for i in todo:
        lo, hi = shard_range(i, num_docs, shard_size)
        docs = np.arange(lo, hi, dtype=np.int64)
        h = cached_h(embed_cache, i, docs)
        fresh = h is None
        if fresh:
            h = embed_texts(model, document_texts(data_path, docs), batch_size)
            done += hi - lo
        h = np.ascontiguousarray(h, dtype=np.float32)
        s = np.ascontiguousarray(individual_scores(model, h), dtype=np.float32)
        if not (np.isfinite(h).all() and np.isfinite(s).all()):
            raise GMError(f"{shards.path(i)}: the influence model gave non-finite scores; check the model")
        if fresh and embed_cache is not None:
            embed_cache.write(i, documents=docs, h=h)
        shards.write(i, documents=docs, h=h, s=s)
        if on_shard is not None:
            on_shard(hi - lo)
    return done


def scoring_device(cfg: SelectConfig) -> str:
    """CPU (with ``cfg.threads`` torch threads), or with --device auto this rank's local GPU if any."""
    import torch

    torch.set_num_threads(cfg.threads)
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or "0"
    return f"cuda:{int(local) % torch.cuda.device_count()}"


def progress_bar(cfg: SelectConfig, comm: Comm, total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (cfg.progress and comm.is_root), mininterval=2)


@dataclasses.dataclass
class ScoringModel:
    """This rank's influence model: rank 0 loads it while checking the inputs (``prepare``), the other
    ranks meanwhile (``preload``); their load error is raised later, collectively."""

    model: Any = None
    manifest: Manifest | None = None
    error: GMError | None = None

    def preload(self, cfg: SelectConfig) -> None:
        from megatron_gm.influence import load_influence_model

        try:
            self.model, self.manifest = load_influence_model(cfg.influence_model, device=scoring_device(cfg))
        except GMError as e:
            self.error = e


def score_phase(cfg, comm: Comm, plan: Plan, shards: ShardSet, held: ScoringModel, clock: Clock) -> int:
    """Score this rank's share of the unfinished shards; returns the number of documents scored."""
    from megatron_gm.influence.embed_cache import embed_cache_shards

    cache = None
    if plan.embed is not None:
        cache = embed_cache_shards(cfg.embed_cache, plan.embed, shards.num_shards)

    def setup():
        if not comm.is_root:
            if held.error is not None:
                raise held.error
            held.manifest.check(path=cfg.influence_model, dataset_fingerprint=plan.fingerprint)
            shards.open(plan.scores)

    comm.agree(setup)
    pending = comm.root_then_bcast(lambda: [i for i in range(shards.num_shards) if not shards.is_done(i)])
    clock.lap("load")  # ranks > 0: model loading; timed apart so docs/s is scoring alone
    todo = pending[comm.rank :: comm.size]
    todo_docs = sum(hi - lo for lo, hi in (shard_range(i, plan.num_docs, cfg.shard_size) for i in todo))
    bar = progress_bar(cfg, comm, todo_docs, f"scoring (rank 0 of {comm.size})", "doc")
    try:
        scored = comm.agree(
            lambda: score_shards(
                shards,
                todo,
                model=held.model,
                data_path=cfg.data_path,
                num_docs=plan.num_docs,
                shard_size=cfg.shard_size,
                batch_size=cfg.batch_size,
                on_shard=bar.update,
                embed_cache=cache,
            )
        )
    finally:
        bar.close()
    clock.lap("score")
    return scored
