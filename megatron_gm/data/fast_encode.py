"""Batch tokenization for preprocessing, giving exactly the tokens of Megatron's ``tokenizer.tokenize``.

Three paths, chosen once per run from the tokenizer Megatron builds:

- ``words``: SentencePiece BPE models with identity normalisation, whitespace kept and no piece that
  holds ``▁`` past its first character (what ``tools/train_tokenizer.py`` writes). BPE merges never
  cross a ``▁``, so the tokens of a text are the tokens of its space-separated words, each encoded
  as ``▁word``. Words are encoded once and remembered; a chunk of documents costs a few dict look-ups
  per word plus SentencePiece on the words not seen before.
- ``batch``: other SentencePiece models behind Megatron's plain wrapper: one ``encode`` call a chunk.
- ``generic``: anything else (HuggingFace, Null, legacy SentencePiece wrappers): Megatron's
  ``tokenize`` a document at a time.

Every path returns one token array per chunk plus per-document lengths; tests check each against
Megatron's ``tokenize`` on real text and on whitespace edge cases.
"""

from __future__ import annotations

from itertools import chain, repeat

import numpy as np

from megatron_gm.dist import get_logger

log = get_logger(__name__)

MAX_WORDS = 2_000_000  # remembered words per worker before the memory is cleared

# --- just enough of the protobuf wire format to read a SentencePiece ModelProto ------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of each field; value is an int or the bytes of a message."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, wire, value


def sentencepiece_model_facts(model_bytes: bytes) -> dict:
    """Model type, normaliser settings and pieces of a serialized SentencePiece model."""
    facts = {
        "model_type": 1,  # UNIGRAM is the proto default
        "normalizer": "nmt_nfkc",
        "charsmap": False,
        "add_dummy_prefix": True,
        "remove_extra_whitespaces": True,
        "escape_whitespaces": True,
        "whitespace_suffix": False,
        "pieces": [],
    }
    for num, _, value in _fields(model_bytes):
        if num == 1:  # SentencePiece {piece = 1; score = 2; type = 3}
            piece, ptype = "", 1
            for n, _, v in _fields(value):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 3:
                    ptype = v
            facts["pieces"].append((piece, ptype))
        elif num == 2:  # TrainerSpec
            for n, _, v in _fields(value):
                if n == 3:
                    facts["model_type"] = v
                elif n == 24:
                    facts["whitespace_suffix"] = bool(v)
        elif num == 3:  # NormalizerSpec
            for n, _, v in _fields(value):
                if n == 1:
                    facts["normalizer"] = v.decode("utf-8")
                elif n == 2:
                    facts["charsmap"] = len(v) > 0
                elif n == 3:
                    facts["add_dummy_prefix"] = bool(v)
                elif n == 4:
                    facts["remove_extra_whitespaces"] = bool(v)
                elif n == 5:
                    facts["escape_whitespaces"] = bool(v)
    return facts


def words_path_reason(facts: dict) -> str | None:
    """None when word-by-word encoding is exact for this model, else why not."""
    if facts["model_type"] != 2:
        return "not a BPE model"
    if facts["normalizer"] != "identity" or facts["charsmap"]:
        return f"normaliser {facts['normalizer']!r} rewrites text"
    if facts["remove_extra_whitespaces"] or not facts["add_dummy_prefix"] or not facts["escape_whitespaces"]:
        return "whitespace is not kept as '▁' with a dummy prefix"
    if facts["whitespace_suffix"]:
        return "whitespace is a suffix"
    for piece, ptype in facts["pieces"]:
        if ptype == 4:
            return f"user-defined piece {piece!r}"
        if ptype == 1 and "▁" in piece[1:]:
            return f"piece {piece!r} spans a word boundary"
    return None


# --- encoders ---------------------------------------------------------------------------------------


class GenericEncoder:
    """Megatron's ``tokenize``, one document at a time."""

    path = "generic"

    def __init__(self, tokenizer):
        self.tokenize = tokenizer.tokenize

    def encode_lists(self, texts: list[str]) -> list[list[int]]:
        return [list(self.tokenize(t)) for t in texts]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        docs = self.encode_lists(texts)
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        tokens = np.fromiter(chain.from_iterable(docs), dtype=np.int64, count=int(lengths.sum()))
        return tokens, lengths


