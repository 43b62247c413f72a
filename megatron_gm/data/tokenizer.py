"""Build the same tokenizer Megatron's training builds, from the same flags.

Megatron's ``build_tokenizer`` reads an args namespace; we fill one from ``TokenizerConfig``'s defaults
so preprocessing, oracle collection and training all tokenize identically.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from megatron_gm.errors import GMError

TOKENIZER_TYPES = (
    "SentencePieceTokenizer",
    "GPTSentencePieceTokenizer",
    "Llama2Tokenizer",
    "HuggingFaceTokenizer",
    "NullTokenizer",
)


def tokenizer_args(tokenizer_type: str, tokenizer_model: str | None = None, vocab_size: int | None = None):
    from megatron.training.config.training_config import TokenizerConfig

    cfg = dataclasses.asdict(TokenizerConfig())
    cfg.update(
        tokenizer_type=tokenizer_type,
        tokenizer_model=tokenizer_model,
        vocab_size=vocab_size,
        pad_vocab_size=False,
        rank=0,
        make_vocab_size_divisible_by=128,
        tensor_model_parallel_size=1,
    )
    return argparse.Namespace(**cfg)


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | None = None, vocab_size: int | None = None):
    """Megatron's tokenizer for ``--tokenizer-type``/``--tokenizer-model`` (and ``--vocab-size`` for Null)."""
    if tokenizer_type not in TOKENIZER_TYPES:
        raise GMError(
            f"--tokenizer-type {tokenizer_type!r} is not supported; use one of {', '.join(TOKENIZER_TYPES)}"
        )
    if tokenizer_type == "NullTokenizer":
        if not vocab_size:
            raise GMError("--tokenizer-type NullTokenizer needs --vocab-size")
    elif not tokenizer_model or not os.path.exists(tokenizer_model):
        raise GMError(
            f"{tokenizer_model}: tokenizer model not found; train one with tools/train_tokenizer.py "
            "or pass --tokenizer-model"
        )
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer as megatron_build

    return megatron_build(tokenizer_args(tokenizer_type, tokenizer_model, vocab_size))


def tokenizer_spec(tokenizer_type: str, tokenizer_model: str | None, vocab_size: int | None) -> dict:
    """What identifies a tokenizer in manifests: type, model file hash, vocab size."""
    from megatron_gm.fs import sha256_file

    model_hash = (
        sha256_file(tokenizer_model)[:16] if tokenizer_model and os.path.exists(tokenizer_model) else None
    )
    model_path = os.path.abspath(tokenizer_model) if tokenizer_model else None
    return {"type": tokenizer_type, "model": model_path, "model_sha256": model_hash, "vocab_size": vocab_size}
