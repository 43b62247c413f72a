"""Evaluation packs: fixed sets of samples that pretraining evaluates in-process (``--gm-eval-pack``).

A pack is one ``.npz`` with, per named set, ``{name}.tokens`` (int64 [n, seq_length + 1]) and
``{name}.mask`` (float32 [n, seq_length], the label positions that count), plus ``{name}.kind``
("windows": token-mean loss; "prompts": target-only loss and exact-match accuracy) and a ``meta`` JSON
string. Samples are the shape the oracle and ``tools/evaluate.py`` use (``megatron/samples.py``), so a pack
built once is scored identically by every run, seed and method that loads it.

A selection benchmark builds three sets: text windows packed from a jsonl and context/target prompts
(``data/reference.py``: ``windows_from_jsonl``, ``prompts_from_jsonl``), and windows of a Megatron indexed
dataset's validation documents (``windows_from_dataset``, here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.fs import atomic_write_bytes

KINDS = ("windows", "prompts")


def save_pack(
    path: str | os.PathLike, sets: dict[str, tuple[np.ndarray, np.ndarray, str]], meta: dict
) -> None:
    """Write ``sets`` (name -> (tokens, mask, kind)) and ``meta`` atomically to ``path``."""
    import io

    arrays: dict[str, np.ndarray] = {"meta": np.asarray(json.dumps(meta, sort_keys=True))}
    for name, (tokens, mask, kind) in sets.items():
        if kind not in KINDS or "." in name:
            raise GMError(f"eval pack set {name!r}: kind must be one of {KINDS} and the name without dots")
        if tokens.shape[0] == 0 or tokens.shape[0] != mask.shape[0] or tokens.shape[1] != mask.shape[1] + 1:
            raise GMError(
                f"eval pack set {name!r}: empty or mismatched tokens {tokens.shape} / mask {mask.shape}"
            )
        arrays[f"{name}.tokens"] = np.asarray(tokens, dtype=np.int64)
        arrays[f"{name}.mask"] = np.asarray(mask, dtype=np.float32)
        arrays[f"{name}.kind"] = np.asarray(kind)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_pack(path: str | os.PathLike, seq_length: int | None = None) -> tuple[dict, dict]:
    """(sets, meta): sets maps name -> (tokens, mask, kind). Refuses a pack of another sequence length."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            names = sorted({k.split(".")[0] for k in z.files if k != "meta"})
            sets = {n: (z[f"{n}.tokens"], z[f"{n}.mask"], str(z[f"{n}.kind"])) for n in names}
    except (OSError, ValueError, KeyError) as e:
        raise GMError(f"{path}: not a readable eval pack ({e}); rebuild it") from e
    for name, (tokens, _, _) in sets.items():
        if seq_length is not None and tokens.shape[1] != seq_length + 1:
            raise GMError(
                f"{path}: set {name!r} has samples of {tokens.shape[1] - 1} tokens, the run's --seq-length is "
                f"{seq_length}; rebuild the pack for this sequence length"
            )
    return sets, meta


def subset(tokens: np.ndarray, mask: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded subset of ``n`` samples (all when n <= 0 or n >= len), kept in their original order."""
    if n <= 0 or n >= len(tokens):
        return tokens, mask
    idx = np.sort(np.random.default_rng(seed).choice(len(tokens), size=n, replace=False))
    return tokens[idx], mask[idx]


def windows_from_dataset(prefix: str, doc_range: tuple[int, int], seq_length: int):
    """Documents ``[lo, hi)`` of an indexed dataset (each ending in its EOD, as preprocessed with
    ``--append-eod``) as one stream cut into windows of seq_length + 1 tokens, every seq_length tokens."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    lo, hi = doc_range
    if not 0 <= lo < hi <= len(ds):
        raise GMError(f"{prefix}: document range {lo}..{hi} outside the dataset's {len(ds)} documents")
    stream = np.concatenate([np.asarray(ds[i], dtype=np.int64) for i in range(lo, hi)])
    n = (len(stream) - 1) // seq_length
    if n < 1:
        raise GMError(f"{prefix}: documents {lo}..{hi} hold fewer than {seq_length + 1} tokens")
    tokens = np.stack([stream[i * seq_length : i * seq_length + seq_length + 1] for i in range(n)])
    return tokens, np.ones((n, seq_length), dtype=np.float32)
