"""tools/quality_filter.py: a fastText filter written as a scores folder that select_data.py reads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_gm.data.indexed import write_indexed_dataset
from megatron_gm.data.tokenizer import build_tokenizer, tokenizer_spec
from megatron_gm.data.train_tokenizer import main as train_tokenizer
from megatron_gm.quality.cli import main
from megatron_gm.selection.score_store import write_scores
from tests.fixtures import write_jsonl
from tests.select_helpers import run_tool

ROOT = Path(__file__).resolve().parents[3]
REF = "river city market council season album station energy report music garden winter empire".split()
NOISE = "zorbax quilm fendrix plovet grask wumble trazzo vexum kordal snib yarrow blenth obquo".split()
N_DOCS = 200  # even documents are reference-like, odd ones noise


def doc(rng: np.random.Generator, words: list[str]) -> str:
    body = " ".join(rng.choice(words + ["the", "of", "and"], size=int(rng.integers(30, 60))))
    return body.capitalize() + ".\n\nMore:\t" + " ".join(rng.choice(words, size=5)) + "."


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A SentencePiece-tokenized pool with EOD, positives, and an h-from scores folder of the pool."""
    root = tmp_path_factory.mktemp("qf")
    rng = np.random.default_rng(0)
    texts = [doc(rng, REF if i % 2 == 0 else NOISE) for i in range(N_DOCS)]
    write_jsonl(root / "pool.jsonl", [{"text": t} for t in texts])
    assert train_tokenizer(["--input", str(root / "pool.jsonl"), "--model-prefix", str(root / "tok"),
                            "--vocab-size", "400"]) == 0  # fmt: skip
    tok = build_tokenizer("GPTSentencePieceTokenizer", str(root / "tok.model"))
    spec = tokenizer_spec("GPTSentencePieceTokenizer", str(root / "tok.model"), None)
    info = write_indexed_dataset(
        root / "pool_text_document", [tok.tokenize(t) + [tok.eod] for t in texts], tokenizer=spec, source="t"
    )
    positives = [{"text": doc(rng, REF)} for _ in range(40)]
    bad = [b"{not json", b"", {"text": "   \n "}, {"other": "x"}]
    write_jsonl(root / "ref.jsonl", positives + bad)
    h = rng.standard_normal((N_DOCS, 8)).astype(np.float32)
    write_scores(root / "h", h, np.zeros(N_DOCS, np.float32), alpha=0.5, tau=1.0,
                 dataset_fingerprint=info.fingerprint, model_hash="m", shard_size=64)  # fmt: skip
    write_scores(root / "h_other", h, np.zeros(N_DOCS, np.float32), alpha=0.5, tau=1.0,
                 dataset_fingerprint="0123456789abcdef", model_hash="m", shard_size=64)  # fmt: skip
    write_scores(root / "h_short", h[:-1], np.zeros(N_DOCS - 1, np.float32), alpha=0.5, tau=1.0,
                 dataset_fingerprint=info.fingerprint, model_hash="m", shard_size=64)  # fmt: skip
    return root, h


def args(root: Path, out: str, **extra) -> list[str]:
    a = {"data-path": root / "pool_text_document", "positives": root / "ref.jsonl", "h-from": root / "h"}
    a |= {"output": root / out} | extra
    return [x for k, v in a.items() for x in (f"--{k}", str(v))]


