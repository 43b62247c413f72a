"""Training the influence model under DeepSpeed: recovery of known parameters, 1 vs 2 processes, resume,
several oracle stores, bad input."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_gm.errors import GMError, ManifestMismatch
from megatron_gm.influence.data import default_val_count, load_stores, split_indices
from megatron_gm.influence.train import TrainConfig
from megatron_gm.influence.trainer import deepspeed_config
from tests.distributed import run_distributed_test
from tests.influence_fixtures import oracle_store, tiny_encoder, token_pool

ALPHA, TAU = 1.5, 0.8
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny encoder, a 300-document pool and its frozen-encoder embeddings."""
    from megatron_gm.influence import InfluenceModel, ModelConfig, document_texts
    from megatron_gm.influence.embed import embed_texts

    root = tmp_path_factory.mktemp("influence")
    enc = tiny_encoder(root / "enc")
    info = token_pool(root / "pool" / "pool_text_document", 300)
    torch.set_num_threads(1)
    model = InfluenceModel(ModelConfig(str(enc)))
    h = embed_texts(model, document_texts(info.prefix, range(300)), 32).astype(np.float64)
    return {"root": root, "enc": enc, "info": info, "h": h}


def synthetic(h: np.ndarray, n: int, T: int, seed: int, train_rows=None):
    """Trajectories and labels from a known (w, b, alpha, tau); b makes the training labels' mean 0 so the
    z-scored labels are exactly representable by the model."""
    rng = np.random.default_rng(seed)
    docs = np.stack([rng.choice(len(h), T, replace=False) for _ in range(n)])
    w = rng.normal(size=h.shape[1])
    H = h[docs]
    s = H @ w
    R = np.einsum("btd,bsd->bts", H, H)
    G = np.ones((n, T))
    for t in range(1, T):
        G[:, t] = ALPHA * np.mean(1 - R[:, :t, t] / TAU, axis=1)
    rows = np.arange(n) if train_rows is None else train_rows
    b = -(s[rows] * G[rows]).sum() / G[rows].sum()
    return docs, (s + b) * G, w, b


def _train(rank, world_size, cfg_dict, max_steps_first=0):
    from megatron_gm.influence.train import TrainConfig, train_influence_model

    torch.set_num_threads(1)
    cfg = TrainConfig(**cfg_dict)
    if max_steps_first:  # a run cut short (as if killed after a checkpoint), then the same command again
        train_influence_model(dataclasses.replace(cfg, max_steps=max_steps_first))
    return train_influence_model(cfg)


def _heads(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.numpy() for k, v in load_file(str(folder / "heads.safetensors")).items()}


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_fast_mode_recovers_known_parameters_from_two_stores(world, tmp_path):
    h, info = world["h"], world["info"]
    n, T = 400, 10
    train_rows, _ = split_indices(n, default_val_count(n), 1234)
    docs, labels, w, b = synthetic(h, n, T, seed=1, train_rows=train_rows)
    # two rounds (e.g. random + bootstrap) trained at once
    oracle_store(tmp_path / "r1", info.fingerprint, docs[:300], labels[:300])
    oracle_store(tmp_path / "r2", info.fingerprint, docs[300:], labels[300:], traj_offset=300)
    cfg = TrainConfig(
        data_path=info.prefix,
        oracle=[str(tmp_path / "r1"), str(tmp_path / "r2")],
        output=str(tmp_path / "out"),
        mode="fast",
        encoder=str(world["enc"]),
        epochs=100,
        lr=3e-2,
        warmup_steps=10,
        eval_interval=500,
        train_batch_size=16,
        micro_batch_size=16,
        progress=False,
    )
    (res,) = run_distributed_test(_train, 1, dataclasses.asdict(cfg), backend=None)
    main, abl = res["main"]["best"], res["ablation"]["best"]
    assert main["alpha"] == pytest.approx(ALPHA, rel=0.1)
    assert main["tau"] == pytest.approx(TAU, rel=0.05)
    assert main["spearman"] > 0.9
    assert abl["spearman"] < main["spearman"] - 0.3  # without the relation term these labels can't be fit
    from megatron_gm.influence import load_influence_model

    model, manifest = load_influence_model(tmp_path / "out", dataset_fingerprint=info.fingerprint)
    assert set(manifest.inputs) == {"oracle_0", "oracle_1"}
    assert model.alpha == pytest.approx(main["alpha"]) and model.tau == pytest.approx(main["tau"])
    from megatron_gm.influence.embed import individual_scores

    s_learned = individual_scores(model, h.astype(np.float32))
    assert np.corrcoef(s_learned, h @ w)[0, 1] > 0.97


