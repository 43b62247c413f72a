"""Megatron indexed datasets (.bin/.idx) plus our sidecar: document ids and the dataset fingerprint.

For a Megatron data prefix ``P`` (``{output_prefix}_{key}_document``) the files are ``P.bin`` and
``P.idx`` (written and read by ``megatron.core.datasets.indexed_dataset``) and ``P.gm.json``, which holds
the fingerprint every later artifact is checked against and the input id of each document.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from megatron_gm.errors import GMError
from megatron_gm.manifest import atomic_write_text


def sidecar_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.gm.json")


def compute_fingerprint(prefix: str | os.PathLike) -> str:
    """sha256 over the .idx and .bin bytes (16 hex digits): the dataset's identity."""
    h = hashlib.sha256()
    for ext in (".idx", ".bin"):
        with open(f"{prefix}{ext}", "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:16]


@dataclasses.dataclass
class DatasetInfo:
    prefix: str
    fingerprint: str
    num_docs: int
    num_tokens: int
    tokenizer: dict
    source: str
    ids: list[str]

    def save(self) -> None:
        atomic_write_text(sidecar_path(self.prefix), json.dumps(dataclasses.asdict(self)) + "\n")


def load_dataset_info(prefix: str | os.PathLike) -> DatasetInfo:
    """Read ``{prefix}.gm.json``; refuse a prefix without one (not written by tools/preprocess_data.py)."""
    path = sidecar_path(prefix)
    if not path.exists():
        if Path(f"{prefix}.idx").exists():
            raise GMError(
                f"{path}: missing; this dataset was not written by tools/preprocess_data.py "
                "(rerun it, or write the sidecar with tools/register_dataset.py)"
            )
        raise GMError(f"{prefix}.idx: dataset not found; check --data-path (a prefix without .bin/.idx)")
    try:
        d = json.loads(path.read_text())
        return DatasetInfo(**d)
    except (json.JSONDecodeError, TypeError) as e:
        raise GMError(f"{path}: corrupt dataset sidecar ({e}); rerun tools/preprocess_data.py") from e


def write_indexed_dataset(
    prefix: str | os.PathLike,
    documents,
    *,
    tokenizer: dict,
    source: str,
    ids: list[str] | None = None,
) -> DatasetInfo:
    """Write token documents (iterable of int sequences) as ``prefix.bin/.idx`` + sidecar.

    Goes through megatron.core's ``IndexedDatasetBuilder``. Writes under temporary names and renames
    at the end, so an interrupted write leaves nothing at ``prefix``. Used by tests to build fixtures.
    """
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(prefix)
    tmp = f"{os.path.dirname(prefix) or '.'}/.tmp{os.getpid()}_{os.path.basename(prefix)}"
    builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=_dtype_for(tokenizer.get("vocab_size")))
    n_docs = n_tok = 0
    for doc in documents:
        arr = np.asarray(doc, dtype=np.int64)
        builder.add_document(arr, [len(arr)])
        n_docs += 1
        n_tok += len(arr)
    builder.finalize(f"{tmp}.idx")
    return finish_indexed_dataset(tmp, prefix, n_docs, n_tok, tokenizer, source, ids)


def finish_indexed_dataset(tmp, prefix, n_docs, n_tok, tokenizer, source, ids) -> DatasetInfo:
    """Move ``tmp.bin/.idx`` to ``prefix`` and write the sidecar (last, so its presence means complete)."""
    os.replace(f"{tmp}.bin", f"{prefix}.bin")
    os.replace(f"{tmp}.idx", f"{prefix}.idx")
    ids = list(ids) if ids is not None else [str(i) for i in range(n_docs)]
    info = DatasetInfo(
        prefix=str(prefix),
        fingerprint=compute_fingerprint(prefix),
        num_docs=n_docs,
        num_tokens=n_tok,
        tokenizer=tokenizer,
        source=str(source),
        ids=ids,
    )
    info.save()
    return info


def _dtype_for(vocab_size: int | None):
    """Megatron's choice: uint16 when the vocabulary fits, else int32."""
    import numpy as np

    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32
