"""Step 1 of selection: embed and score the pool with the influence model, shard by shard.

Each pending shard is decoded from the indexed dataset (``document_texts``), embedded (``embed_texts``, or
read from the frozen encoder's embedding cache), scored with the model's heads (``individual_scores``)
and written with its completion marker; a rerun after a kill scores only the shards without a marker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.fs import sha256_files
from megatron_gm.selection.scores import shard_range
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
    from megatron_gm.selection.embed_cache import cached_h

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
