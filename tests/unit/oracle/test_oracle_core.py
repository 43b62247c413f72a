"""Oracle pieces that need no Megatron launch: reference set, trajectories, snapshot, probe loop, store."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from megatron_gm.data.reference import build_reference, length_buckets, pad_multiple
from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.megatron.samples import document_sample
from megatron_gm.oracle.collect import Group, collect, probe_trajectory, step_seed
from megatron_gm.oracle.snapshot import StateSnapshot
from megatron_gm.oracle.store import label_stats, load_oracle
from megatron_gm.oracle.trajectories import build_source, random_trajectory
from tests.distributed import run_distributed_test
from tests.oracle_fixtures import (
    SEQ,
    TorchEngine,
    build_training,
    masked_mean,
    reference_from_tokens,
    reference_loss,
    write_pool,
)

torch.set_num_threads(1)


def byte_tokenize(text: str) -> list[int]:
    return list(text.encode())


def write_jsonl(path, records, gz=False):
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    d = tmp_path_factory.mktemp("pool")
    info, docs = write_pool(d / "pool")
    return info, docs, IndexedDataset(str(d / "pool"))


# -- reference set ---------------------------------------------------------------------------------------


def test_reference_prompt_masking_and_packing(tmp_path):
    recs = [
        {"context": "the cat sat on the", "target": "mat", "text": "the cat sat on the mat"},
        {"context": "x" * 40, "target": "yz"},  # longer than a sample: cut from the left, target kept
        {"text": "abcdefghij" * 3},  # 30 chars + EOD = 31 tokens -> 2 packed samples of 20+1
        "not json",
        {"other": 1},
    ]
    ref = build_reference(write_jsonl(tmp_path / "r.jsonl.gz", recs, gz=True), byte_tokenize, 0, 20, 99, 0)
    assert len(ref) == 4 and ref.records == {"prompt": 2, "text": 1, "json": 1, "no_text": 1}
    # sample 0: labels count " mat" (4 bytes); the first counted label predicts the byte after "the"
    t0, m0 = ref.tokens[0], ref.mask[0]
    assert m0.sum() == 4 and bytes(t0[1:][m0 > 0].tolist()) == b" mat"
    t1, m1 = ref.tokens[1], ref.mask[1]
    assert bytes(t1.tolist()).endswith(b"x yz") and bytes(t1[1:][m1 > 0].tolist()) == b" yz"
    # packed text: every token counts, EOD (0) included, padding does not
    assert ref.mask[2].sum() == 20 and ref.mask[3].sum() == 10
    assert ref.num_tokens == 4 + 3 + 30
    assert bytes(ref.tokens[3][:11].tolist()) == b"abcdefghij\x00"


def _natural_reference(tmp_path, layout="natural"):
    recs = [
        {"context": "the cat sat on the", "target": "mat"},  # 22 bytes: cut to 21 from the left
        {"text": "abcdefghij" * 3},  # 30 bytes + EOD: its own windows of 21 and 11 tokens
        {"text": "hello"},  # 5 bytes + EOD: one example of 6 tokens, never joined to the one above
    ]
    return build_reference(
        write_jsonl(tmp_path / "n.jsonl", recs), byte_tokenize, 0, 20, 99, 0, layout=layout
    )


def test_reference_natural_layout_keeps_examples_apart(tmp_path):
    ref = _natural_reference(tmp_path)
    assert ref.layout == "natural" and ref.records == {"prompt": 1, "text": 2}
    assert ref.sample_lengths.tolist() == [21, 21, 11, 6]
    assert bytes(ref.tokens[0].tolist()) == b"he cat sat on the mat"
    assert bytes(ref.tokens[0][1:][ref.mask[0] > 0].tolist()) == b" mat"
    assert bytes(ref.tokens[2][:11].tolist()) == b"abcdefghij\x00" and ref.mask[2].sum() == 10
    assert bytes(ref.tokens[3][:6].tolist()) == b"hello\x00" and ref.tokens[3][6:].sum() == 0
    assert ref.mask[3].tolist() == [1.0] * 5 + [0.0] * 15
    assert ref.num_tokens == 4 + 20 + 10 + 5 and ref.evaluated_tokens == 20 + 20 + 10 + 5
    packed = _natural_reference(tmp_path, layout="packed")
    # the old layout joins the records: its last window is "abcdefghij<EOD>hello<EOD>", 16 labels
    assert len(packed) == 3 and packed.mask[2].sum() == 16
    assert bytes(packed.tokens[2][:17].tolist()) == b"abcdefghij\x00hello\x00"
    assert packed.sample_lengths.tolist() == [21] * 3 and packed.evaluated_tokens == 60
    assert packed.digest != ref.digest
    with pytest.raises(GMError, match="--gm-oracle-ref-layout 'loose'"):
        _natural_reference(tmp_path, layout="loose")


def test_length_buckets_pad_each_micro_batch_to_its_longest(tmp_path):
    ref = _natural_reference(tmp_path)
    buckets = length_buckets(ref, micro_batch_size=2, multiple=8)
    # sorted lengths 6, 11 | 21, 21: labels 10 -> 16 (a multiple of 8), labels 20 -> 20 (seq_length)
    assert [(L, len(b)) for L, b in buckets] == [(16, 1), (20, 1)]
    ((t, m),) = buckets[0][1]
    assert t.shape == (2, 17) and m.shape == (2, 16)
    assert bytes(t[0][:6].tolist()) == b"hello\x00" and m[0].sum() == 5 and m[1].sum() == 10
    buckets = length_buckets(ref, micro_batch_size=3, multiple=8)
    assert [(L, len(b)) for L, b in buckets] == [(20, 2)]
    assert buckets[0][1][1][1].sum(axis=1).tolist() == [20, 0, 0]  # empty rows fill the last micro-batch
    packed = length_buckets(_natural_reference(tmp_path, "packed"), micro_batch_size=2)
    assert [(L, len(b)) for L, b in packed] == [(20, 2)]
    assert pad_multiple() == 8 and pad_multiple(sequence_parallel_tp=3) == 24 and pad_multiple(1, 8) == 16


def test_length_buckets_give_the_padded_loss(tmp_path):
    """Right padding under a causal model: the bucketed pass sums the same token losses on fewer positions."""
    model, _, _ = build_training(seed=3, warm_steps=0)
    model.eval()
    ref = _natural_reference(tmp_path)
    ref.tokens = ref.tokens % 64  # TinyLM's vocabulary
    total = count = 0.0
    with torch.no_grad():
        for _, batches in length_buckets(ref, micro_batch_size=2, multiple=8):
            for t, m in batches:
                losses = model.token_losses(torch.from_numpy(t)).double().numpy()
                total += float((losses * m).sum())
                count += float(m.sum())
    assert count == 39
    assert total / count == pytest.approx(reference_loss(model, ref), rel=1e-6)


def test_reference_subset_is_seeded_and_hashed(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": f"document number {i} " * 5} for i in range(30)])
    a = build_reference(path, byte_tokenize, 0, 16, 8, seed=1)
    b = build_reference(path, byte_tokenize, 0, 16, 8, seed=1)
    c = build_reference(path, byte_tokenize, 0, 16, 8, seed=2)
    assert len(a) == 8 and a.digest == b.digest and np.array_equal(a.tokens, b.tokens)
    assert a.digest != c.digest
    full = build_reference(path, byte_tokenize, 0, 16, 10**6, seed=1)
    assert len(full) > 8 and all(any(np.array_equal(r, f) for f in full.tokens) for r in a.tokens)


def test_reference_without_usable_tokens_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "  "}, {"context": "a", "target": ""}, "{]"])
    with pytest.raises(GMError, match=r"bad.jsonl: no usable reference tokens"):
        build_reference(path, byte_tokenize, 0, 16, 8, 0)
    with pytest.raises(GMError, match="input not found"):
        build_reference(str(tmp_path / "missing.jsonl"), byte_tokenize, 0, 16, 8, 0)


# -- samples and trajectories ----------------------------------------------------------------------------


def test_document_sample_pads_short_documents(pool):
    _, docs, ds = pool
    t, m = document_sample(ds, 0, SEQ)  # 30 tokens: first SEQ + 1
    assert np.array_equal(t, docs[0][: SEQ + 1]) and m.sum() == SEQ
    short = next(i for i, d in enumerate(docs) if 2 <= len(d) < SEQ)
    t, m = document_sample(ds, short, SEQ)
    n = len(docs[short])
    assert (
        np.array_equal(t[:n], docs[short]) and not t[n:].any() and m.sum() == n - 1 and not m[n - 1 :].any()
    )


def test_random_trajectories_depend_only_on_seed_and_id(pool):
    info, docs, ds = pool
    src = build_source("random", T=4, num_trajectories=50, seed=3, doc_lengths=ds.sequence_lengths,
                       dataset_fingerprint=info.fingerprint)  # fmt: skip
    whole = src.documents(range(50))
    assert np.array_equal(src.documents([7, 3]), whole[[7, 3]])
    assert all(len(set(row)) == 4 for row in whole) and 5 not in whole  # no repeats, no 1-token doc
    assert np.array_equal(whole[7], random_trajectory(src.candidates, 4, 3, 7))
    other = build_source("random", T=4, num_trajectories=50, seed=4, doc_lengths=ds.sequence_lengths,
                         dataset_fingerprint=info.fingerprint)  # fmt: skip
    assert not np.array_equal(other.documents(range(50)), whole)
    assert step_seed(1, 2, 3) == step_seed(1, 2, 3) != step_seed(1, 3, 2)


def test_candidates_and_trajectory_file(pool, tmp_path):
    from megatron_gm.oracle.trajectories import save_trajectories

    info, _, ds = pool
    kw = dict(seed=0, doc_lengths=ds.sequence_lengths, dataset_fingerprint=info.fingerprint)
    np.save(tmp_path / "cand.npy", np.array([2, 3, 4, 5, 6, 9]))
    src = build_source("random", T=3, num_trajectories=20, candidates=str(tmp_path / "cand.npy"), **kw)
    assert set(src.documents(range(20)).ravel()) <= {2, 3, 4, 6, 9}
    table = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.int64)
    save_trajectories(tmp_path / "traj", table, Manifest("trajectories", info.fingerprint))
    src = build_source("file", T=None, num_trajectories=None, trajectory_file=str(tmp_path / "traj"), **kw)
    assert src.T == 3 and src.num_trajectories == 3 and np.array_equal(src.documents([2, 0]), table[[2, 0]])
    with pytest.raises(GMError, match="T=3, but --gm-oracle-T is 4"):
        build_source("file", T=4, num_trajectories=None, trajectory_file=str(tmp_path / "traj"), **kw)
    with pytest.raises(GMError, match="another dataset|made for"):
        build_source("file", T=None, num_trajectories=None, trajectory_file=str(tmp_path / "traj"),
                     **{**kw, "dataset_fingerprint": "other"})  # fmt: skip
    with pytest.raises(GMError, match=r"T >= 1"):
        build_source("random", T=0, num_trajectories=5, **kw)
    with pytest.raises(GMError, match="fewer than T=9"):
        build_source("random", T=9, num_trajectories=5, candidates=str(tmp_path / "cand.npy"), **kw)


# -- snapshot and probe -----------------------------------------------------------------------------------


def test_snapshot_restores_params_adam_state_and_schedule(pool):
    _, _, ds = pool
    model, opt, sched = build_training(dataset=ds)
    snap = StateSnapshot(model.parameters(), [opt], [sched])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = opt.state_dict()
    lr = opt.param_groups[0]["lr"]
    eng = TorchEngine(model, opt, sched, ds, reference_from_tokens())
    for d in (1, 2, 3):
        eng.train_step(d, 1)
    assert opt.param_groups[0]["lr"] != lr and not torch.equal(before["out.weight"], model.out.weight)
    snap.restore()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    after = opt.state_dict()
    for p, st in opt_before["state"].items():
        for k, v in st.items():
            assert torch.equal(v, after["state"][p][k]), k
    assert opt.param_groups[0]["lr"] == lr and sched.last_epoch == 3


def test_label_increment_by_hand(pool):
    """Stored label of step 1 == L_ref after one explicit AdamW step (clip, LR) minus L_ref before."""
    _, _, ds = pool
    ref = reference_from_tokens()
    model, opt, sched = build_training(dataset=ds)
    eng = TorchEngine(model, opt, sched, ds, ref, clip=0.05)
    base = eng.reference_loss()
    labels, losses = probe_trajectory(eng, [11, 12], base, seed=5, traj_id=0)
    again, _ = probe_trajectory(eng, [11, 12], base, seed=5, traj_id=0)
    assert np.array_equal(labels, again)  # restore is exact

    # by hand, on a fresh copy of the same training state
    model2, opt2, sched2 = build_training(dataset=ds)
    before = reference_loss(model2, ref)
    torch.manual_seed(step_seed(5, 0, 0))
    tokens, mask = document_sample(ds, 11, SEQ)
    loss = masked_mean(model2.token_losses(torch.from_numpy(tokens)[None]), torch.from_numpy(mask)[None])
    opt2.zero_grad()
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model2.parameters()))
    assert norm > 0.05  # clipping is active in this step
    for p in model2.parameters():
        p.grad.mul_(0.05 / (norm + 1e-6))
    lr, wd = opt2.param_groups[0]["lr"], 0.1
    b1, b2 = 0.9, 0.999
    with torch.no_grad():
        for p in model2.parameters():
            st = opt2.state[p]
            step = float(st["step"]) + 1
            m = b1 * st["exp_avg"] + (1 - b1) * p.grad
            v = b2 * st["exp_avg_sq"] + (1 - b2) * p.grad**2
            p.mul_(1 - lr * wd)
            p.sub_(lr * (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + 1e-8))
    after = reference_loss(model2, ref)
    assert losses[0] == pytest.approx(before, abs=1e-12)
    assert labels[0] == pytest.approx(after - before, rel=1e-4, abs=1e-7)
    assert labels[0] != 0 and np.sign(labels[0]) == np.sign(after - before)


# -- collection: store, resume, data parallel --------------------------------------------------------------


def _manifest(info, src) -> Manifest:
    return Manifest("oracle", info.fingerprint, stage=0, iteration=3, seed=src.seed,
                    config={**src.manifest_config(), "reference": "synthetic"}, inputs=dict(src.inputs))  # fmt: skip


def _collect(prefix, out, dp_rank=0, dp_size=1, stop_after=None):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_gm.data.indexed import load_dataset_info

    torch.set_num_threads(1)
    info = load_dataset_info(prefix)
    ds = IndexedDataset(str(prefix))
    src = build_source("random", T=3, num_trajectories=7, seed=11, doc_lengths=ds.sequence_lengths,
                       dataset_fingerprint=info.fingerprint)  # fmt: skip
    model, opt, sched = build_training(dataset=ds)
    eng = TorchEngine(model, opt, sched, ds, reference_from_tokens())
    group = Group(rank=dp_rank, dp_rank=dp_rank, dp_size=dp_size, writer=True)
    res = collect(eng, src, str(out), _manifest(info, src), 2, group, progress=False, stop_after=stop_after)
    return res.trajectories, eng.steps


def _dp_worker(rank, world, prefix, out):
    return _collect(prefix, out, rank, world)


@pytest.mark.slow
def test_collect_resume_and_data_parallel_give_one_store(pool, tmp_path):
    info, _, ds = pool
    prefix = info.prefix
    n, steps = _collect(prefix, tmp_path / "whole")
    assert (n, steps) == (7, 21)
    whole = load_oracle(tmp_path / "whole", dataset_fingerprint=info.fingerprint)
    assert (
        whole.traj_id.tolist() == list(range(7)) and whole.T == 3 and whole.manifest.config["num_shards"] == 4
    )
    assert np.allclose(whole.labels, np.diff(whole.ref_loss, axis=1), atol=1e-5)
    assert np.allclose(whole.ref_loss[:, 0], whole.ref_loss[0, 0])
    assert label_stats(whole)["count"] == 21

    # stop after one shard, rerun: the rest is probed, nothing twice, same store
    assert _collect(prefix, tmp_path / "resumed", stop_after=1) == (2, 6)
    with pytest.raises(GMError, match="unfinished"):
        load_oracle(tmp_path / "resumed")
    assert _collect(prefix, tmp_path / "resumed") == (5, 15)
    assert _collect(prefix, tmp_path / "resumed") == (0, 0)
    resumed = load_oracle(tmp_path / "resumed")
    for k in ("traj_id", "documents", "labels", "ref_loss"):
        assert np.array_equal(getattr(whole, k), getattr(resumed, k)), k

    # two data-parallel groups split the shards and produce the same store
    outs = run_distributed_test(_dp_worker, 2, prefix, tmp_path / "dp")
    assert sorted(o[0] for o in outs) == [3, 4]
    dp = load_oracle(tmp_path / "dp")
    for k in ("traj_id", "documents", "labels", "ref_loss"):
        assert np.array_equal(getattr(whole, k), getattr(dp, k)), k


def test_store_of_another_run_is_refused(pool, tmp_path):
    info, _, _ = pool
    _collect(info.prefix, tmp_path / "s", stop_after=1)
    m = Manifest.load(tmp_path / "s" / "manifest.json")
    m.seed = 99
    m.save(tmp_path / "s" / "manifest.json")
    with pytest.raises(GMError, match="different run"):
        _collect(info.prefix, tmp_path / "s")


def test_flags_left_out_are_taken_from_the_checkpoint():
    """Stage 1's checkpoint: --gm-stage-iters, --train-iters, optimizer and schedule flags come along."""
    import argparse

    from megatron_gm.megatron.checkpoint import CheckpointInfo
    from megatron_gm.megatron.checkpoint_args import inherit_flags

    saved = argparse.Namespace(
        lr=2e-3, min_lr=2e-4, clip_grad=1.0, weight_decay=0.1, weight_decay_incr_style="constant",
        adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, optimizer="adam", lr_decay_style="cosine",
        gm_stage=1, gm_stage_iters="150", train_iters=300, train_samples=None, lr_decay_iters=300,
        lr_warmup_fraction=None, lr_warmup_iters=10, bf16=True, fp16=False, eod_mask_loss=False,
    )  # fmt: skip
    ckpt = CheckpointInfo("ck/iter_0000300", 300, saved, True, True)
    extra = inherit_flags(["--num-layers", "2", "--clip-grad=0.5", "--gm-stage", "1"], ckpt)
    pairs = dict(zip(extra[::2], extra[1::2]))
    assert "--clip-grad" not in extra and "--gm-stage" not in extra  # given on the command line
    assert pairs["--gm-stage-iters"] == "150" and pairs["--train-iters"] == "300"
    assert (
        pairs["--lr-decay-iters"] == "300"
        and pairs["--lr-warmup-iters"] == "10"
        and pairs["--adam-beta2"] == "0.95"
    )
    assert extra[-1] == "--bf16" and "--fp16" not in extra and "--eod-mask-loss" not in extra
    extra = inherit_flags(["--train-samples", "9", "--lr-warmup-fraction", "0.1"], ckpt)
    assert (
        "--train-iters" not in extra and "--lr-warmup-iters" not in extra and "--lr-decay-iters" not in extra
    )


