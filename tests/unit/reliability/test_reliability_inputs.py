"""Bad input, table-driven: every case exits non-zero with one ``error:`` line, last on stderr, naming the
file or flag, without a traceback, and leaves the outputs that were already there unchanged.

The tools run in this process through their ``main`` (what ``tools/*.py`` call), on one small module
fixture: two pools of the same document count, synthetic scores, a finished selection, fake legacy
checkpoints. Pretraining's cases need their own processes: they are in test_reliability_runs.py.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_gm import procs
from megatron_gm.oracle import cli as oracle_cli
from megatron_gm.pipeline import cli as pipeline_cli
from megatron_gm.selection import cli as select_cli
from tests.reliability_fixtures import (
    LockHolder,
    assert_one_line_error,
    copy_pool,
    flip_byte,
    snapshot,
    truncate,
    write_pool,
)
from tests.select_helpers import synthetic_scores

pytestmark = pytest.mark.timeout(300)


class _Payload:
    """A pickle that would create a file when unpickled: a checkpoint must never run it."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    w = tmp_path_factory.mktemp("reliability")
    write_pool(w / "a", seed=0)
    write_pool(w / "b", seed=1)  # same document count as a: only the contents tell them apart
    write_pool(w / "c", seed=2, n=120)
    synthetic_scores(w / "scores", n=600, shard_size=250)
    sel = w / "sel"
    rc = select_cli.main(["--scores-from", str(w / "scores"), "--gm-num-clusters", "4", "--gm-stage", "1",
                          "--output", str(sel), "--no-progress"])  # fmt: skip
    assert rc == 0
    (w / "model").mkdir()  # an influence model folder: the data checks come before it is read
    (w / "oracle").mkdir()
    (w / "oracle" / "manifest.json").write_text("{}\n")  # an existing store the failed runs must not touch
    (w / "run").mkdir()
    (w / "run" / "note.txt").write_text("keep\n")
    (w / "ref.jsonl").write_text(json.dumps({"text": "1 2 3 4 5 6 7 8"}) + "\n")
    ckpts = w / "ckpt"
    for name in ("truncated", "payload", "no_optim", "garbled_tracker"):
        it = ckpts / name / "iter_0000004" / "mp_rank_00"
        it.mkdir(parents=True)
        (ckpts / name / "latest_checkpointed_iteration.txt").write_text("4\n")
    torch.save({"iteration": 4, "model": {"w": torch.zeros(64, 64)}, "optimizer": {}, "opt_param_scheduler": {}},
               ckpts / "truncated" / "iter_0000004" / "mp_rank_00" / "model_optim_rng.pt")  # fmt: skip
    truncate(ckpts / "truncated" / "iter_0000004" / "mp_rank_00" / "model_optim_rng.pt")
    with open(ckpts / "payload" / "iter_0000004" / "mp_rank_00" / "model_optim_rng.pt", "wb") as f:
        pickle.dump({"iteration": 4, "args": _Payload(str(w / "PWNED"))}, f)
    torch.save(
        {"iteration": 4, "model": {}},
        ckpts / "no_optim" / "iter_0000004" / "mp_rank_00" / "model_optim_rng.pt",
    )
    (ckpts / "garbled_tracker" / "latest_checkpointed_iteration.txt").write_text("four\n")
    return w


# -- the cases -------------------------------------------------------------------------------------
# Each: (tool, setup(w, tmp) -> argv, words the error line must contain one of). The outputs checked for
# being unchanged are the tool's: the selection (with --overwrite), the oracle store, the run folder.


def _select(w: Path, *extra: str, clusters: str = "4", stage: str = "1", overwrite: bool = True) -> list[str]:
    return ["--gm-num-clusters", clusters, "--gm-stage", stage, "--output", str(w / "sel"),
            *(["--overwrite"] if overwrite else []), "--no-progress", *extra]  # fmt: skip


def _score(w: Path, prefix: Path) -> list[str]:
    return _select(w, "--data-path", str(prefix), "--gm-influence-model", str(w / "model"))


def _damaged_pool(w: Path, tmp: Path, damage) -> Path:
    prefix = copy_pool(w / "a", tmp / "a")
    damage(prefix)
    return prefix


def _damaged_scores(w: Path, tmp: Path, damage) -> list[str]:
    shutil.copytree(w / "scores", tmp / "scores")
    damage(tmp / "scores")
    return _select(w, "--scores-from", str(tmp / "scores"))


def _swap(prefix: Path, other: Path) -> None:
    for ext in (".bin", ".idx"):
        shutil.copyfile(f"{other}{ext}", f"{prefix}{ext}")


