"""Pool embeddings of a frozen encoder, kept across selection rounds (``--embed-cache DIR``).

With a frozen encoder (influence ``--mode fast``) a document's h depends only on the encoder, the
chunking, the batch shape, the threads and the device, not on the heads that change every round. So
h is computed once per pool and every later scoring (the next stage, another method, another seed of a
benchmark) reads it and only applies the new heads. The cache is a ``ShardSet`` with the scores'
shard boundaries, in a folder named by the digest of everything h depends on: a changed input never
reuses stale vectors. A fine-tuned encoder gets no cache (its h changes every round).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.shards import ShardSet

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


def embed_cache_shards(folder: str, manifest: Manifest, num_shards: int) -> ShardSet:
    return ShardSet(Path(folder) / f"pool-embeddings-{manifest.digest()}", num_shards)


def cached_h(cache: ShardSet | None, i: int, docs: np.ndarray) -> np.ndarray | None:
    """h of shard i from the cache, or None when the cache has no finished shard i."""
    if cache is None or not cache.is_done(i):
        return None
    z = cache.read(i)
    if not np.array_equal(z["documents"], docs):
        raise GMError(f"{cache.path(i)}: cached embeddings are for other documents; delete {cache.folder}")
    return z["h"]
