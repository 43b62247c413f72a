"""tools/collect_oracle.py on Megatron (torchrun, gloo, CPU) from a stage-0 checkpoint of pretrain_gpt_gm.py.

One 1-process collection is the reference store. DP=2 must give the same store bit for bit (trajectories
are split, gradients never mixed), TP=2 and PP=2 the same labels within float tolerance; a run killed
mid-collection and rerun must equal it; an in-process probe (twice) must reproduce it and match one
explicit pretraining step (Megatron's own train_step) with the reference loss measured by hand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from megatron_gm.data.indexed import write_indexed_dataset
from megatron_gm.dist import free_port
from megatron_gm.oracle.store import load_oracle

ROOT = Path(__file__).resolve().parents[3]
VOCAB, SEQ, N, T, SHARD = 256, 32, 24, 3, 2
SPEC = {"type": "NullTokenizer", "model": None, "model_sha256": None, "vocab_size": VOCAB}
pytestmark = [pytest.mark.megatron, pytest.mark.slow, pytest.mark.timeout(300)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _docs(n: int = 120):
    rng = np.random.default_rng(0)
    return [np.append(rng.integers(0, VOCAB - 1, rng.integers(5, 60)), VOCAB - 1) for _ in range(n)]


def _write_reference(path: Path) -> Path:
    rng = np.random.default_rng(1)
    recs = [{"text": " ".join(map(str, rng.integers(0, VOCAB - 1, 50)))} for _ in range(4)]
    recs += [{"context": "3 4 5 6 7", "target": "8 9"}, {"context": "10 11", "target": "12 13 14"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _model_flags(w: Path) -> list[str]:
    return [
        "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2", "--ffn-hidden-size", "64",
        "--seq-length", str(SEQ), "--max-position-embeddings", str(SEQ),
        "--hidden-dropout", "0", "--attention-dropout", "0", "--seed", "1234",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--data-path", str(w / "pool"),
    ]  # fmt: skip


def _pretrain_cmd(w: Path, save: Path, *extra: str) -> list[str]:
    flags = [
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "8", "--gm-stage-iters", "4",
        "--lr", "3e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "1",
        "--weight-decay", "0.1", "--clip-grad", "0.5", "--split", "90,5,5", "--data-cache-path", str(w / "cache"),
        "--eval-iters", "0", "--eval-interval", "1000", "--log-interval", "1", "--num-workers", "0",
        "--save", str(save), "--save-interval", "1000", *extra,
    ]  # fmt: skip
    return _torchrun(1, ROOT / "pretrain_gpt_gm.py") + _model_flags(w) + flags


def _torchrun(nproc: int, script: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(script),
    ]


def _collect_flags(w: Path, out: Path, *extra: str, load: Path | None = None) -> list[str]:
    return _model_flags(w) + [
        "--micro-batch-size", "1", "--load", str(load or w / "ck"),
        "--gm-oracle-ref-data", str(w / "ref.jsonl"), "--gm-oracle-ref-samples", "6",
        "--gm-oracle-ref-micro-batch-size", "3", "--gm-oracle-trajectories", str(N), "--gm-oracle-T", str(T),
        "--gm-oracle-shard-size", str(SHARD), "--gm-oracle-output", str(out), *extra,
    ]  # fmt: skip


def _check(p: subprocess.CompletedProcess, w: Path, name: str, rc: int = 0) -> subprocess.CompletedProcess:
    (w / f"{name}.log").write_text(f"{p.args}\n{p.stdout}\n{p.stderr}")
    if p.returncode != rc:
        raise AssertionError(f"{name}: rc {p.returncode} != {rc}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def _run(cmd: list[str], w: Path, name: str, rc: int = 0) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=w, env=ENV, capture_output=True, text=True, errors="replace", timeout=280)
    return _check(p, w, name, rc)


def _collect(w: Path, out: Path, nproc: int = 1, *extra: str) -> subprocess.CompletedProcess:
    return _run(
        _torchrun(nproc, ROOT / "tools" / "collect_oracle.py") + _collect_flags(w, out, *extra), w, out.name
    )


def _summary(p: subprocess.CompletedProcess) -> dict:
    m = re.search(r"oracle summary: (\{.*\})", p.stdout)
    assert m, p.stdout[-2000:]
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Pool, reference set, stage-0 checkpoints (with and without optimizer state), the reference store."""
    w = tmp_path_factory.mktemp("oracle")
    info = write_indexed_dataset(w / "pool", _docs(), tokenizer=SPEC, source="test")
    _write_reference(w / "ref.jsonl")
    runs = {
        "ck": _pretrain_cmd(w, w / "ck"),
        "ck_noopt": _pretrain_cmd(w, w / "ck_noopt", "--no-save-optim"),
    }
    procs = {k: subprocess.Popen(c, cwd=w, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 errors="replace") for k, c in runs.items()}  # fmt: skip
    for k, p in procs.items():
        out, err = p.communicate(timeout=280)
        _check(subprocess.CompletedProcess(runs[k], p.returncode, out, err), w, f"pretrain_{k}")
    summary = _summary(_collect(w, w / "one"))
    return w, info, load_oracle(w / "one", dataset_fingerprint=info.fingerprint), summary


