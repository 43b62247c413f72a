"""kill -9 matrix: a writer killed at any point of any artifact, then rerun, gives the uninterrupted bytes.

Each point kills a real run with SIGKILL (tests/kill_driver.py: just before a chosen file is renamed into
place, i.e. mid-write of that artifact; pretraining: ``kill -9`` of torchrun from outside), reruns the
same command, and checks: the rerun's artifact is byte-identical to an uninterrupted run's, no temporary
or lock file is left anywhere, and no process of the run is alive 10 s after the kill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests import kill_writers
from tests.e2e.test_reliability_runs import flags, no_orphans_within, pretrain
from tests.influence_fixtures import tiny_encoder, token_pool
from tests.reliability_fixtures import ROOT

pytestmark = [pytest.mark.megatron, pytest.mark.slow, pytest.mark.timeout(600)]
ITERS = 30  # pretraining point: long enough that a kill lands mid-stage even on a busy machine
LEFTOVER = re.compile(r"(\.tmp\d+|\.old\d+|^\.tmp\d+_.*|\.lock)$")


def files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes by relative name; a sidecar's own ``prefix`` (where it was written) left out."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name.endswith(".gm.json"):
                d = json.loads(data)
                assert d.pop("prefix") == str(p)[: -len(".gm.json")]
                data = json.dumps(d).encode()
            out[str(p.relative_to(folder))] = data
    return out


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if LEFTOVER.search(p.name)]


def select_args(base: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-path", str(base / "pool"), "--gm-influence-model", str(base / "model"), "--gm-stage", "1",
            "--output", str(out), "--shard-size", "20", "--micro-batch-size", "8", "--gm-num-clusters", "3",
            "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The pool, encoder and influence model, and every writer's uninterrupted output (the references)."""
    w = tmp_path_factory.mktemp("kill")
    info = token_pool(w / "pool", 120)
    enc = tiny_encoder(w / "enc")
    assert kill_writers.influence([str(w / "model"), str(enc), info.fingerprint]) == 0
    ref = w / "ref"
    ref.mkdir()
    assert kill_writers.select(select_args(w, ref / "sel")) == 0
    (ref / "ds").mkdir()
    assert kill_writers.dataset([str(ref / "ds" / "pool")]) == 0
    assert kill_writers.influence([str(ref / "m" / "model"), str(enc), info.fingerprint]) == 0
    assert kill_writers.oracle([str(ref / "o" / "store"), info.fingerprint]) == 0
    return w, info, enc


