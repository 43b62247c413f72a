"""The pieces behind the reliability suite, one by one: sidecar records, markers, selection digest,
largest-remainder quotas, output locks, and data-loader workers that die when their process ends them."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from megatron_gm.data.indexed import load_dataset_info, write_indexed_dataset
from megatron_gm.data.selection import load_selection, save_selection
from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.procs import lock_output, lock_path, release_output
from megatron_gm.selection.quotas import largest_remainder_quotas
from megatron_gm.shards import ShardSet
from tests.reliability_fixtures import ROOT, LockHolder, flip_byte, truncate

SPEC = {"type": "NullTokenizer", "model": None, "model_sha256": None, "vocab_size": 64}


def test_sidecar_records_sizes_largest_token_and_quick_hash(tmp_path):
    info = write_indexed_dataset(tmp_path / "p", [[1, 2, 3], [7, 5]], tokenizer=SPEC, source="t")
    assert info.bin_bytes == 5 * 2  # five uint16 tokens
    assert info.idx_bytes == 34 + 12 * 2 + 8 * 3  # header, 2 lengths + pointers, 3 document indices
    assert info.max_token_id == 7 and len(info.quick_hash) == 16
    saved = json.loads((tmp_path / "p.gm.json").read_text())
    assert (saved["bin_bytes"], saved["idx_bytes"], saved["max_token_id"]) == (10, 82, 7)
    empty = write_indexed_dataset(tmp_path / "e", [], tokenizer=SPEC, source="t")
    assert (empty.bin_bytes, empty.idx_bytes, empty.max_token_id) == (0, 34 + 8, -1)  # one document index
    with pytest.raises(GMError, match="holds token id 70, outside the tokenizer's vocabulary of 64"):
        write_indexed_dataset(tmp_path / "q", [[1, 70]], tokenizer=SPEC, source="t")
    missing = {**SPEC, "type": "GPTSentencePieceTokenizer", "model": str(tmp_path / "nope.model")}
    with pytest.raises(GMError, match="nope.model: tokenizer model not found"):
        write_indexed_dataset(tmp_path / "r", [[1]], tokenizer=missing, source="t")


def test_a_change_the_quick_hash_cannot_see_is_caught_by_the_full_check(tmp_path, monkeypatch):
    from megatron_gm.data import indexed

    monkeypatch.setattr(indexed, "_QUICK_BLOCK", 16)  # the quick hash reads 16 bytes at each end
    write_indexed_dataset(tmp_path / "p", [list(range(60))] * 4, tokenizer=SPEC, source="t")
    flip_byte(tmp_path / "p.bin", 200)  # byte 200 of 480: outside both ends
    monkeypatch.setattr(indexed, "FULL_CHECK_BYTES", 0)  # a large dataset: the quick check only
    info = load_dataset_info(tmp_path / "p")
    with pytest.raises(GMError, match="p.bin/.idx: fingerprint differs from p.gm.json's"):
        indexed.check_dataset_files(info, full=True)  # --gm-verify-data full
    monkeypatch.setattr(indexed, "FULL_CHECK_BYTES", 64 << 20)  # a small one: always in full
    with pytest.raises(GMError, match="fingerprint differs"):
        load_dataset_info(tmp_path / "p")


def test_moved_dataset_is_checked_where_it_is(tmp_path):
    write_indexed_dataset(tmp_path / "p", [[1, 2, 3], [7, 5]], tokenizer=SPEC, source="t")
    (tmp_path / "moved").mkdir()
    for ext in (".bin", ".idx", ".gm.json"):
        (tmp_path / f"p{ext}").rename(tmp_path / "moved" / f"p{ext}")
    assert load_dataset_info(tmp_path / "moved" / "p").prefix == str(tmp_path / "moved" / "p")


def test_shard_markers_record_size_and_checksum(tmp_path):
    shards = ShardSet(tmp_path / "s", 3)
    shards.open(Manifest("scores", "f00d"))
    for i in range(3):
        shards.write(i, x=np.arange(10 * (i + 1)))
    rec = json.loads(shards.marker(1).read_text())
    data = shards.path(1).read_bytes()
    assert rec == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    shards.marker(0).write_text("")  # a marker from before checksums: trusted as before
    assert shards.is_done(0) and np.array_equal(shards.read(0)["x"], np.arange(10))
    truncate(shards.path(2), 0.9)
    assert shards.pending() == [2]
    with pytest.raises(GMError, match="shard-00002.npz: missing or not the size its .done marker records"):
        shards.read(2)
    assert not shards.marker(2).exists()  # withdrawn: the rerun redoes shard 2 only


def test_oracle_store_with_a_cut_shard_is_refused_and_redone(tmp_path):
    from megatron_gm.oracle.store import load_oracle, write_oracle_store

    arrays = {"traj_id": np.arange(2), "documents": np.zeros((2, 3), np.int64),
              "labels": np.zeros((2, 2), np.float32), "ref_loss": np.zeros((2, 3), np.float32)}  # fmt: skip
    write_oracle_store(
        tmp_path / "o", Manifest("oracle", "f00d"), [arrays, {**arrays, "traj_id": np.arange(2, 4)}]
    )
    truncate(tmp_path / "o" / "shard-00001.npz")
    with pytest.raises(GMError, match="1 of 2 shards unfinished .first: 1.; rerun the phase"):
        load_oracle(tmp_path / "o")
    assert ShardSet(tmp_path / "o", 2).pending() == [1]


def test_selection_digest_catches_a_changed_document(tmp_path):
    docs = np.array([1, 4, 7], dtype=np.int64)
    save_selection(tmp_path / "s", docs, Manifest("selection", "f00d", stage=1))
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    want = hashlib.sha256(b"".join(int(d).to_bytes(8, "little") for d in (1, 4, 7))).hexdigest()
    assert manifest["config"]["documents_sha256"] == want
    np.save(tmp_path / "s" / "documents.npy", np.array([1, 5, 7], dtype=np.int64))
    with pytest.raises(GMError, match="documents.npy: does not match the documents_sha256"):
        load_selection(tmp_path / "s", num_docs=10)


def test_largest_remainder_quotas_and_the_tiny_cluster_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="megatron_gm.selection.quotas"):
        # 0.25 * 20 = 5; floors 2, 0, 0, 0, 0 leave 3; remainders .5, .75, .75, .5, .5: c1, c2 (.75),
        # then c0 (the lowest index of the .5 ties)
        assert largest_remainder_quotas(np.array([10, 3, 3, 2, 2]), 0.25).tolist() == [3, 1, 1, 0, 0]
    assert "4 of 5 clusters hold fewer than 1/ratio = 4 documents" in caplog.text  # sizes 3, 3, 2, 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="megatron_gm.selection.quotas"):
        assert largest_remainder_quotas(np.array([50, 50]), 0.5).tolist() == [25, 25]
    assert not caplog.text


def test_output_lock_refuses_a_live_writer_and_takes_over_a_stale_one(tmp_path):
    out = tmp_path / "out"
    lock_path(out).write_text("pid 999999 on gone\n")  # left by a killed run: nobody holds it
    assert lock_output(out) == lock_path(out)
    assert "pid" in lock_path(out).read_text() and "999999" not in lock_path(out).read_text()
    release_output(out)
    assert not lock_path(out).exists()
    holder = LockHolder(out)
    try:
        with pytest.raises(GMError, match=r"out: another run is writing the output \(process pid \d+ on "):
            lock_output(out)
    finally:
        holder.stop()
    assert not lock_path(out).exists()
    assert lock_output(out) and release_output(out) is None


WORKERS = """
import os, signal, sys, time
import torch
from megatron_gm.megatron.signals import chain_worker_init