def test_architecture_and_padded_vocabulary_must_match_the_checkpoint():
    """check_architecture: a differing flag or padded vocabulary (Megatron loads both silently) is refused."""
    import argparse

    from megatron_gm.megatron.checkpoint import CheckpointInfo
    from megatron_gm.megatron.checkpoint_args import check_architecture

    saved = argparse.Namespace(num_layers=2, hidden_size=64, padded_vocab_size=256)
    ckpt = CheckpointInfo("ck/iter_0000010", 10, saved, True, True)
    run = argparse.Namespace(num_layers=2, hidden_size=64, make_vocab_size_divisible_by=128,
                             tensor_model_parallel_size=1)  # fmt: skip
    check_architecture(run, ckpt, vocab_size=200)  # 200 -> 256: fits
    run.tensor_model_parallel_size = 3  # 200 -> multiple of 384
    with pytest.raises(GMError, match=r"padded vocabulary 256 in the checkpoint, 384 in this run"):
        check_architecture(run, ckpt, vocab_size=200)
    run.tensor_model_parallel_size, run.hidden_size = 1, 32
    with pytest.raises(GMError, match=r"hidden_size: checkpoint 64, this run 32"):
        check_architecture(run, ckpt, vocab_size=200)


def test_wsd_schedule_flags_are_taken_from_the_checkpoint():
    """A WSD checkpoint: Megatron refuses --lr-decay-style WSD without the cooldown length."""
    import argparse

    from megatron_gm.megatron.checkpoint import CheckpointInfo
    from megatron_gm.megatron.checkpoint_args import inherit_flags

    saved = argparse.Namespace(
        lr=3e-3, min_lr=3e-4, lr_decay_style="WSD", lr_wsd_decay_style="linear", lr_wsd_decay_iters=56,
        lr_wsd_decay_samples=None, gm_stage_iters="93,", train_iters=279, train_samples=None, lr_decay_iters=279,
        lr_warmup_fraction=None, lr_warmup_iters=10,
    )  # fmt: skip
    extra = inherit_flags(["--num-layers", "1"], CheckpointInfo("ck/iter_0000093", 93, saved, True, True))
    pairs = dict(zip(extra[::2], extra[1::2]))
    assert pairs["--lr-decay-style"] == "WSD" and pairs["--lr-wsd-decay-iters"] == "56"
    assert pairs["--lr-wsd-decay-style"] == "linear" and pairs["--gm-stage-iters"] == "93,"