@pytest.mark.timeout(240)
@pytest.mark.slow
def test_two_processes_match_one_and_resume_continues(world, tmp_path):
    h, info = world["h"], world["info"]
    docs, labels, _, _ = synthetic(h, 40, 4, seed=2)
    oracle_store(tmp_path / "store", info.fingerprint, docs, labels)
    base = TrainConfig(
        data_path=info.prefix,
        oracle=[str(tmp_path / "store")],
        output="",
        mode="full",
        encoder=str(world["enc"]),
        epochs=2,
        lr=1e-3,
        warmup_steps=2,
        val_count=8,
        train_batch_size=8,
        micro_batch_size=4,
        zero_stage=2,
        ablation="none",
        progress=False,
    )
    one = dataclasses.asdict(dataclasses.replace(base, output=str(tmp_path / "one")))
    two = dataclasses.asdict(dataclasses.replace(base, output=str(tmp_path / "two")))
    cut = dataclasses.asdict(dataclasses.replace(base, output=str(tmp_path / "cut")))
    (r1,) = run_distributed_test(_train, 1, one)
    r2 = run_distributed_test(_train, 2, two)[0]
    (r3,) = run_distributed_test(_train, 1, cut, 3)
    assert r1["main"]["deepspeed"]["gradient_accumulation_steps"] == 2
    assert r2["main"]["deepspeed"]["gradient_accumulation_steps"] == 1
    h1, h2, h3 = _heads(tmp_path / "one"), _heads(tmp_path / "two"), _heads(tmp_path / "cut")
    for k in h1:
        np.testing.assert_allclose(h2[k], h1[k], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(h3[k], h1[k], rtol=0, atol=1e-6)
    m1 = [x["mse"] for x in r1["main"]["history"]]
    m2 = [x["mse"] for x in r2["main"]["history"]]
    np.testing.assert_allclose(m2, m1, rtol=1e-3)
    assert r3["main"]["steps"] == r1["main"]["steps"] == 8
    assert (tmp_path / "cut_train" / "main" / "checkpoints" / "latest").read_text().strip() == "step0000008"
    assert (tmp_path / "one" / "encoder" / "model.safetensors").exists()  # full mode saves the tuned encoder
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "config.json",
        "encoder",
        "heads.safetensors",
        "manifest.json",
        "metrics.json",
    ]  # nothing else


def test_bad_oracle_stores_are_refused(world, tmp_path):
    h, info = world["h"], world["info"]
    docs, labels, _, _ = synthetic(h, 20, 4, seed=3)
    oracle_store(tmp_path / "other", "0123456789abcdef", docs, labels)
    with pytest.raises(ManifestMismatch, match="dataset_fingerprint"):
        load_stores([str(tmp_path / "other")], info.fingerprint, info.num_docs)
    bad = labels.copy()
    bad[3, 2] = np.nan
    oracle_store(tmp_path / "nan", info.fingerprint, docs, bad)
    with pytest.raises(GMError, match="NaN"):
        load_stores([str(tmp_path / "nan")], info.fingerprint)
    oracle_store(tmp_path / "ok", info.fingerprint, docs, labels)
    oracle_store(tmp_path / "t3", info.fingerprint, docs[:, :3], labels[:, :3])
    with pytest.raises(GMError, match="T=3"):
        load_stores([str(tmp_path / "ok"), str(tmp_path / "t3")], info.fingerprint)
    oracle_store(tmp_path / "stage1", info.fingerprint, docs, labels, stage=1)
    with pytest.raises(GMError, match="same checkpoint"):
        load_stores([str(tmp_path / "ok"), str(tmp_path / "stage1")], info.fingerprint)
    oracle_store(tmp_path / "ref1", info.fingerprint, docs, labels, reference="ref1")
    with pytest.raises(GMError, match="same --gm-oracle-ref"):
        load_stores([str(tmp_path / "ok"), str(tmp_path / "ref1")], info.fingerprint)
    oracle_store(tmp_path / "range", info.fingerprint, docs + 1000, labels)
    with pytest.raises(GMError, match="out of range"):
        load_stores([str(tmp_path / "range")], info.fingerprint, info.num_docs)
    with pytest.raises(GMError, match="not found"):
        load_stores([str(tmp_path / "missing")], info.fingerprint)
    both = load_stores([str(tmp_path / "ok"), str(tmp_path / "ok")], info.fingerprint)
    assert len(both) == 40 and both.store.tolist() == [0] * 20 + [1] * 20


