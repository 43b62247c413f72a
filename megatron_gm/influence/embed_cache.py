"""Embedding caches: h of documents as resumable shards, in a folder named by the digest of its manifest.

Two caches share this form (``cache_shards``): the training documents of the influence model
(``cached_embeddings``, folder ``embeddings-<digest>``, shard keys h/docs) and the pool embeddings of a
frozen encoder kept across selection rounds (``--embed-cache DIR``, folder ``pool-embeddings-<digest>``,
shard keys h/documents), described below.

With a frozen encoder (influence ``--mode fast``) a document's h depends only on the encoder, the
chunking, the batch shape, the threads and the device, not on the heads that change every round. So
h is computed once per pool and every later scoring (the next stage, another method, another seed of a
benchmark) reads it and only applies the new heads. The cache is a ``ShardSet`` with the scores'
shard boundaries, in a folder named by the digest of everything h depends on: a changed input never
reuses stale vectors. A fine-tuned encoder gets no cache (its h changes every round).

Selection fills the pool cache (``tools/select_data.py --embed-cache``); the bootstrap of a later round
reads its probing pool's h from it (``tools/bootstrap_trajectories.py --embed-cache``). Both name the
folder with ``pool_embed_cache``, each from its own batch size, threads and device, so the bootstrap only
finds vectors computed the way it would compute them.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from megatron_gm.data.documents import document_texts
from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.shards import ShardSet, num_shards, shard_range

if TYPE_CHECKING:
    from megatron_gm.influence.model import InfluenceModel

KIND = "pool_embeddings"


def embed_cache_manifest(
    *,
    model_config: dict,
    fingerprint: str,
    num_docs: int,
    shard_size: int,
    batch_size: int,
    threads: int,
    device: str,
) -> Manifest | None:
    """The cache's manifest for a saved influence model's config.json, or None when it is fine-tuned.

    ``device``: "cpu", or the GPU model (values may differ in the last bits between GPU models)."""
    if model_config.get("fine_tuned", True):
        return None
    m = model_config["model"]
    config = {
        "encoder_sha256": model_config["encoder_sha256"],
        "chunk_len": int(model_config["chunk_len"]),
        "max_chunks": int(m.get("max_chunks", 0)),
        "dim": int(model_config["hidden_size"]),
        "num_docs": int(num_docs),
        "shard_size": int(shard_size),
        "batch_size": int(batch_size),
        "threads": int(threads),
        "device": device,
    }
    return Manifest(KIND, fingerprint, config=config)


def device_kind(device) -> str:
    """ "cpu", or the GPU's model name: what embeddings computed on ``device`` are comparable across."""
    import torch

    device = torch.device(device)
    return "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}"


def pool_embed_cache(folder: str | os.PathLike, **settings) -> tuple[Manifest, ShardSet] | None:
    """The pool-embedding cache in ``folder`` for ``settings`` (``embed_cache_manifest``'s arguments): its
    manifest and its shards (one per ``shard_size`` contiguous documents of the pool), or None for a
    fine-tuned model. Not opened: the selection opens (creates) it, a reader only looks for finished shards."""
    manifest = embed_cache_manifest(**settings)
    if manifest is None:
        return None
    shards = num_shards(settings["num_docs"], settings["shard_size"])
    return manifest, embed_cache_shards(str(folder), manifest, shards)


def cache_shards(folder: str | os.PathLike, name: str, manifest: Manifest, num_shards: int) -> ShardSet:
    """The cache's shards in ``folder/{name}-{manifest digest}``: a changed input is a new folder."""
    return ShardSet(Path(folder) / f"{name}-{manifest.digest()}", num_shards)


def embed_cache_shards(folder: str, manifest: Manifest, num_shards: int) -> ShardSet:
    return cache_shards(folder, "pool-embeddings", manifest, num_shards)


def cached_h(cache: ShardSet | None, i: int, docs: np.ndarray) -> np.ndarray | None:
    """h of shard i from the cache, or None when the cache has no finished shard i."""
    if cache is None or not cache.is_done(i):
        return None
    z = cache.read(i)
    if not np.array_equal(z["documents"], docs):
        raise GMError(f"{cache.path(i)}: cached embeddings are for other documents; delete {cache.folder}")
    return z["h"]


def pool_h(
    cache: ShardSet, num_docs: int, shard_size: int, docs: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """h [len(docs), dim] float32 of pool documents ``docs`` from the cache's finished shards, and a mask of
    the rows found (the rows of unfinished shards are left 0). Each shard read is checked to hold its
    documents (``cached_h``)."""
    docs = np.asarray(docs, dtype=np.int64)
    h = np.zeros((len(docs), dim), dtype=np.float32)
    found = np.zeros(len(docs), dtype=bool)
    shard_of = docs // shard_size
    for i in np.unique(shard_of).tolist():
        lo, hi = shard_range(i, num_docs, shard_size)
        rows = cached_h(cache, i, np.arange(lo, hi, dtype=np.int64))
        if rows is None:
            continue
        mine = shard_of == i
        h[mine] = rows[docs[mine] - lo]
        found[mine] = True
    return h, found


def cached_embeddings(
    encoder_id: str,
    model: InfluenceModel,
    data_path: str,
    docs: np.ndarray,
    folder: Path,
    batch_size: int,
    fingerprint: str,
    progress: bool,
    per_shard: int = 1024,
) -> np.ndarray:
    """h of ``docs`` (document indices) with ``model``'s encoder, cached in resumable shards split by rank.

    The cache folder name is the digest of what the vectors depend on (encoder hash ``encoder_id``, chunking,
    batch size, the document list, the dataset), so a changed input never reuses stale vectors. A killed run
    keeps its finished shards. With torch.distributed initialised, rank r embeds shards r, r+world, ...
    and every rank returns the full array.
    """
    import torch.distributed as dist
    from tqdm import tqdm

    from megatron_gm.influence.embed import embed_texts

    docs = np.asarray(docs, dtype=np.int64)
    n_shards = max(1, math.ceil(len(docs) / per_shard))
    config = {
        "encoder_sha256": encoder_id,
        "chunk_len": model.chunk_len,
        "max_chunks": model.config.max_chunks,
        "batch_size": batch_size,
        "docs": hashlib.sha256(docs.tobytes()).hexdigest()[:16],
        "num_docs": len(docs),
        "num_shards": n_shards,
    }
    manifest = Manifest("embedding_cache", fingerprint, config=config)
    shards = cache_shards(folder, "embeddings", manifest, n_shards)
    on = dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
    if rank == 0:
        shards.open(manifest)
    if on:
        dist.barrier()
    pending = shards.pending(rank, world)
    todo = sum(len(docs[i * per_shard : (i + 1) * per_shard]) for i in pending)
    bar = tqdm(
        total=todo,
        desc="embed documents",
        unit="doc",
        disable=not progress or not pending,
        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )
    for i in pending:
        part = docs[i * per_shard : (i + 1) * per_shard]
        h = embed_texts(model, document_texts(data_path, part), batch_size, progress=bar)
        shards.write(i, h=h, docs=part)
    bar.close()
    if on:
        dist.barrier()
    parts = shards.read_all()
    out = np.concatenate([p["h"] for p in parts])
    if not np.array_equal(np.concatenate([p["docs"] for p in parts]), docs):
        raise GMError(f"{shards.folder}: cached embeddings do not match the documents; delete the folder")
    return out
