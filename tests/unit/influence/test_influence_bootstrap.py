"""Bootstrap beam search and the trajectory file it writes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from megatron_gm.errors import GMError, ManifestMismatch
from megatron_gm.influence.bootstrap import (
    BootstrapConfig,
    beam_search,
    group_influence,
    load_trajectories,
    run_bootstrap,
)


def _pool(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d))
    h /= np.linalg.norm(h, axis=1, keepdims=True) * rng.uniform(1.0, 1.5, size=(n, 1))
    return h, rng.normal(size=n), rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0)


@pytest.mark.parametrize("lowest", [True, False])
def test_exhaustive_beam_search_equals_brute_force(lowest):
    h, s, alpha, tau = _pool(6, 4, seed=0)
    traj, score = beam_search(h, s, alpha, tau, T=3, width=6, beams=10**6, lowest=lowest)
    every = np.array(list(itertools.permutations(range(6), 3)))
    gi = group_influence(h, s, alpha, tau, every)
    assert len(traj) == len(every)
    assert score[0] == pytest.approx(gi.min() if lowest else gi.max())
    np.testing.assert_allclose(np.sort(score), np.sort(gi))


@pytest.mark.parametrize("lowest", [True, False])
def test_beams_sorted_by_predicted_group_influence(lowest):
    h, s, alpha, tau = _pool(80, 8, seed=1)
    traj, score = beam_search(h, s, alpha, tau, T=6, width=3, beams=50, lowest=lowest)
    assert traj.shape == (50, 6)
    assert all(len(set(t)) == 6 for t in traj)  # no document twice in a trajectory
    np.testing.assert_allclose(score, group_influence(h, s, alpha, tau, traj), rtol=1e-10, atol=1e-12)
    diffs = np.diff(score)
    assert np.all(diffs >= -1e-12) if lowest else np.all(diffs <= 1e-12)
    assert len({tuple(t) for t in traj}) == 50
    other, other_score = beam_search(h, s, alpha, tau, T=6, width=3, beams=50, lowest=not lowest)
    assert (score[0] < other_score[0]) == lowest  # the two tails really are opposite ends


def test_step_zero_picks_the_extreme_individual_scores():
    h, s, alpha, tau = _pool(40, 8, seed=2)
    s[0] = 0.0  # the reference code's step 0 (all scores 0) would keep index order: doc 0 first
    low, _ = beam_search(h, s, alpha, tau, T=1, width=4, beams=4, lowest=True)
    high, _ = beam_search(h, s, alpha, tau, T=1, width=4, beams=4, lowest=False)
    assert low[:, 0].tolist() == np.argsort(s)[:4].tolist()
    assert high[:, 0].tolist() == np.argsort(-s)[:4].tolist()
    longer, _ = beam_search(h, s, alpha, tau, T=4, width=2, beams=20, lowest=True)
    assert set(longer[:, 0]) <= set(np.argsort(s)[:2].tolist())
    # without the relation term the best trajectory holds the T lowest s
    flat, flat_score = beam_search(h, s, alpha, tau, T=4, width=2, beams=20, lowest=True, relation=False)
    assert sorted(flat[0].tolist()) == sorted(np.argsort(s)[:4].tolist())
    assert flat_score[0] == pytest.approx(np.sort(s)[:4].sum())


def test_bad_search_arguments():
    h, s, alpha, tau = _pool(5, 4, seed=3)
    with pytest.raises(GMError, match="T=6"):
        beam_search(h, s, alpha, tau, T=6, width=2, beams=2)
    with pytest.raises(GMError, match="beam width"):
        beam_search(h, s, alpha, tau, T=2, width=0, beams=2)


def test_bootstrap_tool_writes_a_trajectory_file(tmp_path):
    from megatron_gm.influence import InfluenceModel, ModelConfig, document_texts, save_influence_model
    from megatron_gm.influence.cli import bootstrap_main
    from megatron_gm.influence.embed import score_texts
    from megatron_gm.influence.io import load_influence_model
    from megatron_gm.manifest import Manifest
    from tests.influence_fixtures import tiny_encoder, token_pool

    torch.set_num_threads(1)
    info = token_pool(tmp_path / "pool", 120)
    torch.manual_seed(0)
    model = InfluenceModel(ModelConfig(str(tiny_encoder(tmp_path / "enc"))))
    with torch.no_grad():
        model.heads.alpha.fill_(1.3)
        model.heads.tau.fill_(0.9)
    save_influence_model(
        tmp_path / "model", model, Manifest("influence_model", info.fingerprint, stage=0), fine_tuned=False
    )
    args = [
        "--model",
        str(tmp_path / "model"),
        "--data-path",
        info.prefix,
        "--output",
        str(tmp_path / "traj"),
        "--T",
        "4",
        "--width",
        "3",
        "--beams-per-tail",
        "15",
        "--probe-count",
        "50",
        "--no-progress",
    ]
    assert bootstrap_main(args) == 0
    docs, manifest = load_trajectories(
        tmp_path / "traj", dataset_fingerprint=info.fingerprint, num_docs=info.num_docs
    )
    assert docs.shape == (30, 4) and manifest.config["T"] == 4 and manifest.stage == 0
    probe = np.load(tmp_path / "traj" / "probe_documents.npy")
    tail = np.load(tmp_path / "traj" / "tail.npy")
    predicted = np.load(tmp_path / "traj" / "predicted.npy")
    assert len(probe) == 50 and np.isin(docs, probe).all() and tail.tolist() == [-1] * 15 + [1] * 15
    # the stored predictions are the loaded model's group influence of those documents
    loaded, _ = load_influence_model(tmp_path / "model")
    h, s = score_texts(loaded, document_texts(info.prefix, probe), 32)
    pos = np.searchsorted(probe, docs)
    np.testing.assert_allclose(
        predicted, group_influence(h, s, loaded.alpha, loaded.tau, pos), rtol=1e-5, atol=1e-6
    )
    assert predicted[:15].max() <= predicted[15:].min()
    assert bootstrap_main(args) == 0  # same run again: reused, not rewritten
    with pytest.raises(ManifestMismatch):
        load_trajectories(tmp_path / "traj", dataset_fingerprint="0123456789abcdef")
    assert bootstrap_main(args[:-1] + ["--width", "2", "--no-progress"]) == 2  # other run, same folder
    with pytest.raises(GMError, match="T=999"):
        run_bootstrap(
            BootstrapConfig(
                model=str(tmp_path / "model"),
                data_path=info.prefix,
                output=str(tmp_path / "t2"),
                T=999,
                probe_count=50,
            )
        )