def test_reference_store(env):
    w, info, one, summary = env
    assert summary["complete"] and summary["iteration"] == 4 and summary["trajectories"] == N
    assert one.traj_id.tolist() == list(range(N)) and one.T == T
    m = one.manifest
    assert (m.kind, m.stage, m.iteration, m.dataset_fingerprint) == ("oracle", 0, 4, info.fingerprint)
    assert m.config["num_shards"] == N // SHARD and m.config["policy"] == "random" and m.seed == 1234
    assert m.config["reference_hash"] == m.inputs["reference"] and m.config["reference_samples"] == 6
    assert np.allclose(one.labels, np.diff(one.ref_loss, axis=1), atol=1e-5)
    assert np.all(one.ref_loss[:, 0] == one.ref_loss[0, 0])  # every trajectory starts from the checkpoint
    assert np.std(one.labels) > 0 and np.all(np.isfinite(one.labels))
    assert all(len(set(row)) == T for row in one.documents)
    written = json.loads((w / "one" / "summary.json").read_text())  # completion marker, written last
    assert written["labels"]["count"] == N * T and written["complete"]


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_tensor_and_pipeline_parallel_labels_match_one_process(env, layout):
    w, _, one, _ = env
    extra = {"tp2": ["--tensor-model-parallel-size", "2"], "pp2": ["--pipeline-model-parallel-size", "2"]}
    summary = _summary(_collect(w, w / layout, 2, *extra[layout]))
    other = load_oracle(w / layout)
    assert summary["data_parallel_groups"] == 1
    assert np.array_equal(other.traj_id, one.traj_id) and np.array_equal(other.documents, one.documents)
    scale = np.abs(one.labels).mean()
    assert np.allclose(other.ref_loss, one.ref_loss, rtol=0, atol=1e-5)
    assert np.abs(other.labels - one.labels).max() < 1e-3 * scale + 1e-6