def test_deepspeed_config_checks(tmp_path):
    cfg = TrainConfig(data_path="x", oracle=["y"], output="z", train_batch_size=10, micro_batch_size=4)
    with pytest.raises(GMError, match="not a multiple"):
        deepspeed_config(cfg, 1)
    (tmp_path / "ds.json").write_text('{"optimizer": {"type": "Adam"}}')
    with pytest.raises(GMError, match="remove the 'optimizer' section"):
        deepspeed_config(
            dataclasses.replace(cfg, train_batch_size=8, deepspeed_config=str(tmp_path / "ds.json")), 1
        )
    ds = deepspeed_config(dataclasses.replace(cfg, train_batch_size=16, zero_stage=2), 2)
    assert ds["gradient_accumulation_steps"] == 2 and ds["zero_optimization"]["stage"] == 2
    with pytest.raises(GMError, match="--mode"):
        dataclasses.replace(cfg, mode="slow").validate()


@pytest.mark.slow
def test_cli_errors_are_one_line_and_write_nothing(world, tmp_path):
    h, info = world["h"], world["info"]
    docs, labels, _, _ = synthetic(h, 20, 4, seed=4)
    oracle_store(tmp_path / "other", "0123456789abcdef", docs, labels)
    oracle_store(tmp_path / "ok", info.fingerprint, docs, labels)

    def run(store, encoder):
        cmd = [
            sys.executable,
            str(REPO / "tools" / "train_influence_model.py"),
            "--data-path",
            info.prefix,
            "--oracle",
            str(store),
            "--output",
            str(tmp_path / "out"),
            "--encoder",
            str(encoder),
            "--no-progress",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        return proc.stderr.strip().splitlines()[-1]

    last = run(tmp_path / "other", world["enc"])
    assert last.startswith("error: ") and "dataset_fingerprint" in last and str(tmp_path / "other") in last
    last = run(tmp_path / "ok", tmp_path / "noenc")
    assert last.startswith("error: ") and "no HF encoder here" in last
    assert not (tmp_path / "out").exists() and not (tmp_path / "out_train").exists()


def _cache(rank, world_size, enc, prefix, docs, folder, fingerprint):
    from megatron_gm.influence import InfluenceModel, ModelConfig
    from megatron_gm.influence.embed_cache import cached_embeddings

    torch.set_num_threads(1)
    model = InfluenceModel(ModelConfig(str(enc)))
    return cached_embeddings("enc", model, prefix, docs, folder, 16, fingerprint, False, per_shard=16)


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_embedding_cache_split_across_two_ranks(world, tmp_path):
    """Fast mode's cache: ranks embed alternate shards; every rank gets all vectors, equal to one process's."""
    info, h = world["info"], world["h"]
    docs = np.arange(5, 75, dtype=np.int64)  # 5 shards of 16 (the last one short)
    out = run_distributed_test(_cache, 2, world["enc"], info.prefix, docs, tmp_path, info.fingerprint)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], h[docs].astype(np.float32))
    folder = next(tmp_path.glob("embeddings-*"))
    assert len(list(folder.glob("*.done"))) == 5
