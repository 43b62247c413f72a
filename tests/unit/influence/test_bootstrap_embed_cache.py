"""The bootstrap reads its probing pool's h from the selection's pool-embedding cache (``--embed-cache``).

The cache is filled by tools/select_data.py itself (one process, --threads 1, as this process runs); the
bootstrap with the cache must write the same trajectory files as without it, embedding only the probe
documents whose pool shard the selection did not finish.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.influence_fixtures import tiny_encoder, token_pool
from tests.select_helpers import run_tool

N_DOCS, SHARD, PROBE = 120, 25, 60
FILES = ("documents.npy", "predicted.npy", "tail.npy", "probe_documents.npy", "manifest.json")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A pool, a frozen and a fine-tuned model of the same weights, a selection's cache, and a bootstrap
    run without the cache (today's path: every probe document embedded)."""
    from megatron_gm.config import from_namespace
    from megatron_gm.influence import InfluenceModel, ModelConfig, save_influence_model
    from megatron_gm.influence.bootstrap import BootstrapConfig, run_bootstrap
    from megatron_gm.influence.cli import bootstrap_parser
    from megatron_gm.manifest import Manifest

    torch.set_num_threads(1)  # the selection below runs with --threads 1: the cache is keyed by threads
    d = tmp_path_factory.mktemp("bootstrap_cache")
    info = token_pool(d / "pool", N_DOCS)
    torch.manual_seed(0)
    model = InfluenceModel(ModelConfig(str(tiny_encoder(d / "enc"))))
    with torch.no_grad():
        model.heads.alpha.fill_(1.3)
        model.heads.tau.fill_(0.9)
    manifest = Manifest("influence_model", info.fingerprint, stage=1)
    save_influence_model(d / "model", model, manifest, fine_tuned=False)
    save_influence_model(d / "tuned", model, manifest, fine_tuned=True)
    proc = run_tool(
        "--data-path", info.prefix, "--gm-influence-model", d / "model", "--gm-stage", 2,
        "--output", d / "selection", "--embed-cache", d / "cache", "--shard-size", SHARD,
        "--threads", 1, "--gm-num-clusters", 2, "--no-progress", timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (folder,) = (d / "cache").glob("pool-embeddings-*")
    assert len(list(folder.glob("shard-*.done"))) == -(-N_DOCS // SHARD)  # the last shard is short
    plain = run_bootstrap(
        from_namespace(BootstrapConfig, bootstrap_parser().parse_args(bootstrap_args(d, "plain")))
    )
    assert plain["probe_embedded"] == PROBE and plain["probe_from_cache"] == 0
    return d, info, folder


def bootstrap_args(d, out, *extra, model="model") -> list[str]:
    return [
        "--model", str(d / model), "--data-path", str(d / "pool"), "--output", str(d / out),
        "--T", "4", "--width", "3", "--beams-per-tail", "15", "--probe-count", str(PROBE),
        "--threads", "1", "--no-progress", *map(str, extra),
    ]  # fmt: skip


def bootstrap(capsys, d, out, *extra, model="model") -> tuple[dict, str]:
    """The tool's printed result and its log lines."""
    from megatron_gm.influence.cli import bootstrap_main

    capsys.readouterr()
    assert bootstrap_main(bootstrap_args(d, out, *extra, model=model)) == 0
    text = capsys.readouterr().out
    return json.loads(text[text.index("{") :]), text[: text.index("{")]


def same_files(d, a: str, b: str) -> bool:
    return all((d / a / f).read_bytes() == (d / b / f).read_bytes() for f in FILES)


def test_a_filled_cache_gives_the_same_trajectories_and_embeds_nothing(pool, capsys):
    d, _, folder = pool
    res, log = bootstrap(capsys, d, "cached", "--embed-cache", d / "cache", "--embed-cache-shard-size", SHARD)
    assert res["probe_from_cache"] == PROBE and res["probe_embedded"] == 0
    assert f"{PROBE} of {PROBE} probe documents from the pool-embedding cache {folder}, 0 to embed" in log
    assert same_files(d, "plain", "cached")
    assert not (d / "cached" / "cache").exists()


def test_a_partly_filled_cache_embeds_the_missing_shards_only(pool, capsys):
    d, _, folder = pool
    part = d / "part_cache" / folder.name
    shutil.copytree(folder, part)
    for i in (1, 3):  # as if the selection was killed before finishing these shards
        (part / f"shard-{i:05d}.done").unlink()
    probe = np.load(d / "plain" / "probe_documents.npy")
    missing = int(np.isin(probe // SHARD, [1, 3]).sum())
    assert 0 < missing < PROBE
    res, _ = bootstrap(
        capsys, d, "part", "--embed-cache", d / "part_cache", "--embed-cache-shard-size", SHARD
    )
    assert res["probe_embedded"] == missing and res["probe_from_cache"] == PROBE - missing
    assert same_files(d, "plain", "part")


def test_a_fine_tuned_model_ignores_the_cache(pool, capsys):
    d, _, _ = pool
    cache = ["--embed-cache", d / "cache", "--embed-cache-shard-size", SHARD]
    res, log = bootstrap(capsys, d, "tuned_traj", *cache, model="tuned")
    assert res["probe_from_cache"] == 0 and res["probe_embedded"] == PROBE
    assert "fine-tuned; --embed-cache ignored" in log


def test_another_batch_size_or_shard_size_is_a_miss(pool, capsys):
    """The cache is keyed by the batch size (vectors may differ in the last bits): another one finds no
    folder; a wrong shard size names another folder too. Neither creates a folder in the cache."""
    d, _, _ = pool
    before = sorted(p.name for p in (d / "cache").iterdir())
    for name, extra in (
        ("batch16", ["--embed-batch-size", 16, "--embed-cache-shard-size", SHARD]),
        ("shard30", ["--embed-cache-shard-size", 30]),
    ):
        res, _ = bootstrap(capsys, d, name, "--embed-cache", d / "cache", *extra)
        assert res["probe_from_cache"] == 0 and res["probe_embedded"] == PROBE, name
    assert sorted(p.name for p in (d / "cache").iterdir()) == before
    assert same_files(d, "plain", "shard30")
