"""The selection artifact: what ``--gm-selection`` reads.

A folder holding ``documents.npy`` (sorted, unique int64 document indices into the indexed dataset
whose fingerprint the manifest names) and ``manifest.json`` (kind ``selection``: stage, checkpoint
iteration, dataset fingerprint, seed, and a config with method, ratio, number of clusters and the
influence-model hash, plus ``documents_sha256``: the digest of the document list). ``documents.npy``
is written first, the manifest last, so a folder with a manifest is complete; ``load_selection`` checks
the list against the digest, so a changed or damaged ``documents.npy`` is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.fs import atomic_write_bytes
from megatron_gm.manifest import Manifest


def save_selection(folder: str | os.PathLike, documents: np.ndarray, manifest: Manifest) -> Path:
    folder = Path(folder)
    docs = np.asarray(documents, dtype=np.int64)
    if docs.ndim != 1 or docs.size == 0:
        raise GMError(f"{folder}: a selection needs a non-empty 1-D list of document indices")
    if np.any(docs[1:] <= docs[:-1]):
        raise GMError(f"{folder}: selection document indices must be sorted and unique")
    if manifest.kind != "selection":
        raise GMError(f"{folder}: manifest kind must be 'selection', got {manifest.kind!r}")
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, docs)
    atomic_write_bytes(folder / "documents.npy", buf.getvalue())
    manifest = dataclasses.replace(manifest, config={**manifest.config, DIGEST: documents_digest(docs)})
    manifest.save(folder / "manifest.json")
    return folder


DIGEST = "documents_sha256"


def documents_digest(docs: np.ndarray) -> str:
    """sha256 of the document indices as little-endian int64 (what ``documents.npy`` holds)."""
    return hashlib.sha256(np.ascontiguousarray(docs, dtype="<i8").tobytes()).hexdigest()


def load_selection(
    folder: str | os.PathLike, *, dataset_fingerprint: str | None = None, num_docs: int | None = None
) -> tuple[np.ndarray, Manifest]:
    """Load and validate a selection; refuse one made for another dataset (``dataset_fingerprint``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GMError(f"{folder}: selection not found; pass the folder written by tools/select_data.py")
    manifest = Manifest.load(folder / "manifest.json")
    if manifest.kind != "selection":
        raise GMError(f"{folder}: is a {manifest.kind!r} artifact, not a selection")
    manifest.check(path=folder, dataset_fingerprint=dataset_fingerprint)
    try:
        docs = np.load(folder / "documents.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise GMError(f"{folder}/documents.npy: unreadable ({e}); regenerate the selection") from e
    if docs.ndim != 1 or docs.dtype != np.int64 or docs.size == 0 or np.any(docs[1:] <= docs[:-1]):
        raise GMError(f"{folder}/documents.npy: not a sorted, non-empty int64 index list; regenerate it")
    if num_docs is not None and (docs[0] < 0 or docs[-1] >= num_docs):
        raise GMError(f"{folder}: document index out of range for a dataset of {num_docs} documents")
    want = manifest.config.get(DIGEST)
    if want is not None and documents_digest(docs) != want:
        raise GMError(
            f"{folder}/documents.npy: does not match the {DIGEST} in its manifest (changed or damaged "
            "after writing); regenerate the selection with tools/select_data.py"
        )
    return docs, manifest
