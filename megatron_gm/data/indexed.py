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
from megatron_gm.fs import atomic_write_text, pid_alive, sha256_files
from megatron_gm.fs import remove_stale_temporaries as remove_stale_atomic


def sidecar_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.gm.json")


def compute_fingerprint(prefix: str | os.PathLike) -> str:
    """sha256 over the .idx and .bin bytes (16 hex digits): the dataset's identity."""
    return sha256_files((b"", f"{prefix}{ext}") for ext in (".idx", ".bin"))[:16]


_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_HEAD = 34  # magic (9) + version (8) + dtype code (1) + sequence count (8) + document count (8)
_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float64", 7: "float32", 8: "uint16"}
_QUICK_BLOCK = 1 << 20
FULL_CHECK_BYTES = 64 << 20  # datasets up to this size are rehashed in full at every check (~0.1 s)


@dataclasses.dataclass
class IdxLayout:
    """What a Megatron ``.idx`` says about itself and its ``.bin`` (read from its header, no mmap)."""

    dtype: str
    num_sequences: int
    num_docs: int
    idx_bytes: int  # the size the .idx must have
    bin_bytes: int  # the size the .bin must have


def read_idx_layout(prefix: str | os.PathLike) -> IdxLayout:
    """Parse ``prefix.idx`` and check it against its own size and the ``.bin``'s; GMError when they disagree.

    Catches a truncated or foreign ``.idx`` and a ``.bin`` cut short (or grown) without reading the ``.bin``.
    """
    import numpy as np

    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    for p in (idx, bin_):
        if not p.is_file():
            raise GMError(f"{p}: dataset file not found; check --data-path (a prefix without .bin/.idx)")
    size = idx.stat().st_size
    rerun = "rerun tools/preprocess_data.py"
    with open(idx, "rb") as f:
        head = f.read(_IDX_HEAD)
        if len(head) < _IDX_HEAD or head[:9] != _IDX_MAGIC or int.from_bytes(head[9:17], "little") != 1:
            raise GMError(f"{idx}: not a Megatron indexed-dataset index (bad header); {rerun}")
        code, n_seq, n_doc = (
            head[17],
            int.from_bytes(head[18:26], "little"),
            int.from_bytes(head[26:34], "little"),
        )
        want_idx = _IDX_HEAD + 12 * n_seq + 8 * n_doc
        if code not in _DTYPES or n_doc < 1 or size != want_idx:
            raise GMError(f"{idx}: corrupt index ({size} bytes, its header needs {want_idx}); {rerun}")
        last_len = last_ptr = 0
        if n_seq:  # only the last sequence's length and pointer: the .bin ends where it ends
            f.seek(_IDX_HEAD + 4 * (n_seq - 1))
            last_len = int(np.frombuffer(f.read(4), dtype=np.int32)[0])
            f.seek(_IDX_HEAD + 4 * n_seq + 8 * (n_seq - 1))
            last_ptr = int(np.frombuffer(f.read(8), dtype=np.int64)[0])
    want_bin = last_ptr + last_len * np.dtype(_DTYPES[code]).itemsize
    have_bin = bin_.stat().st_size
    if have_bin != want_bin:
        raise GMError(
            f"{bin_}: {have_bin} bytes, but {idx.name} indexes {want_bin} (truncated or not this index's data); "
            f"{rerun}"
        )
    return IdxLayout(_DTYPES[code], n_seq, n_doc - 1, size, have_bin)


