"""Pretraining meets bad input and failures as a cluster does: no hang, no traceback, no orphan.

- Inputs are checked before Megatron starts: the error is one line, last on stderr, exit code 2.
- Under torchrun with ``--exit-signal-handler`` (the pipeline always adds it) and data-loader workers, a
  failure during training used to hang the job forever: Megatron's handler turned SIGTERM into a flag
  in the workers too, and the failing process waited for them at exit. Now every rank ends in seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from megatron_gm.data.selection import save_selection
from megatron_gm.manifest import Manifest
from tests.reliability_fixtures import (
    ROOT,
    VOCAB,
    LockHolder,
    assert_one_line_error,
    copy_pool,
    flip_byte,
    snapshot,
    truncate,
    write_pool,
)

pytestmark = [pytest.mark.megatron, pytest.mark.slow, pytest.mark.timeout(300)]
HANG_LIMIT_S = 60


def flags(w: Path, prefix: Path, *extra: str) -> list[str]:
    return [
        "--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2",
        "--seq-length", "32", "--max-position-embeddings", "32",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "6",
        "--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "1",
        "--seed", "1234", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
        "--data-path", str(prefix), "--split", "98,1,1", "--data-cache-path", str(w / "cache"),
        "--eval-iters", "0", "--eval-interval", "1000", "--log-interval", "1", "--num-workers", "0",
        "--save-interval", "1000", "--save", str(w / "ckpt"), *extra,
    ]  # fmt: skip


def pretrain(w: Path, args: list[str], nproc: int | None = None, timeout: float = 240, launcher: str = ""):
    """``python pretrain_gpt_gm.py`` (nproc None) or under torchrun (``launcher``: another module that
    takes torchrun's arguments); (rc, stderr, seconds, stdout)."""
    cmd = [sys.executable, str(ROOT / "pretrain_gpt_gm.py"), *args]
    if nproc:
        cmd[1:1] = ["-m", launcher or "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=w, env=env, capture_output=True, text=True, errors="replace", timeout=timeout)
    return p.returncode, p.stderr, time.monotonic() - t0, p.stdout


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (orphans of a run in folder ``text``)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def no_orphans_within(text: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(text), f"orphans: {processes_mentioning(text)}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    w = tmp_path_factory.mktemp("runs")
    info = write_pool(w / "pool", seed=0)
    (w / "tok_a.model").write_bytes(b"tokenizer a")
    (w / "tok_b.model").write_bytes(b"tokenizer b, another vocabulary")
    spec = {"type": "GPTSentencePieceTokenizer", "model": str(w / "tok_a.model"),
            "model_sha256": hashlib.sha256(b"tokenizer a").hexdigest()[:16], "vocab_size": None}  # fmt: skip
    write_pool(w / "sp_pool", seed=0, spec=spec)
    docs = np.arange(10, 60, dtype=np.int64)
    save_selection(w / "sel", docs, Manifest("selection", info.fingerprint, stage=0))
    return w


def _tokenizer_of_another_vocabulary(w: Path, t: Path) -> list[str]:
    args = flags(t, w / "sp_pool")
    i = args.index("NullTokenizer")
    args[i : i + 3] = ["GPTSentencePieceTokenizer", "--tokenizer-model", str(w / "tok_b.model")]
    return args


def _half_bin(w: Path, t: Path) -> list[str]:
    prefix = copy_pool(w / "pool", t / "pool")
    truncate(Path(f"{prefix}.bin"))
    return flags(t, prefix)


def _changed_selection(w: Path, t: Path) -> list[str]:
    sel = t / "sel"
    sel.mkdir()
    for name in ("documents.npy", "manifest.json"):
        (sel / name).write_bytes((w / "sel" / name).read_bytes())
    flip_byte(sel / "documents.npy", -8)  # one document index changed by hand
    return flags(t, w / "pool", "--gm-selection", str(sel), "--gm-stage-iters", "3")


CASES = {
    "half_bin_with_sidecar": (_half_bin, ("pool.bin",)),
    "tokenizer_of_another_vocabulary": (_tokenizer_of_another_vocabulary, ("--tokenizer-model",)),
    "vocabulary_smaller_than_the_data": (
        lambda w, t: [*flags(t, w / "pool")[:-2], "--vocab-size", "100", "--save", str(t / "ckpt")],
        ("--vocab-size",),
    ),
    "selection_changed_by_hand": (_changed_selection, ("documents.npy",)),
}
HANG_CASES = ("half_bin_with_sidecar", "tokenizer_of_another_vocabulary")  # run under torchrun below


@pytest.mark.parametrize("case", sorted(set(CASES) - set(HANG_CASES)))
def test_pretraining_checks_inputs_before_megatron_starts(case, env, tmp_path):
    make, names = CASES[case]
    rc, err, _, out = pretrain(tmp_path, make(env, tmp_path))
    assert_one_line_error(rc, err, names)
    assert rc == 2
    assert "---- arguments ----" not in out  # before Megatron's argument dump
    assert not (tmp_path / "ckpt").exists()


def test_save_folder_locked_by_a_live_run_is_refused(env, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("2\n")
    before = snapshot(tmp_path / "ckpt")
    holder = LockHolder(tmp_path / "ckpt")
    try:
        rc, err, _, _ = pretrain(tmp_path, flags(tmp_path, env / "pool"))
    finally:
        holder.stop()
    assert_one_line_error(rc, err, ("another run is writing checkpoints",))
    assert snapshot(tmp_path / "ckpt") == before


@pytest.mark.parametrize("case", HANG_CASES)
def test_the_two_hang_cases_end_in_seconds_with_one_line(case, env, tmp_path):
    """The issue's two hangs, with the flag on, 2 ranks and data-loader workers: one line, all ranks exit.

    Launched through megatron_gm.megatron.launch (torchrun, then our error again as the last line, exit 2).
    """
    make, names = CASES[case]
    args = [*make(env, tmp_path), "--exit-signal-handler", "--num-workers", "2"]
    rc, err, secs, _ = pretrain(
        tmp_path, args, nproc=2, timeout=HANG_LIMIT_S + 60, launcher="megatron_gm.megatron.launch"
    )
    assert secs < HANG_LIMIT_S, secs
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], errors  # rank 0's line, and the launcher's repeat
    assert rc == 2 and err.strip().splitlines()[-1] == errors[0]  # the last line on stderr
    assert any(n in errors[0] for n in names), errors[0]
    assert "[rank0]: Traceback" not in err and "[rank1]: Traceback" not in err  # no worker traceback
    assert re.search(r"exitcode\s*:\s*2", err)  # torchrun saw our exit code
    no_orphans_within(str(tmp_path))


@pytest.mark.parametrize(
    "case, nproc",
    [("error_in_the_training_process", 1), ("error_in_a_data_loader_worker", 2)],
)
def test_a_failure_during_training_ends_every_rank(case, nproc, env, tmp_path):
    """Errors no start-up check can see (a dataset without sidecar): the job ends instead of hanging."""
    prefix = copy_pool(env / "pool", tmp_path / "pool")
    Path(f"{prefix}.gm.json").unlink()
    if case == "error_in_the_training_process":  # token ids beyond the embedding: IndexError in forward
        args = [*flags(tmp_path, prefix)[:-2], "--vocab-size", "100", "--save", str(tmp_path / "ckpt")]
    else:  # .bin cut in half: ValueError while a worker reads a sample
        truncate(Path(f"{prefix}.bin"))
        args = flags(tmp_path, prefix, "--gm-verify-data", "off")
    args += ["--exit-signal-handler", "--num-workers", "2"]
    rc, err, secs, _ = pretrain(tmp_path, args, nproc=nproc, timeout=HANG_LIMIT_S + 60)
    assert rc != 0 and secs < HANG_LIMIT_S, (rc, secs, err[-2000:])
    assert ("IndexError" if nproc == 1 else "DataLoader worker") in err
    no_orphans_within(str(tmp_path))
