"""Deterministic scoring of texts with the influence model, and the embedding cache of training documents.

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

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from megatron_gm.errors import GMError
from megatron_gm.influence.chunks import pad_chunks

if TYPE_CHECKING:
    from megatron_gm.influence.model import InfluenceModel

BUCKET = 64  # chunk lengths are padded up to a multiple of this in scoring


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
