"""tools/select_data.py end to end with the real influence model (MiniLM encoder) on a tiny indexed dataset:
2 ranks vs 1 rank killed during scoring and rerun give the same scores and artifact bytes; bad inputs."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from megatron_gm.data.indexed import load_dataset_info, write_indexed_dataset
from megatron_gm.data.preprocess import main as preprocess_main
from megatron_gm.data.selection import load_selection
from megatron_gm.data.train_tokenizer import main as train_tokenizer_main
from megatron_gm.influence import InfluenceModel, ModelConfig, save_influence_model
from megatron_gm.manifest import Manifest
from megatron_gm.selection.scoring import influence_model_hash
from tests.fixtures import make_corpus
from tests.select_helpers import ROOT, TOOL, error_line, run_tool

pytestmark = [pytest.mark.slow, pytest.mark.mpi, pytest.mark.timeout(300)]

N_DOCS, SHARD = 60, 6


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    corpus = make_corpus(d / "corpus.jsonl", n_docs=N_DOCS, seed=1)
    assert (
        train_tokenizer_main(["--input", str(corpus), "--model-prefix", str(d / "sp"), "--vocab-size", "500"])
        == 0
    )
    assert (
        preprocess_main(
            [
                "--input",
                str(corpus),
                "--output-prefix",
                str(d / "pool"),
                "--tokenizer-type",
                "GPTSentencePieceTokenizer",
                "--tokenizer-model",
                str(d / "sp.model"),
            ]
        )
        == 0
    )
    prefix = str(d / "pool_text_document")
    info = load_dataset_info(prefix)
    torch.manual_seed(0)
    model = InfluenceModel(ModelConfig(chunk_len=64))
    with torch.no_grad():  # learned values, not the initial 1.0
        model.heads.alpha.fill_(0.7)
        model.heads.tau.fill_(1.6)
    manifest = Manifest(kind="influence_model", dataset_fingerprint=info.fingerprint, stage=0, iteration=20)
    save_influence_model(d / "model", model, manifest, fine_tuned=False)
    return d, prefix, info


def args(pool, out, *extra):
    d, prefix, _ = pool
    return [
        "--data-path",
        prefix,
        "--gm-influence-model",
        d / "model",
        "--gm-stage",
        1,
        "--output",
        out,
        "--shard-size",
        SHARD,
        "--micro-batch-size",
        8,
        "--gm-num-clusters",
        3,
        "--no-progress",
        *extra,
    ]


def summary(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_two_ranks_then_one_rank_killed_and_resumed(pool, tmp_path):
    d, prefix, info = pool
    full = summary(run_tool(*args(pool, tmp_path / "full"), ranks=2))
    assert f"docs {N_DOCS}, scored {N_DOCS} " in full and "clusters 3, selected" in full

    # one rank, killed (SIGKILL) once some shards are done
    cmd = [sys.executable, str(TOOL), *map(str, args(pool, tmp_path / "resumed"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    scores = tmp_path / "resumed.scores"
    deadline = time.time() + 120
    while not list(scores.glob("*.done")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(scores.glob("*.done"))
    assert 0 < len(done) < N_DOCS // SHARD, "the kill should land during scoring"
    assert not (tmp_path / "resumed").exists()
    kept = {p.with_suffix(".npz").name: p.with_suffix(".npz").stat().st_mtime_ns for p in done}

    line = summary(run_tool(*args(pool, tmp_path / "resumed")))
    assert f"scored {N_DOCS - SHARD * len(done)} " in line  # only the unfinished shards
    assert {n: (scores / n).stat().st_mtime_ns for n in kept} == kept  # finished shards untouched

    for name in ("documents.npy", "manifest.json"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    for i in range(N_DOCS // SHARD):  # scores do not depend on the number of ranks either
        a = np.load(tmp_path / "full.scores" / f"shard-{i:05d}.npz")
        b = np.load(scores / f"shard-{i:05d}.npz")
        assert all(np.array_equal(a[k], b[k]) for k in ("documents", "h", "s"))

    docs, manifest = load_selection(tmp_path / "full", dataset_fingerprint=info.fingerprint, num_docs=N_DOCS)
    assert manifest.inputs["influence_model"] == influence_model_hash(d / "model")
    assert manifest.iteration == 20 and manifest.stage == 1
    assert manifest.config["alpha"] == pytest.approx(0.7) and manifest.config["tau"] == pytest.approx(1.6)
    # rerunning on the finished scores folder scores nothing and selects the same
    again = summary(
        run_tool(
            "--scores-from",
            tmp_path / "full.scores",
            "--gm-num-clusters",
            3,
            "--gm-stage",
            1,
            "--output",
            tmp_path / "again",
            "--no-progress",
        )
    )
    assert "scored 0 " in again
    assert (tmp_path / "again" / "documents.npy").read_bytes() == (
        tmp_path / "full" / "documents.npy"
    ).read_bytes()
    # a scores folder is never mixed across runs: another batch size (or model, dataset) is refused
    proc = run_tool(*args(pool, tmp_path / "mixed", "--scores-dir", scores, "--micro-batch-size", 4))
    assert proc.returncode == 2 and "holds shards of a different run" in error_line(proc)
    assert not (tmp_path / "mixed").exists()


def test_model_for_another_dataset_is_refused(pool, tmp_path):
    d, _, info = pool
    other = write_indexed_dataset(
        tmp_path / "other",
        [[5, 6, 7]] * 4,
        tokenizer={"type": "NullTokenizer", "vocab_size": 10},
        source="test",
    )
    proc = run_tool(
        *args(pool, tmp_path / "out")[4:],
        "--data-path",
        other.prefix,
        "--gm-influence-model",
        d / "model",
        ranks=2,
    )
    assert proc.returncode != 0
    line = error_line(proc)
    assert "was made for dataset_fingerprint" in line and other.fingerprint in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.scores").exists()


def test_empty_pool_is_refused(pool, tmp_path):
    d, _, _ = pool
    empty = write_indexed_dataset(
        tmp_path / "empty", [], tokenizer={"type": "NullTokenizer", "vocab_size": 10}, source="test"
    )
    proc = run_tool(
        *args(pool, tmp_path / "out")[4:], "--data-path", empty.prefix, "--gm-influence-model", d / "model"
    )
    assert proc.returncode == 2 and "empty pool (0 documents)" in error_line(proc)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.scores").exists()


def test_embedding_cache_reuses_h_across_models(pool, tmp_path):
    """A second frozen-encoder model reads the pool's h from --embed-cache; its scores and artifact equal
    an uncached run's, and a fine-tuned model gets no cache."""
    d, prefix, info = pool
    torch.manual_seed(1)
    other = InfluenceModel(ModelConfig(chunk_len=64))  # same frozen encoder, other heads
    with torch.no_grad():
        other.heads.head.weight.normal_()
        other.heads.alpha.fill_(1.3)
    manifest = Manifest(kind="influence_model", dataset_fingerprint=info.fingerprint, stage=1, iteration=40)
    save_influence_model(tmp_path / "other", other, manifest, fine_tuned=False)
    cache = tmp_path / "cache"

    first = summary(run_tool(*args(pool, tmp_path / "a", "--embed-cache", cache), ranks=2))
    assert f"scored {N_DOCS} " in first
    (folder,) = cache.glob("pool-embeddings-*")
    assert len(list(folder.glob("*.done"))) == N_DOCS // SHARD

    def with_model(model, out, *extra):
        a = args(pool, out, *extra)
        a[a.index("--gm-influence-model") + 1] = model
        return a

    cached = summary(run_tool(*with_model(tmp_path / "other", tmp_path / "b", "--embed-cache", cache)))
    assert "scored 0 " in cached  # every h from the cache
    plain = summary(run_tool(*with_model(tmp_path / "other", tmp_path / "c")))
    assert f"scored {N_DOCS} " in plain
    for i in range(N_DOCS // SHARD):
        x = np.load(tmp_path / "b.scores" / f"shard-{i:05d}.npz")
        y = np.load(tmp_path / "c.scores" / f"shard-{i:05d}.npz")
        assert all(np.array_equal(x[k], y[k]) for k in ("documents", "h", "s"))
    assert (tmp_path / "b" / "documents.npy").read_bytes() == (tmp_path / "c" / "documents.npy").read_bytes()
    assert (tmp_path / "b" / "documents.npy").read_bytes() != (tmp_path / "a" / "documents.npy").read_bytes()

    save_influence_model(tmp_path / "tuned", other, manifest, fine_tuned=True)
    tuned = summary(run_tool(*with_model(tmp_path / "tuned", tmp_path / "t", "--embed-cache", cache)))
    assert f"scored {N_DOCS} " in tuned  # a fine-tuned encoder's h is never cached
    assert len(list(cache.glob("pool-embeddings-*"))) == 1