def _oracle(w: Path, load: Path) -> list[str]:
    return ["--load", str(load), "--data-path", str(w / "a"), "--gm-oracle-output", str(w / "oracle"),
            "--gm-oracle-ref-data", str(w / "ref.jsonl")]  # fmt: skip


def _pipeline(w: Path, *sets: str) -> list[str]:
    out = ["--dry-run", "--out", str(w / "run"), "--data-path", str(w / "a")]
    for s in sets:
        out += ["--set", s]
    return out


CASES = {
    # selection: the pool it scores
    "bin_cut_in_half": ("select", lambda w, t: _score(w, _damaged_pool(w, t, lambda p: truncate(Path(f"{p}.bin")))),
                        ("a.bin",)),
    "bin_grown": ("select", lambda w, t: _score(w, _damaged_pool(
        w, t, lambda p: Path(f"{p}.bin").write_bytes(Path(f"{p}.bin").read_bytes() + b"\0\0"))), ("a.bin",)),
    "idx_cut": ("select", lambda w, t: _score(w, _damaged_pool(w, t, lambda p: truncate(Path(f"{p}.idx"), 0.7))),
                ("a.idx",)),
    "idx_not_an_index": ("select", lambda w, t: _score(w, _damaged_pool(
        w, t, lambda p: Path(f"{p}.idx").write_bytes(b"hello"))), ("a.idx",)),
    "swapped_pair_same_count": ("select", lambda w, t: _score(w, _damaged_pool(w, t, lambda p: _swap(p, w / "b"))),
                                ("a.bin",)),
    "bin_byte_changed_at_end": ("select", lambda w, t: _score(w, _damaged_pool(
        w, t, lambda p: flip_byte(Path(f"{p}.bin")))), ("a.bin/.idx",)),
    "bin_byte_changed_in_the_middle": ("select", lambda w, t: _score(w, _damaged_pool(
        w, t, lambda p: flip_byte(Path(f"{p}.bin"), 30000))), ("a.bin/.idx",)),
    "sidecar_of_another_pool": ("select", lambda w, t: _score(w, _damaged_pool(
        w, t, lambda p: shutil.copyfile(w / "c.gm.json", f"{p}.gm.json"))), ("a.gm.json",)),
    "sidecar_not_json": ("select", lambda w, t: _score(w, _damaged_pool(
        w, t, lambda p: Path(f"{p}.gm.json").write_text("{ nope"))), ("a.gm.json",)),
    "sidecar_missing": ("select", lambda w, t: _score(w, _damaged_pool(
        w, t, lambda p: Path(f"{p}.gm.json").unlink())), ("a.gm.json",)),
    "bin_missing": ("select", lambda w, t: _score(w, _damaged_pool(w, t, lambda p: Path(f"{p}.bin").unlink())),
                    ("a.bin",)),
    "pool_not_found": ("select", lambda w, t: _score(w, t / "nothing"), ("nothing",)),
    # selection: its scores and settings
    "score_shard_cut_marker_kept": ("select", lambda w, t: _damaged_scores(
        w, t, lambda s: truncate(s / "shard-00001.npz")), ("scores",)),
    "score_shard_byte_changed": ("select", lambda w, t: _damaged_scores(
        w, t, lambda s: flip_byte(s / "shard-00002.npz", 200)), ("shard-00002.npz",)),
    "score_marker_garbled": ("select", lambda w, t: _damaged_scores(
        w, t, lambda s: (s / "shard-00000.done").write_text("{oops")), ("scores",)),
    "scores_not_found": ("select", lambda w, t: _select(w, "--scores-from", str(t / "none")), ("none",)),
    "ratio_nan": ("select", lambda w, t: _select(w, "--scores-from", str(w / "scores"), "--gm-select-ratio", "nan"),
                  ("--gm-select-ratio",)),
    "ratio_zero": ("select", lambda w, t: _select(w, "--scores-from", str(w / "scores"), "--gm-select-ratio", "0"),
                   ("--gm-select-ratio",)),
    "ratio_rounds_to_nothing": ("select", lambda w, t: _select(
        w, "--scores-from", str(w / "scores"), "--gm-select-ratio", "0.0005"), ("--gm-select-ratio",)),
    "clusters_zero": ("select", lambda w, t: _select(w, "--scores-from", str(w / "scores"), clusters="0"),
                      ("--gm-num-clusters",)),
    "temperature_negative": ("select", lambda w, t: _select(
        w, "--scores-from", str(w / "scores"), "--gm-select-temperature", "-1"), ("--gm-select-temperature",)),
    "stage_negative": ("select", lambda w, t: _select(w, "--scores-from", str(w / "scores"), stage="-1"),
                       ("--gm-stage",)),
    "output_exists_without_overwrite": ("select", lambda w, t: _select(
        w, "--scores-from", str(w / "scores"), overwrite=False), ("/sel: exists",)),
    "output_locked_by_a_live_run": ("select+lock", lambda w, t: _select(w, "--scores-from", str(w / "scores")),
                                    ("another run is writing",)),
    # oracle: the checkpoint, before Megatron starts
    "checkpoint_truncated": ("oracle", lambda w, t: _oracle(w, w / "ckpt" / "truncated"), ("model_optim_rng.pt",)),
    "checkpoint_with_code": ("oracle", lambda w, t: _oracle(w, w / "ckpt" / "payload"), ("model_optim_rng.pt",)),
    "checkpoint_without_optimizer": ("oracle", lambda w, t: _oracle(w, w / "ckpt" / "no_optim"),
                                     ("iter_0000004",)),
    "checkpoint_tracker_garbled": ("oracle", lambda w, t: _oracle(w, w / "ckpt" / "garbled_tracker"),
                                   ("latest_checkpointed_iteration.txt",)),
    "checkpoint_not_found": ("oracle", lambda w, t: _oracle(w, t / "no_ckpt"), ("no_ckpt",)),
    # pipeline: every --set value typed and ranged
    "set_lr_nan": ("pipeline", lambda w, t: _pipeline(w, "train.lr=nan"), ("train.lr",)),
    "set_lr_inf": ("pipeline", lambda w, t: _pipeline(w, "train.lr=inf"), ("train.lr",)),
    "set_negative_ref_examples": ("pipeline", lambda w, t: _pipeline(w, "oracle.ref_samples=-4"),
                                  ("oracle.ref_samples",)),
    "set_zero_heads": ("pipeline", lambda w, t: _pipeline(w, "model.num_attention_heads=0"),
                       ("model.num_attention_heads",)),
    "set_ratio_above_one": ("pipeline", lambda w, t: _pipeline(w, "select.ratio=1.5"), ("select.ratio",)),
    "set_not_a_number": ("pipeline", lambda w, t: _pipeline(w, "model.hidden_size=big"), ("model.hidden_size",)),
    "set_unknown_method": ("pipeline", lambda w, t: _pipeline(w, "select.method=best"), ("select.method",)),
    "set_zero_threads": ("pipeline", lambda w, t: _pipeline(w, "launch.threads=0"), ("launch.threads",)),
    "set_negative_seed": ("pipeline", lambda w, t: _pipeline(w, "train.seed=-5"), ("train.seed",)),
    "set_min_lr_above_lr": ("pipeline", lambda w, t: _pipeline(w, "train.min_lr=0.5"), ("train.min_lr",)),
    "set_unknown_field": ("pipeline", lambda w, t: _pipeline(w, "train.speed=3"), ("train.speed",)),
}  # fmt: skip

