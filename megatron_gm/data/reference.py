"""The reference set D_r: a jsonl tokenized with the run's tokenizer, as a fixed set of samples.

Records with string ``context`` and ``target`` (e.g. lambada_ref) become one sample each (context then
target, cut from the left to seq_length + 1 tokens) in which only target tokens count (prompt-masked).

Records with a ``text`` field depend on the layout:

- ``natural`` (the oracle tool's default, the paper's setting): each record is an example at its own
  length (its tokens and EOD; a record longer than seq_length + 1 tokens is cut into its own windows of
  seq_length + 1 tokens every seq_length, never joined to another); all its labels count. Examples are evaluated padded only
  to the longest of their length bucket (``length_buckets``), never across examples, so the reference
  pass costs the examples' tokens, not seq_length per example.
- ``packed`` (the old layout): the records, each followed by EOD as in preprocessing, form one stream
  cut into samples of seq_length + 1 tokens every seq_length tokens (Megatron's GPTDataset packing),
  attention crossing records as in pretraining; every sample is evaluated at seq_length.

A seeded subset of ``num_samples`` samples is the reference set. Its ``digest`` (of the token and mask
bytes, and the layout when natural) names it in the oracle manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import Counter
from collections.abc import Callable

import numpy as np

from megatron_gm.data.jsonl import iter_lines, parse_record
from megatron_gm.errors import GMError

LAYOUTS = ("natural", "packed")


@dataclasses.dataclass
class ReferenceSet:
    tokens: np.ndarray  # int64 [n, seq_length + 1], padded with 0 after each sample's own tokens
    mask: np.ndarray  # float32 [n, seq_length]: label positions that count
    source: str
    records: dict  # record kind -> count
    layout: str = "packed"  # "natural": evaluate each sample at its own length (see length_buckets)
    lengths: np.ndarray | None = None  # int64 [n]: tokens of each sample (None: all seq_length + 1)

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def sample_lengths(self) -> np.ndarray:
        """Tokens of each sample (labels + 1); seq_length + 1 for every sample of the packed layout."""
        if self.lengths is None or self.layout == "packed":
            return np.full(len(self.tokens), self.tokens.shape[1], dtype=np.int64)
        return np.asarray(self.lengths, dtype=np.int64)

    @property
    def evaluated_tokens(self) -> int:
        """Input positions one reference pass evaluates, before bucket padding."""
        return int((self.sample_lengths - 1).sum())

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(np.asarray(self.tokens.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.tokens, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.mask, dtype=np.float32).tobytes())
        if self.layout != "packed":  # the packed layout keeps the digests it always had
            h.update(self.layout.encode())
            h.update(np.ascontiguousarray(self.sample_lengths, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def pad_sample(tokens: np.ndarray, mask: np.ndarray | None, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """First ``seq_length + 1`` tokens, padded with 0; ``mask`` over labels (default: every real label)."""
    tokens = np.asarray(tokens, dtype=np.int64)[: seq_length + 1]
    n = len(tokens)
    out = np.zeros(seq_length + 1, dtype=np.int64)
    out[:n] = tokens
    m = np.zeros(seq_length, dtype=np.float32)
    if n > 1:
        m[: n - 1] = 1.0 if mask is None else np.asarray(mask, dtype=np.float32)[: n - 1]
    return out, m


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_sample(tokenize: Callable[[str], list[int]], rec: dict, seq_length: int):
    """Context + target tokens; the mask counts the labels that are target tokens."""
    context, target = rec["context"], rec["target"]
    text = rec.get("text")
    if not (isinstance(text, str) and text.startswith(context) and text.endswith(target)):
        sep = "" if not context or context[-1].isspace() or target[:1].isspace() else " "
        text = context + sep + target
    full = list(tokenize(text))
    n_ctx = _common_prefix(list(tokenize(context)), full)
    if n_ctx >= len(full):
        return None
    count = np.zeros(len(full) - 1, dtype=np.float32)
    count[max(n_ctx - 1, 0) :] = 1.0  # label j is token j + 1
    cut = max(0, len(full) - (seq_length + 1))
    return pad_sample(np.asarray(full[cut:]), count[cut:], seq_length)


def _length(tokens: np.ndarray, mask: np.ndarray) -> int:
    """Tokens of a padded sample up to its last counted label (labels after it do not matter)."""
    counted = np.flatnonzero(mask)
    return int(counted[-1]) + 2 if len(counted) else 1


def build_reference(
    path: str,
    tokenize: Callable[[str], list[int]],
    eod: int,
    seq_length: int,
    num_samples: int,
    seed: int,
    layout: str = "packed",
) -> ReferenceSet:
    """Read, tokenize and cut the reference jsonl; keep a seeded subset of ``num_samples`` samples."""
    if num_samples < 1:
        raise GMError(f"--gm-oracle-ref-samples {num_samples}: must be at least 1")
    if layout not in LAYOUTS:
        raise GMError(f"--gm-oracle-ref-layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    kinds: Counter = Counter()
    prompt: list[tuple[np.ndarray, np.ndarray]] = []
    stream: list[int] = []
    for line in iter_lines(path):
        status, rec = parse_record(line, [])
        if status != "ok":
            kinds[status] += 1
            continue
        if (
            isinstance(rec.get("context"), str)
            and isinstance(rec.get("target"), str)
            and rec["target"].strip()
        ):
            s = prompt_sample(tokenize, rec, seq_length)
            kinds["prompt" if s is not None else "empty"] += 1
            if s is not None:
                prompt.append(s)
        elif isinstance(rec.get("text"), str) and rec["text"].strip():
            if layout == "natural":  # the record's own windows: a long record is cut, never joined
                own = [*tokenize(rec["text"]), eod]
                for start in range(0, max(len(own) - 1, 1), seq_length):
                    prompt.append(
                        pad_sample(np.asarray(own[start : start + seq_length + 1]), None, seq_length)
                    )
            else:
                stream.extend(tokenize(rec["text"]))
                stream.append(eod)
            kinds["text"] += 1
        else:
            kinds["no_text"] += 1
    packed = []
    for start in range(0, max(len(stream) - 1, 0), seq_length):
        packed.append(pad_sample(np.asarray(stream[start : start + seq_length + 1]), None, seq_length))
    samples = [s for s in prompt + packed if s[1].sum() > 0]
    if not samples:
        seen = ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "no lines"
        raise GMError(
            f"{path}: no usable reference tokens ({seen}); pass a jsonl whose records have a non-empty "
            "'text', or 'context' and 'target'"
        )
    tokens = np.stack([s[0] for s in samples])
    mask = np.stack([s[1] for s in samples])
    if len(samples) > num_samples:
        keep = np.sort(np.random.default_rng(seed).choice(len(samples), num_samples, replace=False))
        tokens, mask = tokens[keep], mask[keep]
    lengths = np.asarray([_length(t, m) for t, m in zip(tokens, mask)], dtype=np.int64)
    return ReferenceSet(
        tokens=tokens, mask=mask, source=str(path), records=dict(kinds), layout=layout, lengths=lengths
    )


def pad_multiple(sequence_parallel_tp: int = 1, context_parallel: int = 1, base: int = 8) -> int:
    """The multiple a bucket length is rounded up to: sequence parallelism splits the sequence over TP
    ranks, context parallelism into 2 x CP chunks."""
    m = base
    if sequence_parallel_tp > 1:
        m = math.lcm(m, sequence_parallel_tp)
    if context_parallel > 1:
        m = math.lcm(m, 2 * context_parallel)
    return m


def length_buckets(
    ref: ReferenceSet, micro_batch_size: int, multiple: int = 8
) -> list[tuple[int, list[tuple[np.ndarray, np.ndarray]]]]:
    """The reference pass as (sequence length, micro-batches of (tokens [mb, L+1], mask [mb, L])).

    Samples sorted by length (stable) are cut into micro-batches of ``micro_batch_size`` (the last
    filled with empty rows, mask 0); each micro-batch is cut to L = the longest sample's labels rounded
    up to ``multiple`` (at most seq_length). Right padding under causal attention changes no counted
    token's loss, so the sum of token losses is the packed pass's, on fewer positions. Consecutive
    micro-batches of the same L form one bucket (one forward pass of the pipeline schedule).
    """
    seq = ref.tokens.shape[1] - 1
    mb = max(1, int(micro_batch_size))
    lengths = ref.sample_lengths
    order = np.argsort(lengths, kind="stable")
    buckets: list[tuple[int, list]] = []
    for start in range(0, len(order), mb):
        rows = order[start : start + mb]
        labels = int(lengths[rows].max()) - 1
        L = seq if ref.layout == "packed" else min(seq, max(multiple, -(-labels // multiple) * multiple))
        tokens = np.zeros((mb, L + 1), dtype=np.int64)
        mask = np.zeros((mb, L), dtype=np.float32)
        tokens[: len(rows)] = ref.tokens[rows, : L + 1]
        mask[: len(rows)] = ref.mask[rows, :L]
        if buckets and buckets[-1][0] == L:
            buckets[-1][1].append((tokens, mask))
        else:
            buckets.append((L, [(tokens, mask)]))
    return buckets


# -- evaluation sets: prompts for tools/evaluate.py, whole jsonl sets for eval packs --------------------


def prompt_samples(path: str, tokenize, seq_length: int, max_records: int = 0):
    """Context/target records as samples (tokens [n, s+1], mask [n, s]) via the oracle's prompt masking."""
    tokens, masks, skipped = [], [], 0
    for line in iter_lines(path):
        status, rec = parse_record(line, [])
        ok = status == "ok" and isinstance(rec.get("context"), str) and isinstance(rec.get("target"), str)
        s = prompt_sample(tokenize, rec, seq_length) if ok and rec["target"].strip() else None
        if s is None or s[1].sum() == 0:
            skipped += 1
            continue
        tokens.append(s[0])
        masks.append(s[1])
        if max_records and len(tokens) >= max_records:
            break
    if not tokens:
        raise GMError(f"{path}: no usable context/target records ({skipped} skipped)")
    return np.stack(tokens), np.stack(masks), skipped


def windows_from_jsonl(path: str, tokenize, eod: int, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every packed window of a text jsonl (all of them: the reference set's packing, no subset)."""
    ref = build_reference(path, tokenize, eod, seq_length, 1 << 62, 0)
    return ref.tokens, ref.mask


def prompts_from_jsonl(path: str, tokenize, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """One target-masked sample per context/target record."""
    tokens, mask, _ = prompt_samples(path, tokenize, seq_length)
    return tokens, mask