def flag_setter(_):  # what Megatron's worker_init_fn installs under --exit-signal-handler
    signal.signal(signal.SIGTERM, lambda *a: None)

loader = torch.utils.data.DataLoader(list(range(64)), batch_size=4, num_workers=2,
                                     worker_init_fn=flag_setter, persistent_workers=True)
if sys.argv[1] == "chained":
    chain_worker_init(loader)
it = iter(loader)
next(it), next(it)  # one batch from each worker: both have run their worker_init_fn
w0, w1 = it._workers
os.system(f"kill -TERM {w1.pid}")  # from another process (a preemption): ignored either way
os.kill(w0.pid, signal.SIGTERM)  # from the training process (shutdown, exit): must end the worker
try:
    w0.join(5)
except RuntimeError:  # torch's SIGCHLD handler may report the worker's death here: that is the point
    w0.join(5)
time.sleep(0.5)
print(w0.is_alive(), w1.is_alive(), flush=True)
for w in (w0, w1):
    if w.is_alive():
        os.kill(w.pid, signal.SIGKILL)
os._exit(0)
"""


@pytest.mark.parametrize("mode, expect", [("chained", "False True"), ("megatron_only", "True True")])
def test_workers_die_on_their_parents_sigterm_only(mode, expect):
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    p = subprocess.run(
        [sys.executable, "-c", WORKERS, mode], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == expect