MAINS = {"select": select_cli.main, "oracle": oracle_cli.main, "pipeline": pipeline_cli.main}


def test_the_table_is_big_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, env, tmp_path, capsys):
    tool, make_argv, names = CASES[case]
    argv = make_argv(env, tmp_path)
    outputs = snapshot(env / "sel", env / "oracle", env / "run")
    holder = LockHolder(env / "sel") if tool.endswith("+lock") else None
    capsys.readouterr()
    try:
        rc = MAINS[tool.split("+")[0]](argv)
    finally:
        procs.release_all()
        if holder:
            holder.stop()
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, names)
    assert snapshot(env / "sel", env / "oracle", env / "run") == outputs
    assert not (env / "PWNED").exists(), "a checkpoint ran code while being read"
    assert not list(env.glob(".*.lock")), "a lock file was left behind"


def test_a_damaged_score_shard_is_redone_alone_by_the_rerun(env, tmp_path):
    """The marker of a shard whose bytes changed is withdrawn on read; only that shard is pending then."""
    from megatron_gm.selection.score_store import open_scores

    shutil.copytree(env / "scores", tmp_path / "scores")
    flip_byte(tmp_path / "scores" / "shard-00001.npz", 300)
    shards, _ = open_scores(tmp_path / "scores")  # the cheap check (sizes) cannot see it ...
    from megatron_gm.errors import GMError

    with pytest.raises(GMError, match="shard-00001.npz: checksum differs"):
        shards.read(1)  # ... the read does, and withdraws the marker
    assert shards.pending() == [1]
    truncate(tmp_path / "scores" / "shard-00002.npz")  # cut short: pending without any read
    assert shards.pending() == [1, 2]
    kept = np.load(tmp_path / "scores" / "shard-00000.npz")["s"]
    assert np.array_equal(shards.read(0)["s"], kept)
