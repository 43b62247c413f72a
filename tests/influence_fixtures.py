"""Tiny fixtures for the influence-model tests: a random BERT encoder, a token pool, oracle stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_gm.data.indexed import write_indexed_dataset
from megatron_gm.manifest import Manifest
from megatron_gm.oracle.store import write_oracle_store

NULL_VOCAB = 64  # pool token ids; NullTokenizer decodes them as "3 17 5 ..." and the tiny encoder knows each


def tiny_encoder(
    folder: Path, *, hidden: int = 32, layers: int = 2, max_len: int = 64, seed: int = 0
) -> Path:
    """A random-initialised BERT (dropout 0) whose WordPiece vocab holds the numbers 0..NULL_VOCAB-1."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [str(i) for i in range(NULL_VOCAB)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=max_len).save_pretrained(
        str(folder)
    )
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_len,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=1.0,
    )
    torch.manual_seed(seed)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(str(folder), safe_serialization=True)
    return folder


def token_pool(prefix: Path, n_docs: int, *, seed: int = 0, min_len: int = 5, max_len: int = 90):
    """A NullTokenizer pool of ``n_docs`` documents; topics make some documents alike."""
    rng = np.random.default_rng(seed)
    topics = [rng.choice(NULL_VOCAB, size=8, replace=False) for _ in range(6)]
    docs = []
    for _ in range(n_docs):
        topic = topics[rng.integers(len(topics))]
        n = int(rng.integers(min_len, max_len))
        mix = rng.random(n) < 0.8
        docs.append(np.where(mix, rng.choice(topic, size=n), rng.integers(0, NULL_VOCAB, size=n)))
    spec = {
        "type": "NullTokenizer",
        "model": None,
        "model_sha256": None,
        "vocab_size": NULL_VOCAB,
    }
    prefix.parent.mkdir(parents=True, exist_ok=True)
    return write_indexed_dataset(prefix, docs, tokenizer=spec, source="synthetic")


def oracle_store(
    folder: Path,
    fingerprint: str,
    documents: np.ndarray,
    labels: np.ndarray,
    *,
    stage: int = 0,
    iteration: int = 10,
    shards: int = 2,
    traj_offset: int = 0,
    reference: str = "ref0",
) -> Path:
    n = len(documents)
    manifest = Manifest(
        "oracle",
        fingerprint,
        stage=stage,
        iteration=iteration,
        seed=0,
        config={"T": int(documents.shape[1])},
        inputs={"reference": reference},
    )
    parts = []
    for idx in np.array_split(np.arange(n), shards):
        parts.append(
            {
                "traj_id": (idx + traj_offset).astype(np.int64),
                "documents": documents[idx].astype(np.int64),
                "labels": labels[idx].astype(np.float32),
                "ref_loss": np.zeros((len(idx), documents.shape[1] + 1), np.float32),
            }
        )
    write_oracle_store(folder, manifest, parts)
    return folder
