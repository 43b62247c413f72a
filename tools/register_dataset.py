#!/usr/bin/env python
"""Write our sidecar ({prefix}.gm.json: fingerprint, document ids) for a dataset that Megatron-LM's own
tools/preprocess_data.py wrote, so megatron-gm artifacts can be tied to it.

    python tools/register_dataset.py --data-path PREFIX --tokenizer-type T [--tokenizer-model M] [--vocab-size V]
"""

import argparse
import sys
from pathlib import Path

from megatron_gm.data.indexed import DatasetInfo, compute_fingerprint, sidecar_path
from megatron_gm.data.tokenizer import TOKENIZER_TYPES, tokenizer_spec
from megatron_gm.errors import GMError, cli_main


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True, help="dataset prefix (without .bin/.idx)")
    p.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--source", default="", help="the jsonl the dataset came from (recorded only)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = args.data_path
    if not Path(f"{prefix}.idx").exists() or not Path(f"{prefix}.bin").exists():
        raise GMError(f"{prefix}.idx: dataset not found; pass the prefix without .bin/.idx as --data-path")
    if sidecar_path(prefix).exists() and not args.overwrite:
        raise GMError(f"{sidecar_path(prefix)}: exists; pass --overwrite to replace it")
    ds = IndexedDataset(prefix)
    n_docs = len(ds.document_indices) - 1
    info = DatasetInfo(
        prefix=prefix,
        fingerprint=compute_fingerprint(prefix),
        num_docs=n_docs,
        num_tokens=int(ds.sequence_lengths.sum()),
        source=args.source,
        ids=[str(i) for i in range(n_docs)],
        tokenizer=tokenizer_spec(args.tokenizer_type, args.tokenizer_model, args.vocab_size),
    )
    info.save()
    print(f"wrote {sidecar_path(prefix)} (fingerprint {info.fingerprint}, {n_docs} documents)")


if __name__ == "__main__":
    sys.exit(main())