def quick_hash(prefix: str | os.PathLike) -> str:
    """sha256 over the sizes and the first and last MiB of the .idx and the .bin (16 hex digits).

    Cheap at any size; tells apart two datasets whose files have the same sizes (a swapped pair).
    """
    h = hashlib.sha256()
    for ext in (".idx", ".bin"):
        with open(f"{prefix}{ext}", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h.update(size.to_bytes(8, "little") + f.read(_QUICK_BLOCK))
            if size > _QUICK_BLOCK:
                f.seek(max(_QUICK_BLOCK, size - _QUICK_BLOCK))
                h.update(f.read(_QUICK_BLOCK))
    return h.hexdigest()[:16]


def max_token_id(prefix: str | os.PathLike, layout: IdxLayout | None = None) -> int:
    """The largest token id in ``prefix.bin`` (one pass over the file)."""
    import numpy as np

    layout = layout or read_idx_layout(prefix)
    if layout.bin_bytes == 0:
        return -1  # an empty dataset (numpy cannot map an empty file)
    data = np.memmap(f"{prefix}.bin", dtype=layout.dtype, mode="r")
    step = 1 << 24
    return max((int(data[i : i + step].max()) for i in range(0, data.size, step)), default=-1)


@dataclasses.dataclass
class DatasetInfo:
    prefix: str
    fingerprint: str
    num_docs: int
    num_tokens: int
    tokenizer: dict
    source: str
    ids: list[str]
    # what the cheap start-up check compares (filled in by save() when not given)
    bin_bytes: int | None = None
    idx_bytes: int | None = None
    quick_hash: str | None = None
    max_token_id: int | None = None

    def save(self) -> None:
        """Write the sidecar; first check the files against their own index and record their sizes."""
        layout = read_idx_layout(self.prefix)
        if layout.num_docs != self.num_docs:
            raise GMError(
                f"{self.prefix}.idx: holds {layout.num_docs} documents, the sidecar would say {self.num_docs}"
            )
        tok = self.tokenizer or {}
        if tok.get("model") and not tok.get("model_sha256"):
            raise GMError(
                f"{tok['model']}: tokenizer model not found; pass the --tokenizer-model the dataset was made with"
            )
        self.bin_bytes, self.idx_bytes = layout.bin_bytes, layout.idx_bytes
        self.quick_hash = quick_hash(self.prefix)
        if self.max_token_id is None:
            self.max_token_id = max_token_id(self.prefix, layout)
        vocab = tok.get("vocab_size")
        if vocab and self.max_token_id >= vocab:
            raise GMError(
                f"{self.prefix}.bin: holds token id {self.max_token_id}, outside the tokenizer's vocabulary "
                f"of {vocab}; pass the tokenizer the dataset was made with"
            )
        atomic_write_text(sidecar_path(self.prefix), json.dumps(dataclasses.asdict(self)) + "\n")


def check_dataset_files(info: DatasetInfo, full: bool = False) -> IdxLayout:
    """The .bin/.idx at ``info.prefix`` are the ones the sidecar describes (GMError naming the file if not).

    Cheap by default (the index header, both sizes, the first and last MiB); ``full``, and any dataset
    under ``FULL_CHECK_BYTES``, also recomputes the fingerprint over every byte. A sidecar from before
    sizes were recorded gets the structural check.
    """
    prefix = info.prefix
    layout = read_idx_layout(prefix)
    fix = "rerun tools/preprocess_data.py (or tools/register_dataset.py --overwrite)"
    if layout.num_docs != info.num_docs:
        raise GMError(
            f"{sidecar_path(prefix)}: describes {info.num_docs} documents but {prefix}.idx holds "
            f"{layout.num_docs}; the sidecar is stale, {fix}"
        )
    for name, have in (("bin_bytes", layout.bin_bytes), ("idx_bytes", layout.idx_bytes)):
        want = getattr(info, name)
        if want is not None and want != have:
            ext = name.split("_")[0]
            raise GMError(f"{prefix}.{ext}: {have} bytes, its sidecar recorded {want}; {fix}")
    if info.quick_hash is not None and quick_hash(prefix) != info.quick_hash:
        raise GMError(
            f"{prefix}.bin/.idx: not the files {sidecar_path(prefix).name} describes (contents differ); {fix}"
        )
    full = full or layout.bin_bytes + layout.idx_bytes <= FULL_CHECK_BYTES
    if full and compute_fingerprint(prefix) != info.fingerprint:
        raise GMError(f"{prefix}.bin/.idx: fingerprint differs from {sidecar_path(prefix).name}'s; {fix}")
    return layout


def check_tokenizer(info: DatasetInfo, tokenizer_model: str | None, vocab_size: int | None = None) -> None:
    """The run's tokenizer must be the one the dataset was made with, and hold every token id in it."""
    from megatron_gm.fs import sha256_file

    spec = info.tokenizer or {}
    want = spec.get("model_sha256")
    if tokenizer_model and want:
        if not os.path.isfile(tokenizer_model):
            raise GMError(f"--tokenizer-model {tokenizer_model}: not found; pass {spec.get('model')}")
        if sha256_file(tokenizer_model)[:16] != want:
            raise GMError(
                f"--tokenizer-model {tokenizer_model}: not the tokenizer {info.prefix} was made with "
                f"({spec.get('model')}); pass that one"
            )
    if vocab_size and info.max_token_id is not None and info.max_token_id >= vocab_size:
        raise GMError(
            f"--vocab-size {vocab_size}: {info.prefix} holds token id {info.max_token_id}; "
            f"pass the vocabulary size it was made with ({spec.get('vocab_size')})"
        )


def load_dataset_info(prefix: str | os.PathLike, check: bool = True) -> DatasetInfo:
    """Read ``{prefix}.gm.json``; refuse a prefix without one (not written by tools/preprocess_data.py).

    ``check``: also run the cheap ``check_dataset_files`` (the files are the ones the sidecar describes).
    """
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
        d["prefix"] = str(prefix)  # where the files are now (the sidecar records where they were written)
        info = DatasetInfo(**d)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise GMError(f"{path}: corrupt dataset sidecar ({e}); rerun tools/preprocess_data.py") from e
    if check:
        check_dataset_files(info)
    return info


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
    remove_stale_temporaries(prefix)
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


def remove_stale_temporaries(prefix: str | os.PathLike) -> list[Path]:
    """Delete ``.tmp<pid>_{name}.bin/.idx`` (and sidecar temporaries) a killed writer left beside ``prefix``.

    Only files of processes that no longer exist (or of this one) are removed: a live writer's stay.
    """
    import re

    prefix = Path(prefix)
    pattern = re.compile(rf"\.tmp(\d+)_{re.escape(prefix.name)}\.(bin|idx)")
    removed = []
    if not prefix.parent.is_dir():
        return removed
    for p in prefix.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    removed += remove_stale_atomic(prefix.parent, prefix.name)  # .{name}.gm.json.tmp<pid>
    return removed


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
