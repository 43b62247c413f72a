"""Documents as encoder chunks: [CLS] body [SEP] token ids, and chunk batches padded for the encoder.

Used by the model (training embeddings) and by ``embed.py`` (deterministic scoring).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_gm.errors import GMError


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
