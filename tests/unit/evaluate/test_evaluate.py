"""megatron_gm/evaluate.py: loss/accuracy by hand on a toy model, then on a Megatron checkpoint of
pretrain_gpt_gm.py against Megatron's own per-token loss (a direct forward with labels)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_gm.data.indexed import write_indexed_dataset
from megatron_gm.data.reference import prompt_samples
from megatron_gm.megatron.samples import SampleFormat
from megatron_gm.megatron.scoring import prompt_metrics, score_samples

ROOT = Path(__file__).resolve().parents[3]
VOCAB, SEQ = 64, 16
SPEC = {"type": "NullTokenizer", "model": None, "model_sha256": None, "vocab_size": VOCAB}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


def _tokenize(text: str) -> list[int]:
    return [int(t) for t in text.split()]


class Bigram(torch.nn.Module):
    """logits[t] = table[token t]: next-token probabilities by hand."""

    def __init__(self, vocab: int = VOCAB):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, tokens, position_ids, attention_mask):
        return self.table[tokens]


def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_prompt_loss_and_accuracy_by_hand(tmp_path):
    model = Bigram()
    with torch.no_grad():  # make 5 -> 6 -> 7 the argmax chain
        model.table[5, 6] = model.table[6, 7] = 50.0
    recs = [{"context": "1 2 5", "target": "6 7"}, {"context": "9 9 9 5", "target": "6 8"}]
    tokens, mask, skipped = prompt_samples(str(_write(tmp_path / "p.jsonl", recs)), _tokenize, SEQ)
    assert skipped == 0 and mask.sum(1).tolist() == [2, 2]  # only the target tokens count
    s = score_samples(model, tokens, mask, SampleFormat(seq_length=SEQ, eod=VOCAB - 1), VOCAB, batch=1)
    logp = torch.log_softmax(model.table.detach().double(), -1)
    hand = [[-logp[5, 6], -logp[6, 7]], [-logp[5, 6], -logp[6, 8]]]
    assert np.allclose(s.loss_sum, [float(sum(h)) for h in hand], rtol=1e-6)
    assert s.all_correct.tolist() == [True, False]  # 6 8: the argmax after 6 is 7
    m = prompt_metrics(s)
    assert m["accuracy"] == 0.5 and m["target_tokens"] == 4
    assert m["loss"] == pytest.approx(float(sum(map(sum, hand))) / 4, rel=1e-6)
    # the context is masked: changing its earlier tokens leaves a bigram model's target loss unchanged
    t2, m2, _ = prompt_samples(
        str(_write(tmp_path / "q.jsonl", [{"context": "3 3 5", "target": "6 7"}])), _tokenize, SEQ
    )
    s2 = score_samples(model, t2, m2, SampleFormat(seq_length=SEQ, eod=VOCAB - 1), VOCAB)
    assert s2.loss_sum[0] == pytest.approx(s.loss_sum[0], rel=1e-9)


HAND = r"""
import json, sys
import numpy as np, torch
from megatron_gm import evaluate as E
p = E.prepare(sys.argv[1:])
out = E.run(p)
model = p.session.model[0]
model.eval()
def direct(tokens, mask):
    total = count = 0.0
    causal = torch.tril(torch.ones(1, 1, SEQ, SEQ)) < 0.5
    with torch.no_grad():
        for t, m in zip(tokens, mask):
            t = torch.from_numpy(t)[None]
            losses = model(t[:, :-1], torch.arange(SEQ)[None], causal, labels=t[:, 1:])  # Megatron's loss
            total += float((losses.double().numpy() * m).sum()); count += float(m.sum())
    return total / count
print("RESULT " + json.dumps({"out": out, "ref": direct(p.reference.tokens, p.reference.mask),
                              "prompts": direct(p.prompts[0], p.prompts[1])}))
""".replace("SEQ", str(SEQ))


@pytest.mark.timeout(240)
@pytest.mark.megatron
@pytest.mark.slow
def test_megatron_checkpoint_matches_direct_forward(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(0, VOCAB - 1, rng.integers(5, 30)), VOCAB - 1) for _ in range(40)]
    write_indexed_dataset(tmp_path / "pool", docs, tokenizer=SPEC, source="test")
    model = ["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2", "--ffn-hidden-size", "32",
             "--seq-length", str(SEQ), "--max-position-embeddings", str(SEQ), "--hidden-dropout", "0",
             "--attention-dropout", "0", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB)]  # fmt: skip
    ck = tmp_path / "ck"
    pretrain = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
        str(ROOT / "pretrain_gpt_gm.py"), *model, "--data-path", str(tmp_path / "pool"),
        "--micro-batch-size", "2", "--global-batch-size", "2", "--train-iters", "6", "--lr", "1e-2",
        "--lr-decay-style", "constant", "--split", "100,0,0", "--eval-iters", "0", "--eval-interval", "1000",
        "--num-workers", "0", "--save", str(ck), "--save-interval", "3", "--log-interval", "1",
    ]  # fmt: skip
    p = subprocess.run(pretrain, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=200)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = _write(
        tmp_path / "ref.jsonl",
        [{"text": " ".join(map(str, rng.integers(0, VOCAB - 1, 40)))} for _ in range(3)],
    )
    prompts = _write(
        tmp_path / "lam.jsonl", [{"context": "1 2 3 4", "target": "5 6"}, {"context": "7 8", "target": "9"}]
    )
    script = tmp_path / "hand.py"
    script.write_text(HAND)
    flags = ["--load", str(ck), "--gm-eval-ref", str(ref), "--gm-eval-prompts", str(prompts),
             "--gm-eval-iterations", "3,6", "--gm-eval-output", str(tmp_path / "eval.json")]  # fmt: skip
    p = subprocess.run([sys.executable, str(script), *flags], cwd=tmp_path, env=ENV, capture_output=True,
                       text=True, timeout=200)  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    r = json.loads(re.search(r"RESULT (\{.*\})", p.stdout).group(1))
    rows = r["out"]["results"]
    assert [row["iteration"] for row in rows] == [3, 6]
    assert rows[0]["reference"]["loss"] != rows[1]["reference"]["loss"]  # iteration 3 really was reloaded
    assert rows[1]["reference"]["loss"] == pytest.approx(r["ref"], rel=1e-5)  # model now at 6
    assert rows[1]["prompts"]["loss"] == pytest.approx(r["prompts"], rel=1e-5)
    assert rows[1]["prompts"]["target_tokens"] == 3 and rows[1]["reference"]["tokens"] == 3 * 41 - 1 - 0 * SEQ
    assert json.loads((tmp_path / "eval.json").read_text())["results"] == rows
    # bad input: one line, exit 2, before Megatron starts
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), "--load", str(ck), "--gm-eval-ref",
                          str(tmp_path / "missing.jsonl")], env=ENV, capture_output=True, text=True, timeout=100)  # fmt: skip
    assert bad.returncode == 2 and "missing.jsonl: file not found" in bad.stderr
