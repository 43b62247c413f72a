"""Pool documents back to text: decode documents of an indexed dataset with the tokenizer it was made with."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from megatron_gm.data.indexed import load_dataset_info
from megatron_gm.data.tokenizer import build_tokenizer
from megatron_gm.errors import GMError
from megatron_gm.fs import sha256_file


@functools.lru_cache(maxsize=4)
def dataset_and_tokenizer(prefix: str):
    """(IndexedDataset, tokenizer, DatasetInfo) of a dataset prefix; the tokenizer is the one recorded in its
    sidecar, checked against the recorded hash."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    info = load_dataset_info(prefix)
    spec = info.tokenizer or {}
    ttype, tmodel = spec.get("type"), spec.get("model")
    if not ttype:
        raise GMError(f"{prefix}.gm.json: no tokenizer type recorded; rerun tools/preprocess_data.py")
    if ttype != "NullTokenizer":
        if not tmodel or not os.path.exists(tmodel):
            raise GMError(
                f"{prefix}.gm.json: tokenizer model {tmodel!r} not found; the dataset's tokenizer must be "
                "at the recorded path to decode documents"
            )
        want = spec.get("model_sha256")
        if want and sha256_file(tmodel)[: len(want)] != want:
            raise GMError(
                f"{tmodel}: differs from the tokenizer this dataset was made with ({prefix}.gm.json); "
                "restore the original tokenizer model"
            )
    tokenizer = build_tokenizer(ttype, tmodel, spec.get("vocab_size"))
    return IndexedDataset(prefix), tokenizer, info


def document_texts(data_prefix: str | os.PathLike, indices: Sequence[int]) -> list[str]:
    """Decode pool documents (indices into the Megatron indexed dataset) with the run's tokenizer."""
    ds, tokenizer, _info = dataset_and_tokenizer(str(data_prefix))
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(ds)):
        raise GMError(
            f"{data_prefix}: document index {int(idx.max() if idx.max() >= len(ds) else idx.min())} out of "
            f"range for a dataset of {len(ds)} documents; the trajectories belong to another dataset"
        )
    return [tokenizer.detokenize(ds[int(i)].tolist()) for i in idx]
