"""In-training evaluation (--gm-eval-pack): the rows it logs, that it leaves training untouched, and that its
losses equal tools/evaluate.py's on the checkpoint saved at the same iteration."""

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
from megatron_gm.data.reference import prompts_from_jsonl, windows_from_jsonl
from megatron_gm.evalpack import load_pack, save_pack, windows_from_dataset
from megatron_gm.megatron.eval_hook import read_log

ROOT = Path(__file__).resolve().parents[3]
VOCAB, SEQ = 64, 16
SPEC = {"type": "NullTokenizer", "model": None, "model_sha256": None, "vocab_size": VOCAB}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
pytestmark = [pytest.mark.megatron, pytest.mark.slow, pytest.mark.timeout(400)]


def _tokenize(text: str) -> list[int]:
    return [int(t) for t in text.split()]


def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _pretrain(tmp: Path, save: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
        str(ROOT / "pretrain_gpt_gm.py"), "--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2",
        "--ffn-hidden-size", "32", "--seq-length", str(SEQ), "--max-position-embeddings", str(SEQ),
        "--hidden-dropout", "0", "--attention-dropout", "0", "--tokenizer-type", "NullTokenizer",
        "--vocab-size", str(VOCAB), "--data-path", str(tmp / "pool"), "--micro-batch-size", "2",
        "--global-batch-size", "2", "--train-iters", "6", "--lr", "1e-2", "--lr-decay-style", "constant",
        "--split", "90,10,0", "--eval-iters", "0", "--eval-interval", "1000", "--num-workers", "0",
        "--save", str(save), "--save-interval", "3", "--log-interval", "1", *extra,
    ]  # fmt: skip
    p = subprocess.run(cmd, cwd=tmp, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def _lm_losses(stdout: str) -> list[str]:
    return re.findall(r"lm loss: ([0-9.E+-]+)", stdout)


def test_pack_round_trip_and_checks(tmp_path):
    tokens = np.arange(2 * (SEQ + 1)).reshape(2, SEQ + 1)
    mask = np.ones((2, SEQ), dtype=np.float32)
    save_pack(tmp_path / "p.npz", {"a": (tokens, mask, "windows")}, {"note": "x"})
    sets, meta = load_pack(tmp_path / "p.npz", SEQ)
    assert meta == {"note": "x"} and sets["a"][2] == "windows"
    np.testing.assert_array_equal(sets["a"][0], tokens)
    with pytest.raises(Exception, match="rebuild the pack for this sequence length"):
        load_pack(tmp_path / "p.npz", SEQ * 2)


def test_hook_logs_and_matches_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(0, VOCAB - 1, rng.integers(5, 30)), VOCAB - 1) for _ in range(60)]
    write_indexed_dataset(tmp_path / "pool", docs, tokenizer=SPEC, source="test")
    ref = _write(
        tmp_path / "ref.jsonl",
        [{"text": " ".join(map(str, rng.integers(0, VOCAB - 1, 40)))} for _ in range(3)],
    )
    lam = _write(
        tmp_path / "lam.jsonl", [{"context": "1 2 3 4", "target": "5 6"}, {"context": "7 8", "target": "9"}]
    )
    ref_w = windows_from_jsonl(str(ref), _tokenize, VOCAB - 1, SEQ)
    assert ref_w[0].shape == (8, SEQ + 1)  # 3 x 41 tokens -> ceil(122 / 16) windows, the last one padded
    pool_w = windows_from_dataset(str(tmp_path / "pool"), (54, 60), SEQ)
    stream = sum(len(d) for d in docs[54:60])
    assert pool_w[0].shape == ((stream - 1) // SEQ, SEQ + 1)
    np.testing.assert_array_equal(pool_w[0][0], np.concatenate(docs[54:60])[: SEQ + 1])
    pack = tmp_path / "pack.npz"
    save_pack(pack, {"ref": (*ref_w, "windows"), "lam": (*prompts_from_jsonl(str(lam), _tokenize, SEQ), "prompts"),
                     "pool": (*pool_w, "windows")}, {})  # fmt: skip

    with_hook = _pretrain(tmp_path, tmp_path / "ck", "--gm-eval-pack", str(pack), "--gm-eval-points", "3")
    plain = _pretrain(tmp_path, tmp_path / "ck_plain")
    assert _lm_losses(with_hook.stdout) == _lm_losses(plain.stdout) and len(_lm_losses(plain.stdout)) == 6
    rows = read_log(tmp_path / "ck" / "gm_eval.jsonl")
    assert [r["iteration"] for r in rows] == [2, 4, 6]
    assert rows[-1]["consumed_tokens"] == 6 * 2 * SEQ
    assert set(rows[-1]["sets"]) == {"ref", "lam", "pool"} and rows[-1]["sets"]["lam"]["target_tokens"] == 3
    assert rows[0]["sets"]["ref"]["loss"] != rows[-1]["sets"]["ref"]["loss"]

    out = tmp_path / "eval.json"
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), "--load", str(tmp_path / "ck"),
                        "--gm-eval-ref", str(ref), "--gm-eval-ref-samples", "1000", "--gm-eval-prompts", str(lam),
                        "--gm-eval-iterations", "6", "--gm-eval-output", str(out)],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=200)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    ev = json.loads(out.read_text())["results"][0]
    assert rows[-1]["sets"]["ref"]["loss"] == pytest.approx(ev["reference"]["loss"], rel=1e-5)
    assert rows[-1]["sets"]["lam"]["loss"] == pytest.approx(ev["prompts"]["loss"], rel=1e-5)


def test_bad_eval_flags_fail_in_one_line(tmp_path):
    write_indexed_dataset(
        tmp_path / "pool", [np.arange(20) % (VOCAB - 1)] * 10, tokenizer=SPEC, source="test"
    )
    cmd = [sys.executable, str(ROOT / "pretrain_gpt_gm.py"), "--num-layers", "1", "--hidden-size", "16",
           "--num-attention-heads", "2", "--seq-length", str(SEQ), "--max-position-embeddings", str(SEQ),
           "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--data-path", str(tmp_path / "pool"),
           "--micro-batch-size", "2", "--train-iters", "2", "--save", str(tmp_path / "ck"), "--save-interval", "5",
           "--gm-eval-pack", str(tmp_path / "missing.npz"), "--gm-eval-interval", "1"]  # fmt: skip
    env = {
        **ENV,
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29555",
    }
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)
    assert p.returncode == 2 and "missing.npz: file not found" in p.stderr
