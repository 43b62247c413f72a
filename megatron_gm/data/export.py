"""Write a selection as its own Megatron indexed dataset (``tools/export_selection.py``): the no-patch path.

    python tools/export_selection.py --data-path runs/x/pool_text_document \\
        --selection runs/x/loop/selection_stage1 --output-prefix runs/x/stage1_text_document

The output ``PREFIX.bin/.idx`` holds only the selected documents, in pool order, with their tokens and
sequence lengths copied from the pool: byte-identical to preprocessing those documents alone with
the same tokenizer and flags. An unmodified Megatron (a pinned fork, NeMo, a reviewed tree: no
``megatron_gm.install()``) trains on it with ``--data-path PREFIX``. Beside it, ``PREFIX.gm.json`` (our
dataset sidecar: fingerprint and the documents' ids) and ``PREFIX.selection.json``, which names the
source selection, its manifest and the pool's fingerprint.

Megatron's blends (``--data-path W1 P1 W2 P2``) weight whole datasets and cannot pick documents
inside one, so a blend-file form would need the same copy; only this form is offered.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from megatron_gm.data.indexed import _dtype_for, finish_indexed_dataset, load_dataset_info, sidecar_path
from megatron_gm.dist import add_log_level_arg, tool_logging
from megatron_gm.errors import GMError, cli_main
from megatron_gm.fs import atomic_write_text, sha256_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True, help="the pool's dataset prefix (without .bin/.idx)")
    p.add_argument("--selection", required=True, help="selection folder written by tools/select_data.py")
    p.add_argument("--output-prefix", required=True, help="prefix of the exported .bin/.idx")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_log_level_arg(p)
    return p


def export_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{prefix}.selection.json")


def export_selection(data_path: str, selection: str, output_prefix: str, overwrite: bool = False) -> dict:
    """Copy the selected documents of ``data_path`` to ``output_prefix``; returns the export record."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    from megatron_gm.data.selection import load_selection

    info = load_dataset_info(data_path)
    docs, manifest = load_selection(selection, dataset_fingerprint=info.fingerprint, num_docs=info.num_docs)
    if os.path.abspath(output_prefix) == os.path.abspath(data_path):
        raise GMError(f"--output-prefix {output_prefix}: is the pool itself; choose another prefix")
    outs = [f"{output_prefix}{e}" for e in (".bin", ".idx")] + [
        str(sidecar_path(output_prefix)),
        str(export_path(output_prefix)),
    ]
    existing = [p for p in outs if Path(p).exists()]
    if existing and not overwrite:
        raise GMError(
            f"{existing[0]}: exists; pass --overwrite to replace it or choose another --output-prefix"
        )
    out_dir = Path(output_prefix).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = str(out_dir / f".tmp{os.getpid()}_{Path(output_prefix).name}")
    pool = IndexedDataset(str(data_path))
    try:
        dtype = pool.index.dtype
        if np.dtype(dtype) != np.dtype(_dtype_for(info.tokenizer.get("vocab_size"))):
            raise GMError(
                f"{data_path}.idx: token type {np.dtype(dtype)} does not match its sidecar's vocabulary"
            )
        doc_index = pool.document_indices
        lengths = pool.sequence_lengths
        pointers = pool.index.sequence_pointers
        binary = np.memmap(f"{data_path}.bin", dtype=np.uint8, mode="r")
        itemsize = np.dtype(dtype).itemsize
        builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
        n_tok = 0
        for d in docs.tolist():
            first, last = int(doc_index[d]), int(doc_index[d + 1])
            seq = lengths[first:last].tolist()
            start = int(pointers[first]) if last > first else 0
            n = sum(seq)
            tokens = binary[start : start + n * itemsize].view(dtype)
            builder.add_document(tokens, seq)
            n_tok += n
        builder.finalize(f"{tmp}.idx")
        ids = [info.ids[d] for d in docs.tolist()]
        out = finish_indexed_dataset(tmp, output_prefix, len(docs), n_tok, info.tokenizer, data_path, ids)
    finally:
        del pool
        for e in (".bin", ".idx"):
            Path(f"{tmp}{e}").unlink(missing_ok=True)
    record = {
        "kind": "selection_export",
        "prefix": str(output_prefix),
        "fingerprint": out.fingerprint,
        "num_docs": out.num_docs,
        "num_tokens": out.num_tokens,
        "source_dataset": str(data_path),
        "source_fingerprint": info.fingerprint,
        "selection": os.path.abspath(selection),
        "selection_digest": manifest.digest(),
        "selection_documents_sha256": sha256_file(Path(selection) / "documents.npy")[:16],
        "selection_manifest": json.loads((Path(selection) / "manifest.json").read_text()),
    }
    atomic_write_text(export_path(output_prefix), json.dumps(record, indent=1) + "\n")
    return record


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tool_logging(args.log_level):
        rec = export_selection(args.data_path, args.selection, args.output_prefix, args.overwrite)
        print(
            f"wrote {rec['prefix']}.bin/.idx ({rec['num_docs']} documents, {rec['num_tokens']} tokens, "
            f"fingerprint {rec['fingerprint']}) from selection {rec['selection']} ({rec['selection_digest']}) "
            f"of {rec['source_dataset']} "
            f"(fingerprint {rec['source_fingerprint']}); train on it with --data-path {rec['prefix']}"
        )
        return 0