class BatchEncoder(GenericEncoder):
    """SentencePiece's batch ``encode`` (what Megatron's plain wrapper calls per text)."""

    path = "batch"

    def __init__(self, sp):
        self.sp = sp

    def encode_lists(self, texts):
        return self.sp.encode(texts, num_threads=1)


class WordEncoder:
    """Word-by-word SentencePiece BPE with remembered words (exact; see the module docstring)."""

    path = "words"

    def __init__(self, sp):
        self.sp = sp
        two = sp.encode(" ", num_threads=1)  # '▁▁': twice the tokens of a lone '▁' (an empty word)
        self._empty = two[: len(two) // 2]
        self._reset()

    def _reset(self):
        self.index = {"": 0}
        self._n_flat = len(self._empty)
        self._starts = np.zeros(1 << 16, dtype=np.int64)  # grown by doubling: learning stays linear
        self._flat = np.zeros(1 << 18, dtype=np.int64)
        self._starts[1] = self._n_flat
        self._flat[: self._n_flat] = self._empty

    @staticmethod
    def _fit(arr: np.ndarray, size: int) -> np.ndarray:
        if size <= len(arr):
            return arr
        grown = np.zeros(max(size, 2 * len(arr)), dtype=arr.dtype)
        grown[: len(arr)] = arr
        return grown

    def _learn(self, words: list[str]) -> None:
        encoded = self.sp.encode(words, num_threads=1)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        total = int(lengths.sum())
        base, n0 = len(self.index), self._n_flat
        self._flat = self._fit(self._flat, n0 + total)
        self._flat[n0 : n0 + total] = np.fromiter(chain.from_iterable(encoded), dtype=np.int64, count=total)
        self._starts = self._fit(self._starts, base + len(words) + 1)
        self._starts[base + 1 : base + 1 + len(words)] = n0 + np.cumsum(lengths)
        self._n_flat = n0 + total
        self.index.update(zip(words, range(base, base + len(words))))

    def _slots(self, words: list[str]) -> np.ndarray:
        """Index of each word in the memory, learning the words not seen before."""
        slots = np.fromiter(map(self.index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        miss = np.flatnonzero(slots < 0).tolist()
        if miss:
            new = list(dict.fromkeys([words[i] for i in miss]))
            if len(self.index) > 1 and len(self.index) + len(new) > MAX_WORDS:  # forget, redo this chunk
                self._reset()
                return self._slots(words)
            self._learn(new)
            get = self.index.__getitem__
            slots[miss] = [get(words[i]) for i in miss]
        return slots

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # one split of the texts joined by single spaces gives each text's words in turn (an empty text
        # has none); a text's word count is its spaces + 1
        counts = [t.count(" ") + 1 if t else 0 for t in texts]
        words = " ".join(filter(None, texts)).split(" ") if any(counts) else []
        slots = self._slots(words)
        first = self._starts[slots]
        n = self._starts[slots + 1] - first
        ends = np.cumsum(n)
        tokens = self._flat[np.repeat(first - ends + n, n) + np.arange(ends[-1] if len(ends) else 0)]
        word_ends = np.cumsum(np.asarray(counts, dtype=np.int64))
        doc_ends = np.concatenate([[0], ends])[word_ends]
        lengths = np.diff(doc_ends, prepend=0)
        return tokens, lengths


def make_encoder(tokenizer, tokenizer_model: str | None):
    """The fastest exact encoder for a tokenizer built by ``megatron_gm.data.tokenizer.build_tokenizer``."""
    lib = getattr(tokenizer, "_tokenizer", None)
    sp = getattr(lib, "tokenizer", None)
    plain_sp = (
        type(lib).__name__ == "SentencePieceTokenizer"
        and type(sp).__name__ == "SentencePieceProcessor"
        and not getattr(lib, "legacy", True)
        and not getattr(lib, "special_token_to_id", {1: 1})
        and not (lib.removed_extra_spaces and not lib.ignore_extra_whitespaces)
    )
    if not plain_sp or not tokenizer_model:
        return GenericEncoder(tokenizer)
    with open(tokenizer_model, "rb") as f:
        try:
            reason = words_path_reason(sentencepiece_model_facts(f.read()))
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            reason = f"model not parsed ({e})"
    if reason is None:
        return WordEncoder(sp)
    log.info("tokenizing whole documents: %s", reason)
    return BatchEncoder(sp)
