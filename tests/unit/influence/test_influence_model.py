"""The influence model itself: formula, batching, pooling, deterministic scoring, save/load, decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megatron_gm.errors import GMError, ManifestMismatch
from megatron_gm.influence import (
    InfluenceModel,
    ModelConfig,
    RelationHeads,
    document_texts,
    load_influence_model,
    save_influence_model,
    score_texts,
)
from megatron_gm.influence.model import default_encoder_path
from megatron_gm.manifest import Manifest
from tests.influence_fixtures import tiny_encoder, token_pool

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny")


@pytest.fixture(scope="module")
def model(encoder):
    torch.manual_seed(0)
    return InfluenceModel(ModelConfig(str(encoder))).eval()


def _texts(n: int, seed: int = 0, lo: int = 3, hi: int = 150) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(map(str, rng.integers(0, 64, size=int(rng.integers(lo, hi))))) for _ in range(n)]


def test_formula_against_hand_computed_example():
    # h0=(1,0), h1=(0,1), h2=(.6,.8); w=(3,4), b=-2 -> s=(1,2,3); alpha=2, tau=.5
    # I0 = 1;  I1 = 2*2*(1-0/.5) = 4;  I2 = 3*2*(1/2)*[(1-.6/.5) + (1-.8/.5)] = 3*(-0.8) = -2.4
    heads = RelationHeads(2)
    with torch.no_grad():
        heads.head.weight.copy_(torch.tensor([[3.0, 4.0]]))
        heads.head.bias.fill_(-2.0)
        heads.alpha.fill_(2.0)
        heads.tau.fill_(0.5)
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    torch.testing.assert_close(heads.individual(h), torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(heads(h), torch.tensor([[1.0, 4.0, -2.4]]))
    heads.relation = False
    torch.testing.assert_close(heads(h), torch.tensor([[1.0, 2.0, 3.0]]))


def test_batch_of_three_equals_three_batches_of_one():
    torch.manual_seed(1)
    heads = RelationHeads(8)
    with torch.no_grad():
        heads.alpha.fill_(1.7)
        heads.tau.fill_(0.6)
    h = torch.nn.functional.normalize(torch.randn(3, 5, 8), dim=-1)
    y = torch.randn(3, 5)
    batch = heads(h)
    single = torch.cat([heads(h[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-6)
    loss_batch = torch.nn.functional.mse_loss(batch, y)
    loss_single = torch.stack(
        [torch.nn.functional.mse_loss(heads(h[i : i + 1]), y[i : i + 1]) for i in range(3)]
    )
    torch.testing.assert_close(loss_batch, loss_single.mean())
    # the reference code's bug (one mask over the whole batch) would differ: the test can tell
    flat = heads(h.reshape(1, 15, 8)).reshape(3, 5)
    assert not torch.allclose(flat[1:], batch[1:], atol=1e-3)


def test_full_model_batch_of_three_equals_three_batches(model):
    texts = _texts(3 * 4, seed=2)
    with torch.no_grad():
        batch = model(texts, (3, 4))
        single = torch.cat([model(texts[4 * i : 4 * i + 4], (1, 4)) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)


def test_chunked_cls_pooling_is_mean_of_normalised_chunks(model):
    long_text = _texts(1, seed=3, lo=200, hi=201)[0]  # > 64-token chunks of the tiny encoder: 4 chunks
    chunks, owner = model.chunk_ids([long_text, ""])
    assert owner == [0, 0, 0, 0, 1] and all(len(c) <= model.chunk_len for c in chunks)
    assert chunks[-1] == [model.tokenizer.cls_token_id, model.tokenizer.sep_token_id]
    with torch.no_grad():
        h = model.embed([long_text])[0]
        manual = []
        for c in chunks[:4]:
            ids = torch.tensor([c])
            cls = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, 0]
            manual.append(cls / cls.norm())
    torch.testing.assert_close(h, torch.stack(manual).mean(0), rtol=1e-4, atol=1e-5)
    assert h.norm() < 1.0  # not renormalised


def test_score_texts_does_not_depend_on_batch_mates(model):
    texts = _texts(20, seed=4)
    h, s = score_texts(model, texts, batch_size=4)
    assert h.dtype == np.float32 and s.dtype == np.float32 and h.shape == (20, model.hidden_size)
    for i in (0, 7, 19):
        hi, si = score_texts(model, [texts[i]], batch_size=4)
        assert np.array_equal(hi[0], h[i]) and si[0] == s[i]
    rev_h, rev_s = score_texts(model, texts[::-1], batch_size=4)
    assert np.array_equal(rev_h[::-1], h) and np.array_equal(rev_s[::-1], s)
    w = model.heads.head.weight.detach().double().numpy().ravel()
    np.testing.assert_allclose(s, h.astype(np.float64) @ w + float(model.heads.head.bias), rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(model.embed(texts).numpy(), h, atol=1e-5)


def test_save_load_round_trip_and_refusals(model, encoder, tmp_path):
    with torch.no_grad():
        model.heads.alpha.fill_(1.25)
        model.heads.tau.fill_(0.75)
    texts = _texts(5, seed=5)
    h, s = score_texts(model, texts, 8)
    for fine_tuned in (False, True):
        out = tmp_path / f"m{int(fine_tuned)}"
        save_influence_model(
            out, model, Manifest("influence_model", "fp1", inputs={"oracle_0": "abc"}), fine_tuned=fine_tuned
        )
        assert (out / "encoder").is_dir() == fine_tuned
        assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))  # safetensors only
        loaded, manifest = load_influence_model(out, dataset_fingerprint="fp1")
        assert manifest.inputs == {"oracle_0": "abc"}
        assert loaded.alpha == pytest.approx(1.25) and loaded.tau == pytest.approx(0.75)
        h2, s2 = score_texts(loaded, texts, 8)
        np.testing.assert_array_equal(h2, h)
        np.testing.assert_array_equal(s2, s)
    with pytest.raises(ManifestMismatch, match="dataset_fingerprint"):
        load_influence_model(tmp_path / "m0", dataset_fingerprint="other")
    # a frozen-encoder model refuses an encoder whose files changed
    changed = tmp_path / "enc_copy"
    import shutil

    shutil.copytree(encoder, changed)
    cfg = json.loads((tmp_path / "m0" / "config.json").read_text())
    cfg["model"]["encoder_path"] = str(changed)
    (tmp_path / "m0" / "config.json").write_text(json.dumps(cfg))
    load_influence_model(tmp_path / "m0")  # identical copy: fine
    conf = json.loads((changed / "config.json").read_text())
    conf["layer_norm_eps"] = 1e-5
    (changed / "config.json").write_text(json.dumps(conf))
    with pytest.raises(GMError, match="encoder files changed"):
        load_influence_model(tmp_path / "m0")


def test_missing_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(GMError, match=r"no HF encoder here.*--encoder"):
        InfluenceModel(ModelConfig(str(tmp_path / "nope")))
    with pytest.raises(GMError, match="influence model not found"):
        load_influence_model(tmp_path / "nomodel")


def test_real_minilm_from_the_package():
    path = default_encoder_path()
    model = InfluenceModel(ModelConfig()).eval()
    assert model.config.encoder_path == path and model.hidden_size == 384 and model.chunk_len == 512
    texts = [
        "The cat sat quietly on the warm mat by the fire.",
        "A kitten was sitting on a rug near the fireplace.",
        "Quarterly earnings at the bank fell sharply as interest rates rose.",
    ]
    h, _ = score_texts(model, texts, batch_size=4)
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), 1.0, atol=1e-5)  # one chunk each
    assert h[0] @ h[1] > h[0] @ h[2] + 0.1


def test_document_texts_decodes_with_the_run_tokenizer(tmp_path):
    import sentencepiece as spm

    from megatron_gm.data.indexed import write_indexed_dataset
    from megatron_gm.data.tokenizer import build_tokenizer, tokenizer_spec

    rng = np.random.default_rng(0)
    words = "river city market council season album station energy report music garden winter".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 30)))) + " — café 12." for _ in range(60)]
    (tmp_path / "corpus.txt").write_text("\n".join(texts))
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    model_file = str(tmp_path / "sp.model")
    tok = build_tokenizer("GPTSentencePieceTokenizer", model_file)
    spec = tokenizer_spec("GPTSentencePieceTokenizer", model_file, None)
    info = write_indexed_dataset(
        tmp_path / "pool", [tok.tokenize(t) for t in texts], tokenizer=spec, source="t"
    )
    assert document_texts(info.prefix, [5, 0, 59]) == [texts[5], texts[0], texts[59]]
    with pytest.raises(GMError, match="out of range"):
        document_texts(info.prefix, [60])
    # the tokenizer model at the recorded path changed: decoding would be wrong, so refuse
    other = tmp_path / "pool2"
    write_indexed_dataset(other, [tok.tokenize(t) for t in texts[:3]], tokenizer=spec, source="t")
    with open(model_file, "ab") as f:
        f.write(b"x")
    with pytest.raises(GMError, match="differs from the tokenizer"):
        document_texts(other, [0])


def test_document_texts_null_tokenizer(tmp_path):
    info = token_pool(tmp_path / "p", 4)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(info.prefix)
    assert document_texts(info.prefix, [2]) == [" ".join(map(str, ds[2].tolist()))]
