import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_gm.data.indexed import compute_fingerprint, load_dataset_info
from megatron_gm.data.preprocess import main as preprocess_main
from megatron_gm.data.tokenizer import build_tokenizer
from megatron_gm.data.train_tokenizer import main as train_main
from tests.fixtures import make_corpus, write_jsonl

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("pp")
    corpus = make_corpus(d / "corpus.jsonl", n_docs=600)
    assert train_main(["--input", str(corpus), "--model-prefix", str(d / "sp"), "--vocab-size", "500"]) == 0
    return d, corpus, str(d / "sp.model")


def run(corpus, model, prefix, *extra):
    return preprocess_main(
        [
            "--input",
            str(corpus),
            "--output-prefix",
            str(prefix),
            "--tokenizer-type",
            "GPTSentencePieceTokenizer",
            "--tokenizer-model",
            model,
            *extra,
        ]
    )


def test_round_trip_through_megatron_indexed_dataset(setup, tmp_path):
    d, corpus, model = setup
    assert run(corpus, model, tmp_path / "out", "--append-eod") == 0
    prefix = tmp_path / "out_text_document"
    ds = IndexedDataset(str(prefix))
    tok = build_tokenizer("GPTSentencePieceTokenizer", model)
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert len(ds) == len(records)
    for i in (0, 1, 299, len(records) - 1):
        expect = tok.tokenize(records[i]["text"]) + [tok.eod]
        np.testing.assert_array_equal(ds[i], expect)
        assert tok.detokenize(list(ds[i][:-1])) == records[i]["text"]
    info = load_dataset_info(prefix)
    assert info.ids[:3] == ["doc0", "doc1", "doc2"] and info.num_docs == len(records)
    assert info.fingerprint == compute_fingerprint(prefix)
    assert info.num_tokens == int(ds.sequence_lengths.sum())
    assert ds.index.dtype == np.uint16


def test_without_eod_and_workers_byte_identical(setup, tmp_path):
    d, corpus, model = setup
    assert run(corpus, model, tmp_path / "w1", "--workers", "1") == 0
    assert run(corpus, model, tmp_path / "w2", "--workers", "2") == 0
    for ext in (".bin", ".idx", ".gm.json"):
        a = (tmp_path / f"w1_text_document{ext}").read_bytes()
        b = (tmp_path / f"w2_text_document{ext}").read_bytes().replace(b"w2_text", b"w1_text")
        assert a == b, ext
    tok = build_tokenizer("GPTSentencePieceTokenizer", model)
    first = json.loads(corpus.read_text().splitlines()[0])["text"]
    ds = IndexedDataset(str(tmp_path / "w1_text_document"))  # keep it alive: items are views of its mmap
    np.testing.assert_array_equal(ds[0], tok.tokenize(first))


def test_bad_lines_are_counted_and_skipped(setup, tmp_path, capsys):
    d, _, model = setup
    lines = [
        {"id": "a", "text": "good one"},
        b"\xff\xfe not utf-8",
        b"{not json",
        {"id": "b", "title": "no text key"},
        {"id": "c", "text": ""},
        b"[1, 2]",
        b"",
        {"id": "d", "text": "good two"},
    ]
    bad = write_jsonl(tmp_path / "bad.jsonl", lines)
    assert run(bad, model, tmp_path / "bad") == 0
    out = capsys.readouterr().out
    assert "docs=2 " in out and "skipped=6" in out
    for reason in ("utf8=1", "json=1", "missing_key=1", "empty=1", "not_object=1", "blank=1"):
        assert reason in out
    assert load_dataset_info(tmp_path / "bad_text_document").ids == ["a", "d"]


def test_multiple_keys_and_gzip(setup, tmp_path):
    d, _, model = setup
    recs = [{"id": i, "title": f"title {i}", "text": f"body number {i} here"} for i in range(5)]
    path = tmp_path / "two.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in recs) + "\n")
    assert run(path, model, tmp_path / "two", "--json-keys", "title", "text") == 0
    t = IndexedDataset(str(tmp_path / "two_title_document"))
    b = IndexedDataset(str(tmp_path / "two_text_document"))
    tok = build_tokenizer("GPTSentencePieceTokenizer", model)
    assert len(t) == len(b) == 5
    np.testing.assert_array_equal(np.array(b[3]), tok.tokenize("body number 3 here"))


def test_errors_leave_nothing_behind(setup, tmp_path, capsys):
    d, corpus, model = setup
    # wrong key: every line skipped -> one-line error, no output
    assert run(corpus, model, tmp_path / "k", "--json-keys", "txt") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--json-keys" in err and "missing_key=600" in err
    assert not list(tmp_path.glob("k_*")) and not list(tmp_path.glob(".tmp*"))
    # missing tokenizer model
    assert run(corpus, str(tmp_path / "missing.model"), tmp_path / "m") == 2
    assert "tokenizer model not found" in capsys.readouterr().err
    # truncated gzip: fails mid-way, nothing left
    gz = gzip.compress(corpus.read_bytes())
    (tmp_path / "trunc.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    assert run(tmp_path / "trunc.jsonl.gz", model, tmp_path / "t") == 2
    assert "unreadable" in capsys.readouterr().err
    assert not list(tmp_path.glob("t_*")) and not list(tmp_path.glob(".tmp*"))


def test_existing_output_refused_unless_overwrite(setup, tmp_path, capsys):
    d, corpus, model = setup
    assert run(corpus, model, tmp_path / "o", "--max-docs", "10") == 0
    before = (tmp_path / "o_text_document.bin").read_bytes()
    assert run(corpus, model, tmp_path / "o") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "o_text_document.bin").read_bytes() == before
    assert run(corpus, model, tmp_path / "o", "--overwrite") == 0
    ds = IndexedDataset(str(tmp_path / "o_text_document"))
    assert len(ds) == 600


@pytest.mark.slow
def test_cli_error_is_one_line_without_traceback(setup, tmp_path):
    d, corpus, _ = setup
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools/preprocess_data.py"),
            "--input",
            str(tmp_path / "nope.jsonl"),
            "--output-prefix",
            str(tmp_path / "x"),
            "--tokenizer-type",
            "NullTokenizer",
            "--vocab-size",
            "100",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert (
        r.stderr.strip().splitlines()[-1]
        == f"error: {tmp_path / 'nope.jsonl'}: input not found; pass a .jsonl, .jsonl.gz, .jsonl.zst or .parquet "
        "file (or a glob) with --input"
    )


@pytest.mark.slow
def test_megatron_written_dataset_is_registered_and_read(tmp_path):
    """The reverse direction: a dataset written by Megatron's own builder gets our sidecar."""
    prefix = str(tmp_path / "meg_text_document")
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    docs = [np.arange(n, dtype=np.int32) for n in (3, 7, 1)]
    for doc in docs:
        builder.add_document(doc, [len(doc)])
    builder.finalize(f"{prefix}.idx")
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools/register_dataset.py"),
            "--data-path",
            prefix,
            "--tokenizer-type",
            "NullTokenizer",
            "--vocab-size",
            "100",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    info = load_dataset_info(prefix)
    assert info.num_docs == 3 and info.num_tokens == 11 and info.fingerprint == compute_fingerprint(prefix)