def test_killed_collection_resumed_with_two_data_parallel_groups_equals_one_process(env):
    """Kill a 1-process run mid-collection; rerun with DP=2: the same store, bit for bit.

    DP groups probe their own trajectories: one all-reduced gradient would change the labels.
    """
    w, _, one, _ = env
    out = w / "killed"
    cmd = [sys.executable, str(ROOT / "tools" / "collect_oracle.py"), *_collect_flags(w, out)]
    one_process = {**ENV, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(free_port())}  # fmt: skip
    p = subprocess.Popen(cmd, cwd=w, env=one_process, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 200
    while not list(out.glob("*.done")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.kill()
    p.wait()
    done = len(list(out.glob("*.done")))
    assert 0 < done < N // SHARD, f"{done} shards done when killed"
    assert not (out / "summary.json").exists()
    summary = _summary(_collect(w, out, 2))
    assert summary["data_parallel_groups"] == 2 and summary["complete"]
    assert summary["trajectories"] == (N // SHARD - done + 1) // 2 * SHARD  # rank 0's share of the rest
    again = load_oracle(out)
    for k in ("traj_id", "documents", "labels", "ref_loss"):
        assert np.array_equal(getattr(again, k), getattr(one, k)), k


HAND_CHECK = r"""
import json, sys
import numpy as np
import torch
from megatron_gm.megatron import gpt, runtime
from megatron_gm.oracle import cli
from megatron_gm.oracle.collect import probe_trajectory
from megatron_gm.oracle.megatron_engine import MegatronEngine
from megatron_gm.megatron.samples import SampleFormat

p = cli.prepare(sys.argv[1:])
args, cfg, ckpt, dataset, source, ref, tok = p.args, p.cfg, p.ckpt, p.dataset, p.source, p.reference, p.tokenizer
args.use_checkpoint_opt_param_scheduler = True
runtime.initialize()
s = runtime.build(args)
eng = MegatronEngine(s, dataset, SampleFormat.from_args(args, tok.eod), ref, ref_micro_batch_size=3,
                     scheduler_increment=ckpt.saved("global_batch_size"))
docs = source.documents([0])[0]
base = eng.reference_loss()
rows = eng.reference_example_losses()
l1, _ = probe_trajectory(eng, docs, base, cfg.seed, 0)
l2, _ = probe_trajectory(eng, docs, base, cfg.seed, 0)
eng.restore()

def hand_ref_loss(per_example=None):
    model = s.model[0]
    model.eval()
    total = count = 0.0
    causal = torch.tril(torch.ones(1, 1, args.seq_length, args.seq_length)) < 0.5
    with torch.no_grad():
        for t, m in zip(ref.tokens, ref.mask):
            t = torch.from_numpy(t)[None]
            out = model(t[:, :-1], torch.arange(args.seq_length)[None], causal, labels=t[:, 1:])
            total += float((out.double().numpy() * m).sum())
            count += float(m.sum())
            if per_example is not None:
                per_example.append([float((out.double().numpy() * m).sum()), float(m.sum())])
    model.train()
    return total / count

hand_rows = []
before = hand_ref_loss(hand_rows)
doc = dataset[int(docs[0])][: args.seq_length + 1].astype(np.int64)
text = np.zeros(args.seq_length + 1, dtype=np.int64)
text[: len(doc)] = doc
mask = np.zeros(args.seq_length, dtype=np.float32)
mask[: len(doc) - 1] = 1
batch = {"tokens": torch.from_numpy(text[:-1])[None], "labels": torch.from_numpy(text[1:])[None],
         "loss_mask": torch.from_numpy(mask)[None], "position_ids": torch.arange(args.seq_length)[None],
         "attention_mask": torch.tril(torch.ones(1, 1, args.seq_length, args.seq_length)) < 0.5}
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.rerun_state_machine import RerunDataIterator
from megatron.core.utils import get_model_config
from megatron.training.training import train_step
config = get_model_config(s.model[0])
config.finalize_model_grads_func = finalize_model_grads
lr = s.optimizer.param_groups[0]["lr"]
out = train_step(gpt.forward_step, RerunDataIterator(iter([batch])), s.model, s.optimizer, s.scheduler, config,
                 get_forward_backward_func(), iteration=ckpt.iteration)
after = hand_ref_loss()
print("RESULT " + json.dumps({"rows": rows.tolist(), "hand_rows": hand_rows,
                              "layout": ref.layout, "lengths": ref.sample_lengths.tolist(),
                              "l1": l1.tolist(), "l2": l2.tolist(), "base": base, "before": before,
                              "after": after, "lr": lr, "grad_norm": float(out[5]), "clip": args.clip_grad}))
"""


def test_restore_is_exact_and_label_is_one_pretraining_step(env):
    """Probe trajectory 0 twice in one process; then by hand: Megatron's train_step on its first document."""
    w, _, one, _ = env
    script = w / "hand_check.py"
    script.write_text(HAND_CHECK)
    p = _run(_torchrun(1, script) + _collect_flags(w, w / "unused"), w, "hand_check")
    r = json.loads(re.search(r"RESULT (\{.*\})", p.stdout).group(1))
    assert r["l1"] == r["l2"]  # restore is exact: the same labels, bit for bit
    assert np.allclose(np.float32(r["l1"]), one.labels[0], rtol=0, atol=1e-7)
    assert r["base"] == pytest.approx(r["before"], rel=1e-6)
    # the natural layout ran shorter buckets than seq_length; per-example losses match the padded ones
    assert r["layout"] == "natural" and min(r["lengths"]) < SEQ + 1
    rows, hand = np.asarray(r["rows"]), np.asarray(r["hand_rows"])
    assert np.array_equal(rows[:, 1], hand[:, 1])
    np.testing.assert_allclose(rows[:, 0], hand[:, 0], rtol=1e-6)
    assert rows[:, 0].sum() / rows[:, 1].sum() == pytest.approx(r["base"], rel=1e-12)
    assert 1e-4 < r["lr"] < 3e-3 and r["grad_norm"] > r["clip"]  # mid-schedule LR, clipping active
    by_hand = r["after"] - r["before"]
    assert by_hand != 0 and np.sign(by_hand) == np.sign(r["l1"][0])
    assert r["l1"][0] == pytest.approx(by_hand, rel=1e-4, abs=1e-6)


BAD_INPUTS = r"""
import sys
from megatron_gm.oracle import cli
for argv in (sys.argv[1:sys.argv.index("--next")], sys.argv[sys.argv.index("--next") + 1:]):
    print("rc", cli.main(argv), flush=True)
    print("error line printed above", file=sys.stderr, flush=True)
"""


def test_bad_input_is_one_line_before_megatron_starts(env, tmp_path):
    """A checkpoint without optimizer state, a reference set without usable tokens, T < 1."""
    w, _, _, _ = env
    (tmp_path / "empty.jsonl").write_text('{"text": "  "}\n{"context": "1 2", "target": ""}\nnot json\n')
    p = _run([sys.executable, str(ROOT / "tools" / "collect_oracle.py"),
              *_collect_flags(w, tmp_path / "a", "--gm-oracle-T", "0")], tmp_path, "T0", rc=2)  # fmt: skip
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--gm-oracle-T 0: a trajectory needs at least one step" in errors[0]
    assert "Traceback" not in p.stderr
    script = tmp_path / "bad_inputs.py"
    script.write_text(BAD_INPUTS)
    no_opt = _collect_flags(w, tmp_path / "b", load=w / "ck_noopt")
    empty = _collect_flags(w, tmp_path / "c", "--gm-oracle-ref-data", str(tmp_path / "empty.jsonl"))
    p = _run([sys.executable, str(script), *no_opt, "--next", *empty], tmp_path, "bad_inputs")
    assert p.stdout.count("rc 2") == 2 and "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert "ck_noopt/iter_0000004: checkpoint has no optimizer state" in errors[0]
    assert "empty.jsonl: no usable reference tokens" in errors[1]
    assert not any((tmp_path / d).exists() for d in "abc")  # nothing written
