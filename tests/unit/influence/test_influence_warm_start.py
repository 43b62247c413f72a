"""Later selection rounds: warm-start the influence model from the previous round's, optionally frozen."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from megatron_gm.errors import GMError
from megatron_gm.influence.train import TrainConfig
from tests.distributed import run_distributed_test
from tests.influence_fixtures import oracle_store, tiny_encoder, token_pool


def _train(rank, world_size, cfg_dict):
    from megatron_gm.influence.train import TrainConfig, train_influence_model

    torch.set_num_threads(1)
    return train_influence_model(TrainConfig(**cfg_dict))


def _heads(folder) -> dict:
    from safetensors.torch import load_file

    return {k: v.numpy() for k, v in load_file(str(folder / "heads.safetensors")).items()}


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_round_two_starts_from_round_one_and_keeps_its_encoder_frozen(tmp_path):
    from megatron_gm.influence.io import read_model_config, warm_start_encoder
    from megatron_gm.influence.model import encoder_hash

    enc = tiny_encoder(tmp_path / "enc")
    info = token_pool(tmp_path / "pool" / "pool_text_document", 120)
    rng = np.random.default_rng(0)
    docs = np.stack([rng.choice(120, 4, replace=False) for _ in range(40)])
    oracle_store(tmp_path / "store", info.fingerprint, docs, rng.normal(size=(40, 4)))
    base = TrainConfig(
        data_path=info.prefix, oracle=[str(tmp_path / "store")], output="", mode="full", encoder=str(enc),
        epochs=2, lr=1e-3, warmup_steps=1, val_count=8, train_batch_size=8, micro_batch_size=8,
        ablation="none", progress=False,
    )  # fmt: skip
    one = tmp_path / "round1"
    run_distributed_test(_train, 1, dataclasses.asdict(dataclasses.replace(base, output=str(one))))
    assert read_model_config(one)["fine_tuned"] and warm_start_encoder(one) == str(one / "encoder")
    # round 2: heads only (fast mode) on round 1's fine-tuned encoder, from round 1's heads; a learning
    # rate of 1e-12 leaves them where they started
    still = dict(mode="fast", encoder="", epochs=1, lr=1e-12, warmup_steps=0)
    two = tmp_path / "round2"
    cfg2 = dataclasses.replace(base, output=str(two), init_from=str(one), **still)
    run_distributed_test(_train, 1, dataclasses.asdict(cfg2), backend=None)
    h1, h2 = _heads(one), _heads(two)
    for k in h1:
        np.testing.assert_allclose(h2[k], h1[k], rtol=0, atol=1e-6)
    c2 = read_model_config(two)
    assert not c2["fine_tuned"] and c2["model"]["encoder_path"] == str(one / "encoder")
    assert c2["encoder_sha256"] == encoder_hash(one / "encoder")  # the selection's embedding cache key
    assert warm_start_encoder(two) == str(one / "encoder")  # round 3 keeps round 1's encoder
    # without the warm start the same run starts from fresh heads
    cold = tmp_path / "cold"
    cfg3 = dataclasses.replace(cfg2, output=str(cold), init_from="", encoder=str(one / "encoder"))
    run_distributed_test(_train, 1, dataclasses.asdict(cfg3), backend=None)
    assert np.abs(_heads(cold)["head.weight"] - h1["head.weight"]).max() > 1e-3


def test_warm_start_from_a_model_of_another_width_is_refused(tmp_path):
    from safetensors.torch import save_file

    from megatron_gm.influence.io import load_heads
    from megatron_gm.influence.model import InfluenceModel, ModelConfig

    enc = tiny_encoder(tmp_path / "enc")
    model = InfluenceModel(ModelConfig(str(enc)))
    w = model.hidden_size + 1
    save_file({"head.weight": torch.zeros(1, w), "head.bias": torch.zeros(1), "alpha": torch.ones(1),
               "tau": torch.ones(1)}, str(tmp_path / "heads.safetensors"))  # fmt: skip
    with pytest.raises(GMError, match=f"--init-from {tmp_path}: heads of width {w}"):
        load_heads(model, tmp_path)
    with pytest.raises(GMError, match="heads.safetensors: unreadable"):
        load_heads(model, tmp_path / "missing")
