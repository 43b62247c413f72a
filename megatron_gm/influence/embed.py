"""Chunking, deterministic scoring of texts, and decoding pool documents back to text.

Determinism of ``score_texts``: a document's chunks are each padded to a length bucket that depends
only on the chunk itself (its length rounded up to a multiple of ``BUCKET``), and every encoder call has
the fixed shape [batch_size, bucket] (short batches are filled with dummy rows). Rows never interact in
the encoder (eval mode, per-row attention mask), chunk vectors are averaged in chunk order in numpy, and
s = w·h + b is computed per row in float64. So a document's (h, s) depend only on its own text, the model
and ``batch_size``, not on which other documents share the call, on the same hardware and library
versions (checked bit-for-bit in tests on CPU). Across different hardware (CPU vs GPU, GPU models) the
values may differ in the last bits.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from megatron_gm.errors import GMError

if TYPE_CHECKING:
    from megatron_gm.influence.model import InfluenceModel

BUCKET = 64  # chunk lengths are padded up to a multiple of this in scoring


def chunk_token_ids(tokenizer, texts: Sequence[str], chunk_len: int, max_chunks: int = 0):
    """Split each text into chunks of at most ``chunk_len`` tokens, each as [CLS] body [SEP].

    Returns (chunks, owner): the token ids of each chunk and the index of its text. An empty text is one
    chunk with an empty body, so every text has at least one chunk.
    """
    body_len = chunk_len - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        cls_id = tokenizer.bos_token_id if cls_id is None else cls_id
        sep_id = tokenizer.eos_token_id if sep_id is None else sep_id
    if cls_id is None or sep_id is None:
        raise GMError(
            "the encoder's tokenizer has no [CLS]/[SEP] (or BOS/EOS) token; use a BERT-like encoder"
        )
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    chunks: list[list[int]] = []
    owner: list[int] = []
    for i, ids in enumerate(encoded):
        starts = list(range(0, max(len(ids), 1), body_len))
        if max_chunks:
            starts = starts[:max_chunks]
        for st in starts:
            chunks.append([cls_id, *ids[st : st + body_len], sep_id])
            owner.append(i)
    return chunks, owner


def pad_chunks(chunks: list[list[int]], pad_id: int, rows: int, device, length: int | None = None):
    """Pad chunks to [rows, length] (length = longest chunk by default); extra rows are dummy chunks."""
    length = length or max(len(c) for c in chunks)
    ids = torch.full((rows, length), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, length), dtype=torch.long)
    for r, c in enumerate(chunks):
        ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[r, : len(c)] = 1
    mask[len(chunks) :, 0] = 1  # dummy rows attend to one token, so nothing is NaN
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def embed_texts(
    model: InfluenceModel, texts: Sequence[str], batch_size: int = 32, progress=None
) -> np.ndarray:
    """h as float32 [n, d], deterministic per document (see the module docstring)."""
    if batch_size < 1:
        raise GMError(f"batch_size must be >= 1, got {batch_size}")
    n = len(texts)
    d = model.hidden_size
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    was_training = model.training
    model.eval()
    chunks, owner = model.chunk_ids(list(texts))
    pad_id = model.tokenizer.pad_token_id or 0
    buckets: dict[int, list[int]] = {}
    for k, c in enumerate(chunks):
        b = min(-(-len(c) // BUCKET) * BUCKET, model.chunk_len)
        buckets.setdefault(b, []).append(k)
    vecs = np.zeros((len(chunks), d), dtype=np.float32)
    for length in sorted(buckets):
        members = buckets[length]
        for st in range(0, len(members), batch_size):
            part = members[st : st + batch_size]
            ids, mask = pad_chunks([chunks[k] for k in part], pad_id, batch_size, model.device, length)
            out = model.cls_vectors(ids, mask)[: len(part)]
            vecs[part] = out.float().cpu().numpy()
            if progress is not None:  # counted in documents (fractions while a document's chunks run)
                progress.update(len(part) * n / len(chunks))
    owner_a = np.asarray(owner)
    starts = np.flatnonzero(np.r_[True, owner_a[1:] != owner_a[:-1]])
    sums = np.add.reduceat(vecs.astype(np.float64), starts, axis=0)
    counts = np.diff(np.r_[starts, len(owner_a)])
    if was_training:
        model.train()
    return (sums / counts[:, None]).astype(np.float32)


def individual_scores(model: InfluenceModel, h: np.ndarray) -> np.ndarray:
    """s = w·h + b per row, float64 arithmetic, float32 result."""
    w = model.heads.head.weight.detach().double().cpu().numpy().reshape(-1)
    b = float(model.heads.head.bias.detach().double().cpu())
    return ((h.astype(np.float64) * w).sum(axis=1) + b).astype(np.float32)


def score_texts(
    model: InfluenceModel, texts: Sequence[str], batch_size: int = 32, progress=None
) -> tuple[np.ndarray, np.ndarray]:
    """(h float32 [n, d], s float32 [n]) for texts; a document's result does not depend on its batch-mates."""
    h = embed_texts(model, texts, batch_size, progress)
    return h, individual_scores(model, h)


# -- pool documents -> text -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _dataset_and_tokenizer(prefix: str):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_gm.data.indexed import load_dataset_info
    from megatron_gm.data.tokenizer import build_tokenizer
    from megatron_gm.manifest import sha256_file

    info = load_dataset_info(prefix)
    spec = info.tokenizer or {}
    ttype, tmodel = spec.get("type"), spec.get("model")
    if not ttype:
        raise GMError(f"{prefix}.gm.json: no tokenizer type recorded; rerun tools/preprocess_data.py")
    if ttype != "NullTokenizer":
        if not tmodel or not os.path.exists(tmodel):
            raise GMError(
                f"{prefix}.gm.json: tokenizer model {tmodel!r} not found; the dataset's tokenizer must be "
                "at the recorded path to decode documents"
            )
        want = spec.get("model_sha256")
        if want and sha256_file(tmodel)[: len(want)] != want:
            raise GMError(
                f"{tmodel}: differs from the tokenizer this dataset was made with ({prefix}.gm.json); "
                "restore the original tokenizer model"
            )
    tokenizer = build_tokenizer(ttype, tmodel, spec.get("vocab_size"))
    return IndexedDataset(prefix), tokenizer, info


def document_texts(data_prefix: str | os.PathLike, indices: Sequence[int]) -> list[str]:
    """Decode pool documents (indices into the Megatron indexed dataset) with the run's tokenizer."""
    ds, tokenizer, _info = _dataset_and_tokenizer(str(data_prefix))
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(ds)):
        raise GMError(
            f"{data_prefix}: document index {int(idx.max() if idx.max() >= len(ds) else idx.min())} out of "
            f"range for a dataset of {len(ds)} documents; the trajectories belong to another dataset"
        )
    return [tokenizer.detokenize(ds[int(i)].tolist()) for i in idx]


def dataset_fingerprint(data_prefix: str | os.PathLike) -> str:
    from megatron_gm.data.indexed import load_dataset_info

    return load_dataset_info(data_prefix).fingerprint


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
    import math

    import torch.distributed as dist
    from tqdm import tqdm

    from megatron_gm.manifest import Manifest
    from megatron_gm.shards import ShardSet

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
    shards = ShardSet(Path(folder) / f"embeddings-{manifest.digest()}", n_shards)
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
