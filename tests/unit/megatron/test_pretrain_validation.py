"""validate_gm_args: selections that are missing, corrupt or made for another dataset are refused."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from megatron_gm.data.indexed import write_indexed_dataset
from megatron_gm.data.selection import save_selection
from megatron_gm.errors import GMError, ManifestMismatch
from megatron_gm.manifest import Manifest
from megatron_gm.megatron.args import validate_gm_args

SPEC = {"type": "NullTokenizer", "model": None, "model_sha256": None, "vocab_size": 64}


def _pool(prefix, seed, n=12):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 63, rng.integers(5, 30)) for _ in range(n)]
    return write_indexed_dataset(prefix, docs, tokenizer=SPEC, source=f"test{seed}")


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    d = tmp_path_factory.mktemp("pools")
    a, b = _pool(d / "a", 0), _pool(d / "b", 1)
    sel_a = save_selection(d / "sel_a", np.array([1, 4, 7]), Manifest("selection", a.fingerprint, stage=1))
    sel_b = save_selection(d / "sel_b", np.array([1, 4, 7]), Manifest("selection", b.fingerprint, stage=1))
    return d, a, b, sel_a, sel_b


def _args(prefix, selection, **kw):
    base = dict(
        data_path=[str(prefix)],
        train_data_path=None,
        gm_selection=str(selection),
        gm_stage=1,
        gm_stage_iters="4",
        gm_record_samples=None,
        gm_data_fingerprint_check=True,
        train_iters=10,
        rampup_batch_size=None,
        phase_transition_iterations=None,
        save="ckpt",
        dataloader_type="single",
        mock_data=False,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_selection_for_this_dataset_is_accepted(pools):
    d, a, _, sel_a, _ = pools
    args = _args(a.prefix, sel_a)
    validate_gm_args(args)
    assert (args.gm_stage_start_iter, args.gm_stage_end_iter) == (4, 8)
    assert len(args.gm_selection_digest) == 16


def test_selection_from_another_checkpoint_is_warned_about(pools, tmp_path, caplog):
    _, a, _, _, _ = pools
    sel = save_selection(
        tmp_path / "sel", np.array([2, 3]), Manifest("selection", a.fingerprint, iteration=2)
    )
    with caplog.at_level("WARNING", logger="megatron_gm"):
        validate_gm_args(_args(a.prefix, sel))  # stage 1 starts at iteration 4
    assert "made from the checkpoint at iteration 2, but stage 1 starts at iteration 4" in caplog.text


def test_selection_for_another_dataset_is_refused(pools):
    _, a, b, _, sel_b = pools
    with pytest.raises(ManifestMismatch) as e:
        validate_gm_args(_args(a.prefix, sel_b))
    msg = str(e.value)
    assert "\n" not in msg and b.fingerprint in msg and a.fingerprint in msg and "sel_b" in msg
    # the check can be switched off (index range still checked)
    validate_gm_args(_args(a.prefix, sel_b, gm_data_fingerprint_check=False))


def test_missing_and_corrupt_selections_are_clear_errors(pools, tmp_path):
    d, a, _, sel_a, _ = pools
    with pytest.raises(GMError, match="selection not found"):
        validate_gm_args(_args(a.prefix, tmp_path / "nope"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text((sel_a / "manifest.json").read_text())
    (bad / "documents.npy").write_bytes(b"not numpy")
    with pytest.raises(GMError, match="documents.npy: unreadable"):
        validate_gm_args(_args(a.prefix, bad))
    (bad / "manifest.json").write_text("{ broken")
    with pytest.raises(GMError, match="corrupt manifest"):
        validate_gm_args(_args(a.prefix, bad))
    (bad / "manifest.json").write_text((sel_a / "manifest.json").read_text())
    np.save(bad / "documents.npy", np.array([3, 99], dtype=np.int64))
    with pytest.raises(GMError, match="out of range"):
        validate_gm_args(_args(a.prefix, bad))


def test_stale_sidecar_and_flag_combinations_are_refused(pools, tmp_path):
    d, a, _, sel_a, _ = pools
    sidecar = json.loads((d / "a.gm.json").read_text())
    stale = tmp_path / "stale"
    for ext in (".bin", ".idx"):
        (tmp_path / f"stale{ext}").write_bytes((d / f"a{ext}").read_bytes())
    sidecar.update(prefix=str(stale), num_docs=sidecar["num_docs"] + 1)
    (tmp_path / "stale.gm.json").write_text(json.dumps(sidecar))
    with pytest.raises(GMError, match="sidecar is stale"):
        validate_gm_args(_args(stale, sel_a))
    for kw, msg in [
        (dict(save=None), "needs --save"),
        (dict(train_iters=None), "pass --train-iters"),
        (dict(rampup_batch_size=["1", "1", "8"]), "fixed batch size"),
        (dict(data_path=["0.5", str(a.prefix), "0.5", str(a.prefix) + "x"]), "exactly one dataset prefix"),
        (dict(dataloader_type="cyclic"), "'single' data loader"),
        (dict(gm_stage_iters=None), "needs --gm-stage-iters"),
    ]:
        with pytest.raises(GMError, match=msg):
            validate_gm_args(_args(a.prefix, sel_a, **kw))
    validate_gm_args(_args(a.prefix, sel_a, save=None), for_training=False)  # in-process tools


def test_stage_ledger_guards_the_checkpoint_position_and_mid_stage_data(pools, tmp_path):
    from megatron_gm.megatron.loader import check_stage_ledger

    d, a, _, sel_a, _ = pools
    args = _args(
        a.prefix, sel_a, save=str(tmp_path / "ck"), load=None, iteration=4, seed=1, global_batch_size=8
    )
    validate_gm_args(args)  # stage 1 = iterations 4..8
    check_stage_ledger(args)  # the stage begins: recorded
    ledger = json.loads((tmp_path / "ck" / "gm_stages.json").read_text())
    assert ledger["1"]["selection_digest"] == args.gm_selection_digest and ledger["1"]["start_iter"] == 4
    args.load, args.iteration = str(tmp_path / "ck"), 6
    check_stage_ledger(args)  # same data mid-stage: fine
    args.seed = 2
    with pytest.raises(GMError, match="stage 1 began with other data .seed 1 -> 2"):
        check_stage_ledger(args)
    args.seed, args.iteration = 1, 8
    with pytest.raises(GMError, match="already complete.*run --gm-stage 2"):
        check_stage_ledger(args)
    args.iteration = 3
    with pytest.raises(
        GMError, match="starts at iteration 4, but the checkpoint in --load is at iteration 3"
    ):
        check_stage_ledger(args)


def test_install_patches_megatron_where_training_py_looks(monkeypatch):
    """A user's own pretrain_gpt.py: install() makes Megatron's parser know --gm-* without a provider."""
    from megatron.training import arguments, training

    import megatron_gm
    from megatron_gm.megatron import loader

    megatron_gm.install(cpu_shim=False)
    assert training.build_pretraining_data_loader is loader.build_pretraining_data_loader
    assert training.checkpoint_and_decide_exit is loader.checkpoint_and_decide_exit
    monkeypatch.setattr("sys.argv", ["pretrain_gpt.py", "--gm-stage", "2", "--gm-stage-iters", "5,9"])
    args = arguments.parse_args()  # Megatron's own parse, no extra_args_provider
    assert (args.gm_stage, args.gm_stage_iters, args.gm_data_fingerprint_check) == (2, "5,9", True)
