"""Megatron's own training loop through pretrain_gpt_gm.py (torchrun, gloo, CPU), two stages.

Stage 0 trains on Megatron's own order and stops at its boundary; stage 1 trains on a selection. One
1-process stage-1 run is the reference; DP=2 (stopped mid-stage and resumed), TP=2 and PP=2 runs from
the same stage-0 checkpoint must consume the same samples and give the same losses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_gm.data.indexed import write_indexed_dataset
from megatron_gm.data.selection import save_selection
from megatron_gm.manifest import Manifest
from megatron_gm.sampler import StageOrder

ROOT = Path(__file__).resolve().parents[3]
VOCAB, SEQ, GBS = 256, 64, 4
STAGE1_START, TRAIN_ITERS = 4, 10
SPEC = {"type": "NullTokenizer", "model": None, "model_sha256": None, "vocab_size": VOCAB}
pytestmark = [pytest.mark.megatron, pytest.mark.slow, pytest.mark.timeout(300)]


def _docs(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    return [np.append(rng.integers(0, VOCAB - 1, rng.integers(20, 200)), VOCAB - 1) for _ in range(n)]


def _flags(w: Path, *extra: str) -> list[str]:
    return [
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", str(SEQ), "--max-position-embeddings", str(SEQ),
        "--micro-batch-size", "2", "--global-batch-size", str(GBS), "--train-iters", str(TRAIN_ITERS),
        "--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "2",
        "--hidden-dropout", "0", "--attention-dropout", "0", "--seed", "1234",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
        "--data-path", str(w / "pool"), "--split", "98,1,1", "--data-cache-path", str(w / "cache"),
        "--eval-iters", "0", "--eval-interval", "1000", "--log-interval", "1", "--num-workers", "0",
        "--save-interval", "1000", "--gm-stage-iters", f"{STAGE1_START},{TRAIN_ITERS}",
        *extra,
    ]  # fmt: skip


def _run(w: Path, nproc: int, *extra: str, expect_rc: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += [str(ROOT / "pretrain_gpt_gm.py"), *_flags(w, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=w, env=env, capture_output=True, text=True, errors="replace", timeout=280)
    _run.count = getattr(_run, "count", 0) + 1
    (w / f"run{_run.count}.log").write_text(f"{' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    if p.returncode != expect_rc:
        raise AssertionError(f"rc {p.returncode} != {expect_rc}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def _losses(p: subprocess.CompletedProcess) -> dict[int, float]:
    """Per-iteration losses from Megatron's log lines.

    Megatron 0.19 does not reset its loss sum after the first logged iteration of a launch, so the
    second line reports the mean of the first two; undo that to compare runs that start elsewhere.
    """
    found = re.findall(r"iteration\s+(\d+)/\s*\d+ \|.*?lm loss: ([0-9.E+-]+)", p.stdout + p.stderr)
    losses = {int(i): float(v) for i, v in found}
    first = sorted(losses)[:2]
    if len(first) == 2:
        losses[first[1]] = 2 * losses[first[1]] - losses[first[0]]
    return losses


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _order(records: list[dict]) -> list[tuple[int, int]]:
    """(position, sample) in stage order; fails on a position taken twice."""
    by_pos = {}
    for r in records:
        assert r["pos"] not in by_pos, f"position {r['pos']} consumed twice"
        by_pos[r["pos"]] = r["sample"]
    return sorted(by_pos.items())


@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    """Pool, selection, the stage-0 run (saved at its boundary) and the 1-process stage-1 reference."""
    w = tmp_path_factory.mktemp("pretrain")
    info = write_indexed_dataset(w / "pool", _docs(0), tokenizer=SPEC, source="test")
    rng = np.random.default_rng(1)
    train_docs = rng.choice(294, 8, replace=False)  # --split 98,1,1: documents 0..293 train
    docs = np.sort(np.append(train_docs, 299))  # 299 lies in the test split: must never be trained on
    save_selection(w / "sel1", docs, Manifest("selection", info.fingerprint, stage=1, iteration=STAGE1_START))
    p0 = _run(w, 1, "--save", str(w / "ck0"), "--gm-record-samples", str(w / "rec0"))
    p1 = _run(
        w, 1, "--load", str(w / "ck0"), "--save", str(w / "ck_ref"), "--gm-stage", "1",
        "--gm-selection", str(w / "sel1"), "--gm-record-samples", str(w / "rec_ref"),
    )  # fmt: skip
    return w, info, np.sort(train_docs), p0, p1


def test_stage0_is_megatrons_order_and_ends_at_its_boundary(stage0):
    w, _, _, p0, _ = stage0
    assert "exiting program at iteration 4" in p0.stdout
    assert (w / "ck0" / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    recs = _records(w / "rec0")
    # Megatron's MegatronPretrainingSampler walks its own train dataset 0, 1, 2, ...: unchanged
    assert [(r["pos"], r["sample"], r["step"]) for r in recs] == [(i, i, i // GBS) for i in range(16)]
    assert sorted(_losses(p0)) == [1, 2, 3, 4]


def test_stage1_trains_exactly_on_the_selection(stage0):
    w, info, train_docs, _, p1 = stage0
    recs = _records(w / "rec_ref")
    order = _order(recs)
    budget = (TRAIN_ITERS - STAGE1_START) * GBS
    assert [pos for pos, _ in order] == list(range(budget))
    n = int(re.search(r"(\d+) samples a pass", p1.stdout).group(1))
    # the stage dataset packs every token of the selected training documents (Megatron drops the tail)
    tokens = sum(len(d) for i, d in enumerate(_docs(0)) if i in set(train_docs.tolist()))
    assert n == (tokens - 1) // SEQ
    assert budget > n  # the budget wraps into a second pass
    samples = [s for _, s in order]
    assert samples == StageOrder(n, seed=1234, stage=1).samples(0, budget).tolist()
    passes = [samples[i : i + n] for i in range(0, budget, n)]
    for chunk in passes:  # each sample once per pass (the last pass may be cut by the budget)
        assert sorted(chunk) == list(range(n)) if len(chunk) == n else len(set(chunk)) == len(chunk)
    assert passes[0] != passes[1]  # each pass freshly shuffled
    trained = {d for r in recs for d in r["docs"]}
    assert trained <= set(train_docs.tolist())  # nothing else (document 299, in the test split, neither)
    assert len(set(train_docs.tolist()) - {d for r in recs if r["pos"] < n for d in r["docs"]}) <= 1
    # stage 1 starts at its first selected sample, right after the boundary
    assert (recs[0]["pos"], recs[0]["step"], recs[0]["sample"]) == (0, STAGE1_START, samples[0])
    assert sorted(_losses(p1)) == list(range(STAGE1_START + 1, TRAIN_ITERS + 1))
    assert "1 of 9 selected documents lie in the validation/test split" in p1.stdout


def test_dp2_stopped_mid_stage_and_resumed_follows_the_reference(stage0):
    w, info, _, _, p1 = stage0
    shared = ["--gm-stage", "1", "--gm-selection", str(w / "sel1"), "--gm-record-samples", str(w / "rec_dp")]
    a = _run(w, 2, "--load", str(w / "ck0"), "--save", str(w / "ck_dp"), "--exit-interval", "7", *shared)
    assert "exiting program at iteration 7" in a.stdout
    # resuming mid-stage on other data is refused (the stage's order would silently change)
    save_selection(w / "sel2", np.arange(10, 30), Manifest("selection", info.fingerprint, stage=1))
    bad = [arg if arg != str(w / "sel1") else str(w / "sel2") for arg in shared]
    r = _run(w, 2, "--load", str(w / "ck_dp"), "--save", str(w / "ck_dp"), *bad, expect_rc=1)
    assert "stage 1 began with other data (selection_digest" in r.stderr and "Traceback (most" not in r.stdout
    b = _run(w, 2, "--load", str(w / "ck_dp"), "--save", str(w / "ck_dp"), *shared)
    recs = _records(w / "rec_dp")
    assert {r["dp_rank"] for r in recs} == {0, 1}
    for step in range(STAGE1_START, TRAIN_ITERS):  # each global batch split into two disjoint slices
        slices = [{r["pos"] for r in recs if r["step"] == step and r["dp_rank"] == k} for k in (0, 1)]
        assert len(slices[0]) == len(slices[1]) == GBS // 2 and not slices[0] & slices[1]
    assert _order(recs) == _order(_records(w / "rec_ref"))
    losses = {**_losses(a), **_losses(b)}
    ref = _losses(p1)
    assert sorted(losses) == sorted(ref)
    np.testing.assert_allclose([losses[i] for i in ref], list(ref.values()), rtol=1e-5)


@pytest.mark.parametrize(
    "layout", [["--tensor-model-parallel-size", "2"], ["--pipeline-model-parallel-size", "2"]]
)
def test_tp2_and_pp2_give_the_reference_losses(stage0, layout):
    w, _, _, _, p1 = stage0
    name = "tp" if "--tensor-model-parallel-size" in layout else "pp"
    rec = w / f"rec_{name}"
    p = _run(
        w, 2, *layout, "--load", str(w / "ck0"), "--save", str(w / f"ck_{name}"), "--gm-stage", "1",
        "--gm-selection", str(w / "sel1"), "--gm-record-samples", str(rec),
    )  # fmt: skip
    ref, got = _losses(p1), _losses(p)
    assert sorted(got) == sorted(ref)
    np.testing.assert_allclose([got[i] for i in ref], list(ref.values()), rtol=1e-5)
    assert _order(_records(rec)) == _order(_records(w / "rec_ref"))  # one recorder per DP rank


def test_selection_of_another_dataset_is_refused_before_training(stage0, tmp_path):
    w, _, _, _, _ = stage0
    other = write_indexed_dataset(tmp_path / "other", _docs(7, 50), tokenizer=SPEC, source="other")
    save_selection(tmp_path / "sel_other", np.arange(5), Manifest("selection", other.fingerprint, stage=1))
    p = _run(
        w, 1, "--load", str(w / "ck0"), "--save", str(tmp_path / "ck"), "--gm-stage", "1",
        "--gm-selection", str(tmp_path / "sel_other"), expect_rc=1,
    )  # fmt: skip
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and other.fingerprint in errors[0] and "sel_other" in errors[0]
    assert re.search(r"exitcode\s*:\s*2", p.stderr)  # our one-line error's exit code, under torchrun
    assert "ManifestMismatch" not in p.stderr and "megatron_gm/" not in p.stderr  # no traceback of ours
    assert not (tmp_path / "ck").exists()


def test_checkpoint_with_another_padded_vocabulary_is_refused(stage0, tmp_path):
    """ck0 (vocabulary padded to 256) into TP=2 with --make-vocab-size-divisible-by 192 (padded to 384)."""
    w, _, _, _, _ = stage0
    p = _run(
        w, 2, "--load", str(w / "ck0"), "--save", str(tmp_path / "ck"), "--gm-stage", "1",
        "--gm-selection", str(w / "sel1"), "--tensor-model-parallel-size", "2",
        "--make-vocab-size-divisible-by", "192", expect_rc=1,
    )  # fmt: skip
    errors = {line for line in p.stderr.splitlines() if line.startswith("error:")}
    assert len(errors) == 1, p.stderr[-3000:]
    assert "padded vocabulary 256 in the checkpoint, 384 in this run" in errors.pop()
    assert not (tmp_path / "ck").exists()


RUNTIME_CHECK = """
import sys
from megatron_gm.megatron import runtime
s = runtime.start(sys.argv[1:])
reports = runtime.forward_losses(s, runtime.train_data_iterator())
total = sum(r["lm loss"][0].item() for r in reports) / sum(r["lm loss"][1].item() for r in reports)
print(f"RESULT iteration={s.iteration} steps={s.scheduler.num_steps} loss={total:.9e}")
"""


def test_in_process_session_loads_the_stage_checkpoint_like_pretrain(stage0):
    """runtime.start + the stage iterator: the first stage-1 batch's loss is pretrain's iteration-5 loss."""
    w, _, _, _, p1 = stage0
    script = w / "runtime_check.py"
    script.write_text(f"if __name__ == '__main__':\n{_indent(RUNTIME_CHECK)}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", str(script)]
    cmd += _flags(w, "--load", str(w / "ck0"), "--gm-stage", "1", "--gm-selection", str(w / "sel1"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=w, env=env, capture_output=True, text=True, errors="replace", timeout=280)
    m = re.search(r"RESULT iteration=(\d+) steps=(\d+) loss=(\S+)", p.stdout)
    assert m, p.stdout[-2000:] + p.stderr[-4000:]
    assert (int(m.group(1)), int(m.group(2))) == (STAGE1_START, STAGE1_START * GBS)
    assert float(m.group(3)) == pytest.approx(_losses(p1)[STAGE1_START + 1], rel=1e-6)


def _indent(code: str) -> str:
    return "".join(f"    {line}\n" for line in code.strip().splitlines())
