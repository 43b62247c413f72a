"""The writers of the kill -9 matrix, deterministic: the same call always writes the same bytes.

Used by the test process (uninterrupted references and reruns) and by tests/kill_driver.py (killed runs).
"""

from __future__ import annotations

import numpy as np

from tests.reliability_fixtures import NULL_SPEC, docs


def dataset(args: list[str]) -> int:
    from megatron_gm.data.indexed import write_indexed_dataset

    (prefix,) = args
    write_indexed_dataset(prefix, docs(seed=3, n=200), tokenizer=NULL_SPEC, source="kill matrix")
    return 0


def influence_model(encoder: str, fingerprint: str):
    import torch

    from megatron_gm.influence import InfluenceModel, ModelConfig
    from megatron_gm.manifest import Manifest

    torch.manual_seed(0)
    model = InfluenceModel(ModelConfig(encoder, chunk_len=32)).eval()
    with torch.no_grad():
        model.heads.alpha.fill_(0.7)
        model.heads.tau.fill_(1.6)
    return model, Manifest(kind="influence_model", dataset_fingerprint=fingerprint, stage=0, iteration=4)


def influence(args: list[str]) -> int:
    from megatron_gm.influence import save_influence_model

    folder, encoder, fingerprint = args
    model, manifest = influence_model(encoder, fingerprint)
    save_influence_model(folder, model, manifest, fine_tuned=False)
    return 0


def oracle(args: list[str]) -> int:
    from megatron_gm.manifest import Manifest
    from megatron_gm.oracle.store import write_oracle_store

    folder, fingerprint = args
    rng = np.random.default_rng(0)
    shards = []
    for i in range(3):
        ids = np.arange(4 * i, 4 * i + 4, dtype=np.int64)
        ref = rng.standard_normal((4, 4)).astype(np.float32)
        shards.append(
            {"traj_id": ids, "documents": rng.integers(0, 100, (4, 3)).astype(np.int64),
             "labels": np.diff(ref, axis=1), "ref_loss": ref}
        )  # fmt: skip
    write_oracle_store(folder, Manifest("oracle", fingerprint, stage=0, iteration=4, seed=1), shards)
    return 0


def select(args: list[str]) -> int:
    from megatron_gm.procs import release_all
    from megatron_gm.selection.cli import main

    try:
        return main(args)
    finally:
        release_all()


ENTRIES = {"dataset": dataset, "influence": influence, "oracle": oracle, "select": select}
