"""Write our sidecar ({prefix}.gm.json: fingerprint, document ids) for a dataset that Megatron-LM's own
tools/preprocess_data.py wrote, so megatron-gm artifacts can be tied to it (``tools/register_dataset.py``).

    python tools/register_dataset.py --data-path PREFIX --tokenizer-type T [--tokenizer-model M] \\
        [--vocab-size V] [--input POOL.jsonl ...] [--id-key id]

With ``--input`` (the files the dataset was made from, in the same order) each document's id is the
record's ``--id-key`` field, or FILE:LINE when absent; Megatron's tool writes one document per line, so
the line count must match the dataset. Without it the ids are the document indices. The dataset is
checked first: an unreadable index, a .bin shorter or longer than the index says, or a missing
tokenizer model is a one-line error and nothing is written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from megatron_gm.data import jsonl
from megatron_gm.data.indexed import DatasetInfo, compute_fingerprint, sidecar_path
from megatron_gm.data.tokenizer import TOKENIZER_TYPES, tokenizer_spec
from megatron_gm.dist import add_log_level_arg, tool_logging
from megatron_gm.errors import GMError, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True, help="dataset prefix (without .bin/.idx)")
    p.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--input", nargs="+", default=None, help=f"the {jsonl.FORMATS} the dataset came from")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="keys Megatron's tool was given")
    p.add_argument("--id-key", default="id", help="key of each record's id (FILE:LINE when absent)")
    p.add_argument("--source", default="", help="recorded as the source when --input is not given")
    p.add_argument("--overwrite", action="store_true")
    add_log_level_arg(p)
    return p


def read_index(prefix: str):
    """(number of documents, number of tokens) of a dataset, after checking .idx and .bin agree."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import _IndexReader

    idx, binf = f"{prefix}.idx", f"{prefix}.bin"
    try:
        index = _IndexReader(idx, multimodal=False)
        lengths = np.asarray(index.sequence_lengths, dtype=np.int64)
        pointers = np.asarray(index.sequence_pointers, dtype=np.int64)
        n_docs = len(index.document_indices) - 1
        itemsize = np.dtype(index.dtype).itemsize
    except Exception as e:  # Megatron's reader asserts on a bad header or reads past a short file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GMError(f"{idx}: not a readable Megatron index ({reason}); rerun preprocessing") from e
    expected = int(pointers[-1] + lengths[-1] * itemsize) if len(lengths) else 0
    size = os.path.getsize(binf)
    if size != expected:
        raise GMError(
            f"{binf}: {size} bytes but {idx} describes {expected}; the files do not belong together "
            "or one is truncated: rerun preprocessing"
        )
    return n_docs, int(lengths.sum())


def ids_from_inputs(inputs, keys: list[str], id_key: str | None, n_docs: int) -> list[str]:
    ids = [rid for _, _, rid in jsonl.iter_records(inputs, keys, id_key)]
    if len(ids) != n_docs:
        raise GMError(
            f"{' '.join(map(str, inputs))}: {len(ids)} lines but the dataset has {n_docs} documents; pass "
            "the input files the dataset was made from, in the same order"
        )
    return ids


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tool_logging(args.log_level):
        prefix = args.data_path
        if not Path(f"{prefix}.idx").exists() or not Path(f"{prefix}.bin").exists():
            raise GMError(
                f"{prefix}.idx: dataset not found; pass the prefix without .bin/.idx as --data-path"
            )
        if args.tokenizer_type == "NullTokenizer":
            if not args.vocab_size:
                raise GMError("--tokenizer-type NullTokenizer needs --vocab-size")
        elif not args.tokenizer_model or not os.path.isfile(args.tokenizer_model):
            raise GMError(
                f"{args.tokenizer_model}: tokenizer model not found; pass the --tokenizer-model the dataset "
                "was made with"
            )
        if sidecar_path(prefix).exists() and not args.overwrite:
            raise GMError(f"{sidecar_path(prefix)}: exists; pass --overwrite to replace it")
        n_docs, n_tokens = read_index(prefix)
        if args.input:
            paths = jsonl.expand_inputs(args.input)
            ids = ids_from_inputs(paths, args.json_keys, args.id_key, n_docs)
            source = " ".join(os.path.abspath(p) for p in paths)
        else:
            ids, source = [str(i) for i in range(n_docs)], args.source
        info = DatasetInfo(
            prefix=prefix,
            fingerprint=compute_fingerprint(prefix),
            num_docs=n_docs,
            num_tokens=n_tokens,
            source=source,
            ids=ids,
            tokenizer=tokenizer_spec(args.tokenizer_type, args.tokenizer_model, args.vocab_size),
        )
        info.save()
        print(f"wrote {sidecar_path(prefix)} (fingerprint {info.fingerprint}, {n_docs} documents)")
        return 0