def killed(pattern: str, entry: str, *args: str, cwd: Path) -> None:
    """Run the writer in a child killed at ``pattern``; it must die of SIGKILL (the point was reached)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_driver.py"), pattern, entry, *args], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert p.returncode == -signal.SIGKILL, (
        f"not killed at {pattern!r} (rc {p.returncode})\n{p.stderr[-3000:]}"
    )


# point -> (entry, pattern, artifact folder under the work dir)
SELECT_POINTS = {
    "scores_npz_written_not_renamed": r"/sel\.scores/shard-00003\.npz$",
    "scores_shard_done_marker_not_yet": r"/sel\.scores/shard-00002\.done$",
    "selection_documents_not_renamed": r"/\.sel\.tmp\d+/documents\.npy$",
    "selection_manifest_not_renamed": r"/\.sel\.tmp\d+/manifest\.json$",
    "selection_complete_not_swapped_in": r"/sel$",
}


@pytest.mark.parametrize("point", sorted(SELECT_POINTS))
def test_selection_killed_and_rerun(point, base, tmp_path):
    w, _, _ = base
    killed(SELECT_POINTS[point], "select", *select_args(w, tmp_path / "sel"), cwd=tmp_path)
    no_orphans_within(str(tmp_path))
    assert kill_writers.select(select_args(w, tmp_path / "sel")) == 0
    for name in ("sel", "sel.scores"):
        assert files(tmp_path / name) == files(w / "ref" / name), name
    assert not leftovers(tmp_path) and not leftovers(w)


def test_selection_overwrite_killed_between_the_two_renames(base, tmp_path):
    """--overwrite moves the old selection aside, then the new one in: killed in between, rerun."""
    w, _, _ = base
    assert kill_writers.select(select_args(w, tmp_path / "sel", "--seed", "5")) == 0  # an older selection
    killed(r"/sel$", "select", *select_args(w, tmp_path / "sel", "--overwrite"), cwd=tmp_path)
    assert not (tmp_path / "sel").exists()  # the point: the old one aside, the new one not yet in
    no_orphans_within(str(tmp_path))
    assert kill_writers.select(select_args(w, tmp_path / "sel", "--overwrite")) == 0
    assert files(tmp_path / "sel") == files(w / "ref" / "sel")
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("pattern", [r"/pool\.idx$", r"/pool\.gm\.json$"])
def test_dataset_write_killed_and_rerun(pattern, base, tmp_path):
    w, _, _ = base
    killed(pattern, "dataset", str(tmp_path / "pool"), cwd=tmp_path)
    assert not (tmp_path / "pool.gm.json").exists()  # no sidecar: not a dataset yet
    assert kill_writers.dataset([str(tmp_path / "pool")]) == 0
    assert files(tmp_path) == files(w / "ref" / "ds")
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("pattern", [r"/\.model\.tmp\d+/config\.json$", r"/model$"])
def test_influence_model_save_killed_and_rerun(pattern, base, tmp_path):
    w, info, enc = base
    args = [str(tmp_path / "model"), str(enc), info.fingerprint]
    killed(pattern, "influence", *args, cwd=tmp_path)
    assert not (tmp_path / "model").exists()
    assert kill_writers.influence(args) == 0
    assert files(tmp_path) == files(w / "ref" / "m")
    assert not leftovers(tmp_path)


def test_oracle_store_killed_mid_shard_and_rerun(base, tmp_path):
    w, info, _ = base
    args = [str(tmp_path / "store"), info.fingerprint]
    killed(r"/shard-00001\.done$", "oracle", *args, cwd=tmp_path)
    assert (tmp_path / "store" / "shard-00001.npz").exists() and not (
        tmp_path / "store" / "shard-00001.done"
    ).exists()
    assert kill_writers.oracle(args) == 0
    assert files(tmp_path) == files(w / "ref" / "o")
    assert not leftovers(tmp_path)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    import megatron.core  # noqa: F401 - registers the checkpoint's classes for weights_only loading

    it = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    sd = torch.load(ckpt / f"iter_{it:07d}" / "mp_rank_00" / "model_optim_rng.pt", weights_only=True)
    return {k: v for k, v in sd["model"].items() if isinstance(v, torch.Tensor)}


def test_pretraining_torchrun_killed_then_rerun(base, tmp_path):
    """kill -9 of torchrun mid-stage: its workers die with it, the rerun resumes and ends where the
    uninterrupted run ends, with the same weights."""
    w, _, _ = base
    from tests.reliability_fixtures import write_pool

    write_pool(tmp_path / "pool", seed=0)
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir()
    run.mkdir()
    extra = ["--ckpt-format", "torch", "--save-interval", "2", "--train-iters", str(ITERS)]
    rc, err, _, _ = pretrain(ref, flags(ref, tmp_path / "pool", *extra), nproc=1)
    assert rc == 0, err[-3000:]

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
           str(ROOT / "pretrain_gpt_gm.py"), *flags(run, tmp_path / "pool", *extra)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 200
    tracker = run / "ckpt" / "latest_checkpointed_iteration.txt"
    while proc.poll() is None and time.monotonic() < deadline and not tracker.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # torchrun only, as a user's kill -9 of the launcher
    proc.wait()
    at_kill = tracker.read_text().strip()
    no_orphans_within(str(run))
    time.sleep(1)
    assert tracker.read_text().strip() == at_kill, "an orphaned trainer went on saving checkpoints"
    assert int(at_kill) < ITERS, "the kill should land mid-stage"

    rc, err, _, _ = pretrain(run, flags(run, tmp_path / "pool", *extra), nproc=1)  # stale lock: taken over
    assert rc == 0, err[-3000:]
    assert tracker.read_text().strip() == str(ITERS)
    a, b = _weights(ref / "ckpt"), _weights(run / "ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not leftovers(tmp_path)
