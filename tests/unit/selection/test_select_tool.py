"""tools/select_data.py on bad input: one-line errors, exit code 2, nothing overwritten."""

import os

import numpy as np
import pytest

from megatron_gm.data.indexed import write_indexed_dataset
from megatron_gm.data.selection import load_selection
from megatron_gm.selection.score_store import write_scores
from tests.select_helpers import error_line, run_tool, synthetic_scores

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tool") / "scores"
    synthetic_scores(folder, n=600, shard_size=250)
    return folder


def select(scores_dir, out, *extra, ranks=None):
    return run_tool(
        "--scores-from",
        scores_dir,
        "--gm-num-clusters",
        4,
        "--gm-stage",
        1,
        "--output",
        out,
        "--no-progress",
        *extra,
        ranks=ranks,
    )


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("ratio", ["0", "-0.5", "1.5", "nan"])
def test_ratio_outside_0_1(scores, tmp_path, ratio):
    proc = select(scores, tmp_path / "out", "--gm-select-ratio", ratio)
    assert proc.returncode == 2
    assert error_line(proc).startswith("error: --gm-select-ratio must be in (0, 1]")
    assert not (tmp_path / "out").exists()


def test_ratio_one_selects_everything(scores, tmp_path):
    assert select(scores, tmp_path / "all", "--gm-select-ratio", "1").returncode == 0
    docs, _ = load_selection(tmp_path / "all")
    np.testing.assert_array_equal(docs, np.arange(600))


@pytest.mark.mpi
def test_more_clusters_than_documents(scores, tmp_path):
    proc = select(scores, tmp_path / "out", "--gm-num-clusters", 601, ranks=2)
    assert proc.returncode != 0
    assert "is more than the 600 documents" in error_line(proc)
    assert not (tmp_path / "out").exists()


def test_ratio_too_small_for_the_clusters_selects_nothing(scores, tmp_path):
    proc = select(scores, tmp_path / "out", "--gm-select-ratio", "0.0005")
    assert proc.returncode == 2 and "selects nothing" in error_line(proc)
    assert not (tmp_path / "out").exists()


@pytest.mark.mpi
def test_existing_output_is_refused_then_replaced_only_with_overwrite(scores, tmp_path):
    out = tmp_path / "sel"
    assert select(scores, out).returncode == 0
    before = snapshot(out)
    proc = select(scores, out, "--seed", 5)
    assert proc.returncode == 2 and "exists; pass --overwrite" in error_line(proc)
    assert snapshot(out) == before
    # --overwrite, but the run fails late (after clustering): the old selection stays as it was
    proc = select(scores, out, "--overwrite", "--gm-select-ratio", "0.0005", ranks=2)
    assert proc.returncode != 0 and "selects nothing" in error_line(proc)
    assert snapshot(out) == before
    # --overwrite and success: replaced, no temporary folders left behind (nor those of a killed run)
    (tmp_path / ".sel.tmp99999").mkdir()
    (tmp_path / ".sel.old99998").mkdir()
    assert select(scores, out, "--overwrite", "--seed", 5).returncode == 0
    assert snapshot(out) != before
    assert sorted(os.listdir(tmp_path)) == ["sel"]


def test_overwrite_refuses_a_folder_that_is_not_a_selection(scores, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    proc = select(scores, precious, "--overwrite")
    assert proc.returncode == 2 and "not a selection artifact" in error_line(proc)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_scores_for_another_dataset_are_refused(scores, tmp_path):
    info = write_indexed_dataset(
        tmp_path / "other",
        [[1, 2, 3]] * 5,
        tokenizer={"type": "NullTokenizer", "vocab_size": 10},
        source="test",
    )
    proc = select(scores, tmp_path / "out", "--data-path", info.prefix)
    assert proc.returncode == 2
    assert "scores were made for dataset f00d" in error_line(proc) and info.fingerprint in error_line(proc)
    assert not (tmp_path / "out").exists()


def test_unfinished_or_missing_scores(scores, tmp_path):
    proc = select(tmp_path / "nowhere", tmp_path / "out")
    assert proc.returncode == 2 and "manifest not found" in error_line(proc)
    partial = tmp_path / "partial"
    synthetic_scores(partial, n=600, shard_size=250)
    (partial / "shard-00001.done").unlink()
    proc = select(partial, tmp_path / "out")
    assert proc.returncode == 2 and "1 of 3 score shards unfinished (first: 1)" in error_line(proc)


def test_inputs_are_exclusive_and_required(scores, tmp_path):
    proc = run_tool("--gm-stage", 1, "--output", tmp_path / "o")
    assert proc.returncode == 2 and "exactly one of --gm-influence-model" in error_line(proc)
    proc = run_tool("--gm-influence-model", tmp_path, "--gm-stage", 1, "--output", tmp_path / "o")
    assert proc.returncode == 2 and "needs --data-path" in error_line(proc)
    proc = select(scores, tmp_path / "o", "--gm-select-method", "best")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    for flag in ("--scores-dir", "--embed-cache"):  # only for scoring
        proc = select(scores, tmp_path / "o", flag, tmp_path / "x")
        assert proc.returncode == 2 and f"{flag} is for scoring" in error_line(proc)
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


def test_write_scores_refuses_empty_and_existing(tmp_path):
    from megatron_gm.errors import GMError

    with pytest.raises(GMError, match="n > 0"):
        write_scores(
            tmp_path / "e",
            np.zeros((0, 4)),
            np.zeros(0),
            alpha=1,
            tau=1,
            dataset_fingerprint="x",
            model_hash="m",
        )
    with pytest.raises(GMError, match="exists"):
        write_scores(
            tmp_path, np.zeros((2, 4)), np.zeros(2), alpha=1, tau=1, dataset_fingerprint="x", model_hash="m"
        )


def test_random_draws_a_fresh_subset_each_stage(scores, tmp_path):
    """Every stochastic choice comes from (seed, stage): stage 2 is not stage 1's subset again."""
    picks = {}
    for name, stage in (("s1", 1), ("s1_again", 1), ("s2", 2)):
        out = tmp_path / name
        proc = run_tool("--scores-from", scores, "--gm-num-clusters", 4, "--gm-stage", stage, "--output", out,
                        "--gm-select-method", "random", "--no-progress")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        picks[name], _ = load_selection(out)
    np.testing.assert_array_equal(picks["s1"], picks["s1_again"])
    assert abs(picks["s1"].size - 300) <= 4 and abs(picks["s2"].size - 300) <= 4  # floor of 4 cluster quotas
    overlap = np.intersect1d(picks["s1"], picks["s2"]).size
    # two independent uniform halves of 600 share 150 on average (sd ~6); the same subset would share 300
    assert 110 < overlap < 190
