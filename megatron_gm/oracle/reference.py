"""The reference set D_r: a jsonl tokenized with the run's tokenizer, as a fixed set of samples.

Records with string ``context`` and ``target`` (e.g. lambada_ref) become one sample each (context then
target, cut from the left to seq_length + 1 tokens) in which only target tokens count (prompt-masked).
Records with a ``text`` field are packed, each followed by EOD as in preprocessing, into one stream
cut into samples of seq_length + 1 tokens every seq_length tokens (Megatron's GPTDataset packing); all
their tokens count. A seeded subset of ``num_samples`` of them is the reference set. Its ``digest`` (of
the token and mask bytes) names it in the oracle manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable

import numpy as np

from megatron_gm.data.jsonl import iter_lines, parse_record
from megatron_gm.errors import GMError
from megatron_gm.oracle.samples import pad_sample


@dataclasses.dataclass
class ReferenceSet:
    tokens: np.ndarray  # int64 [n, seq_length + 1]
    mask: np.ndarray  # float32 [n, seq_length]: label positions that count
    source: str
    records: dict  # record kind -> count

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(np.asarray(self.tokens.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.tokens, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.mask, dtype=np.float32).tobytes())
        return h.hexdigest()[:16]


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


def build_reference(
    path: str,
    tokenize: Callable[[str], list[int]],
    eod: int,
    seq_length: int,
    num_samples: int,
    seed: int,
) -> ReferenceSet:
    """Read, tokenize and cut the reference jsonl; keep a seeded subset of ``num_samples`` samples."""
    if num_samples < 1:
        raise GMError(f"--gm-oracle-ref-samples {num_samples}: must be at least 1")
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
    return ReferenceSet(tokens=tokens, mask=mask, source=str(path), records=dict(kinds))