def read_scores(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """h and s straight from the shard files (not through the library)."""
    hs, ss = [], []
    for f in sorted(folder.glob("shard-*.npz")):
        with np.load(f) as z:
            hs.append(z["h"])
            ss.append(z["s"])
    return np.concatenate(hs), np.concatenate(ss)


@pytest.fixture(scope="module")
def filtered(pool):
    root, _ = pool
    assert main(args(root, "qf")) == 0
    return root / "qf"


def test_reference_like_documents_score_lower(pool, filtered):
    root, h = pool
    got_h, s = read_scores(filtered)
    assert s.shape == (N_DOCS,) and s.dtype == np.float32
    assert np.array_equal(got_h, h)  # h copied from --h-from
    top = np.argsort(s, kind="stable")[: N_DOCS // 2]
    assert np.mean(top % 2 == 0) >= 0.9  # even documents are the reference-like ones
    assert np.median(s[0::2]) < np.median(s[1::2])
    manifest = json.loads((filtered / "manifest.json").read_text())
    model_sha = hashlib.sha256((filtered / "fasttext.bin").read_bytes()).hexdigest()
    assert manifest["inputs"]["influence_model"] == model_sha
    assert manifest["config"]["alpha"] == 1.0 and manifest["config"]["tau"] == 1.0
    assert manifest["config"]["num_docs"] == N_DOCS and manifest["config"]["shard_size"] == 64
    report = json.loads((filtered / "quality_filter.json").read_text())
    assert report["counts"]["positives"] == 40
    assert report["counts"]["positives_skipped"] == {"json": 1, "blank": 1, "empty": 1, "missing_key": 1}
    assert report["counts"]["negatives"] == 160  # 4 per positive
    assert report["counts"]["train_examples"] + report["counts"]["holdout_examples"] == 200
    assert not list(root.glob(".qf.tmp*"))


def test_deterministic_and_rerun_is_a_noop(pool, filtered, capsys):
    root, _ = pool
    assert main(args(root, "qf2")) == 0
    assert read_scores(filtered)[1].tobytes() == read_scores(root / "qf2")[1].tobytes()
    assert (filtered / "fasttext.bin").read_bytes() == (root / "qf2" / "fasttext.bin").read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in filtered.iterdir()}
    capsys.readouterr()
    assert main(args(root, "qf")) == 0
    assert "already finished" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in filtered.iterdir()} == before
    (root / ".qf3.tmp99999").mkdir()  # as a killed run leaves it
    assert main(args(root, "qf3", seed=7)) == 0  # another seed: other negatives, other scores
    assert not list(root.glob(".qf3.tmp*"))
    assert read_scores(filtered)[1].tobytes() != read_scores(root / "qf3")[1].tobytes()


def test_log_level_warning_silences_the_info_lines(pool, filtered, capsys):
    root, _ = pool
    capsys.readouterr()
    assert main(args(root, "qf", **{"log-level": "WARNING"})) == 0
    assert capsys.readouterr().err == ""  # at INFO: "quality_filter: ...: already finished ..."
    assert main(args(root, "qf", **{"log-level": "info"})) == 0
    assert capsys.readouterr().err.startswith("quality_filter: ")


def test_select_data_keeps_the_lowest_s(pool, filtered, tmp_path):
    root, _ = pool
    proc = run_tool("--data-path", root / "pool_text_document", "--scores-from", filtered,
                    "--gm-select-method", "individual", "--gm-select-temperature", 0, "--gm-select-ratio", 0.5,
                    "--gm-num-clusters", 2, "--gm-stage", 1, "--output", tmp_path / "sel", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    chosen = np.load(tmp_path / "sel" / "documents.npy")
    assert N_DOCS // 2 - 1 <= len(chosen) <= N_DOCS // 2  # sum of floor(0.5 |C|) over two clusters
    s = read_scores(filtered)[1]
    assert np.array_equal(chosen, np.sort(np.argsort(s, kind="stable")[: len(chosen)]))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"positives": "missing.jsonl"}, "--positives"),
        ({"positives": "bad.jsonl"}, "no usable positives"),
        ({"h-from": "h_other"}, "--h-from"),
        ({"h-from": "h_short"}, "199 docs"),
        ({"h-from": "nowhere"}, "--h-from"),
        ({"data-path": "nope_text_document"}, "--data-path"),
        ({"epoch": "0"}, "--epoch"),
    ],
)
def test_bad_inputs_are_one_line_errors(pool, capsys, change, message):
    root, _ = pool
    write_jsonl(root / "bad.jsonl", [b"{oops", {"text": ""}, {"title": "no text"}])
    a = args(root, "err", **{k: v if k == "epoch" else root / v for k, v in change.items()})
    capsys.readouterr()
    assert main(a) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and message in err[0], err
    assert not (root / "err").exists() and not list(root.glob(".err.tmp*"))


@pytest.mark.slow
def test_tool_exit_code_and_existing_output(pool, tmp_path):
    root, _ = pool
    (tmp_path / "junk").mkdir()
    cmd = [sys.executable, str(ROOT / "tools" / "quality_filter.py"), *args(root, "x")]
    cmd[cmd.index("--output") + 1] = str(tmp_path / "junk")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "not a finished quality-filter output" in lines[0], proc.stderr
