"""Input formats (.jsonl, .gz, .zst, parquet, globs), exact fast tokenization, bad data, register_dataset."""

import gzip
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_gm.data import fast_encode
from megatron_gm.data.indexed import load_dataset_info
from megatron_gm.data.jsonl import iter_records
from megatron_gm.data.preprocess import add_block
from megatron_gm.data.preprocess import main as preprocess_main
from megatron_gm.data.register import main as register_main
from megatron_gm.data.tokenizer import build_tokenizer
from megatron_gm.data.train_tokenizer import main as train_main
from tests.fixtures import make_corpus, write_jsonl

ROOT = Path(__file__).resolve().parents[3]
TRICKY = [
    "",
    "plain words here",
    "  two leading spaces",
    "trailing spaces   ",
    "double  inner   spaces",
    " ",
    "   ",
    "tabs\tand\nnew\n\nlines \n end",
    "naïve café — 😀 ünïcödé 中文字符 ﬁ ligature",
    "digits 1234567 and 3.14159",
    "x",
    "",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmt")
    corpus = make_corpus(d / "corpus.jsonl", n_docs=300, seed=3)
    assert train_main(["--input", str(corpus), "--model-prefix", str(d / "bpe"), "--vocab-size", "400"]) == 0
    args = ["--input", str(corpus), "--model-prefix", str(d / "uni"), "--vocab-size", "400"]
    assert train_main(args + ["--model-type", "unigram"]) == 0
    return d, corpus


def _pp(inputs, prefix, model, *extra):
    return preprocess_main(
        ["--input", *map(str, inputs), "--output-prefix", str(prefix), "--tokenizer-type"]
        + ["GPTSentencePieceTokenizer", "--tokenizer-model", str(model), "--append-eod", *extra]
    )


def _bytes(prefix):
    return [Path(f"{prefix}_text_document{e}").read_bytes() for e in (".bin", ".idx")]


def test_model_facts_of_our_trained_models(env):
    d, _ = env
    bpe = fast_encode.sentencepiece_model_facts((d / "bpe.model").read_bytes())
    # train_tokenizer.py's settings: BPE (2), identity normalisation, whitespace kept, 400 pieces
    assert bpe["model_type"] == 2 and bpe["normalizer"] == "identity"
    assert bpe["remove_extra_whitespaces"] is False and bpe["add_dummy_prefix"] is True
    assert len(bpe["pieces"]) == 400 and bpe["pieces"][0] == ("<unk>", 2)
    assert fast_encode.words_path_reason(bpe) is None
    uni = fast_encode.sentencepiece_model_facts((d / "uni.model").read_bytes())
    assert uni["model_type"] == 1 and fast_encode.words_path_reason(uni) == "not a BPE model"
    bad = dict(bpe, pieces=bpe["pieces"] + [("a▁b", 1)])
    assert "spans a word boundary" in fast_encode.words_path_reason(bad)


@pytest.mark.parametrize("name,path", [("bpe", "words"), ("uni", "batch")])
def test_fast_encoders_match_megatron_tokenize(env, name, path, monkeypatch):
    d, corpus = env
    tok = build_tokenizer("GPTSentencePieceTokenizer", str(d / f"{name}.model"))
    enc = fast_encode.make_encoder(tok, str(d / f"{name}.model"))
    assert enc.path == path
    texts = [json.loads(x)["text"] for x in corpus.read_text().splitlines()] + TRICKY
    monkeypatch.setattr(fast_encode, "MAX_WORDS", 150)  # forget words between chunks: still exact
    for _ in range(2):  # second pass: every word remembered (or forgotten and learnt again)
        for start in range(0, len(texts), 64):
            chunk = texts[start : start + 64]
            tokens, lengths = enc.encode(chunk)
            assert lengths.tolist() == [len(tok.tokenize(t)) for t in chunk]
            assert tokens.tolist() == [i for t in chunk for i in tok.tokenize(t)]
    generic = fast_encode.GenericEncoder(tok)
    assert generic.encode(TRICKY)[0].tolist() == [i for t in TRICKY for i in tok.tokenize(t)]


def test_add_block_equals_add_document(tmp_path):
    docs = [np.array(x, dtype=np.int64) for x in ([5, 6, 7], [1], [9, 9, 9, 9], [3, 2])]
    a = IndexedDatasetBuilder(str(tmp_path / "a.bin"), dtype=np.uint16)
    for doc in docs:
        a.add_document(doc, [len(doc)])
    a.finalize(str(tmp_path / "a.idx"))
    b = IndexedDatasetBuilder(str(tmp_path / "b.bin"), dtype=np.uint16)
    add_block(b, np.concatenate(docs[:3]), np.array([3, 1, 4]))
    add_block(b, docs[3], np.array([2]))
    b.finalize(str(tmp_path / "b.idx"))
    for e in (".bin", ".idx"):
        assert (tmp_path / f"a{e}").read_bytes() == (tmp_path / f"b{e}").read_bytes()


def _write_formats(d: Path, records: list[dict]) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    out = {"jsonl": d / "all.jsonl", "gz": d / "all.jsonl.gz", "zst": d / "all.jsonl.zst"}
    out["jsonl"].write_bytes(text)
    out["gz"].write_bytes(gzip.compress(text))
    out["zst"].write_bytes(zstandard.ZstdCompressor().compress(text))
    out["parquet"] = d / "all.parquet"
    table = pa.table({"id": [r["id"] for r in records], "text": [r["text"] for r in records]})
    pq.write_table(table, out["parquet"], row_group_size=37)
    return out


def test_every_format_and_a_mixed_glob_give_identical_bytes(env, tmp_path):
    d, corpus = env
    records = [json.loads(x) for x in corpus.read_text().splitlines()]
    files = _write_formats(tmp_path / "src", records)
    assert _pp([files["jsonl"]], tmp_path / "ref", d / "bpe.model", "--workers", "2") == 0
    ref = _bytes(tmp_path / "ref")
    ref_ids = load_dataset_info(tmp_path / "ref_text_document").ids
    assert ref_ids == [r["id"] for r in records]
    for fmt in ("gz", "zst", "parquet"):
        assert _pp([files[fmt]], tmp_path / fmt, d / "bpe.model") == 0, fmt
        assert _bytes(tmp_path / fmt) == ref, fmt
        assert load_dataset_info(tmp_path / f"{fmt}_text_document").ids == ref_ids
    # shards of every format, named so that sorting the glob restores the pool order
    shards = tmp_path / "shards"
    shards.mkdir()
    cuts = [0, 70, 140, 200, 300]
    for i, fmt in enumerate(("jsonl", "gz", "zst", "parquet")):
        part = _write_formats(tmp_path / f"part{i}", records[cuts[i] : cuts[i + 1]])[fmt]
        os.replace(part, shards / f"{i:02d}_{part.name}")
    for workers in ("1", "2"):
        assert _pp([shards / "*"], tmp_path / f"glob{workers}", d / "bpe.model", "--workers", workers) == 0
        assert _bytes(tmp_path / f"glob{workers}") == ref
    assert load_dataset_info(tmp_path / "glob2_text_document").ids == ref_ids


def test_ids_fall_back_to_file_and_line(env, tmp_path):
    d, _ = env
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "first doc"}, {"id": 7, "text": "second"}, b"{bad"])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "third doc"}])
    assert _pp([a, b], tmp_path / "ids", d / "bpe.model") == 0
    assert load_dataset_info(tmp_path / "ids_text_document").ids == ["a.jsonl:1", "7", "b.jsonl:1"]
    got = [(s, rid) for s, _, rid in iter_records([b, a], ["text"], "id")]
    assert got == [("ok", "b.jsonl:1"), ("ok", "a.jsonl:1"), ("ok", "7"), ("json", "a.jsonl:3")]


def test_lone_surrogate_is_a_counted_bad_line(env, tmp_path, capsys):
    d, corpus = env
    lines = [
        b'{"id": "a", "text": "fine text"}',
        b'{"id": "s", "text": "bad \\ud800 here"}',
        b'{"id": "b", "text": "ok"}',
    ]
    bad = write_jsonl(tmp_path / "sur.jsonl", lines)
    assert _pp([bad], tmp_path / "sur", d / "bpe.model", "--workers", "2") == 0
    out = capsys.readouterr().out
    assert "docs=2 " in out and "surrogate=1" in out
    assert load_dataset_info(tmp_path / "sur_text_document").ids == ["a", "b"]
    many = write_jsonl(tmp_path / "many.jsonl", corpus.read_bytes().splitlines() + [lines[1]])
    rc = train_main(["--input", str(many), "--model-prefix", str(tmp_path / "t"), "--vocab-size", "400"])
    captured = capsys.readouterr()
    assert rc == 0 and "Traceback" not in captured.err and "surrogate=1" in captured.out


def _children() -> set[int]:
    me = str(os.getpid())
    kids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:
            kids.add(int(pid))
    return kids


def _alive_children_of(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` or that ``pid`` left behind (reparented), not yet zombies."""
    kids = set()
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            kids.add(int(p))
    return kids


def test_workers_die_when_the_main_process_is_killed(env, tmp_path):
    d, corpus = env
    big = tmp_path / "big.jsonl"
    big.write_bytes(corpus.read_bytes() * 300)  # long enough that the workers are busy when we kill
    cmd = [sys.executable, str(ROOT / "tools/preprocess_data.py"), "--input", str(big), "--output-prefix"]
    cmd += [str(tmp_path / "k"), "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model"]
    cmd += [str(d / "bpe.model"), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL)
    try:
        for _ in range(6000):  # the workers appear after the imports and the tokenizer (slow under load)
            workers = _alive_children_of(proc.pid)
            if len(workers) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert len(workers) >= 2 and proc.poll() is None, "the run ended before its workers were seen"
    finally:
        proc.kill()
        proc.wait()
    for _ in range(200):
        left = {w for w in workers if Path(f"/proc/{w}").exists() and _state(w) != "Z"}
        if not left:
            break
        time.sleep(0.05)
    assert not left, f"workers {left} outlived the killed main process"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "Z"


def test_nothing_outlives_and_no_temporaries_after_an_error(env, tmp_path, capsys):
    d, corpus = env
    before = _children()
    assert _pp([corpus], tmp_path / "ok", d / "bpe.model", "--workers", "2") == 0
    assert _children() <= before
    gz = gzip.compress(corpus.read_bytes() * 40)
    (tmp_path / "trunc.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    assert _pp([tmp_path / "trunc.jsonl.gz"], tmp_path / "t", d / "bpe.model", "--workers", "2") == 2
    assert "unreadable" in capsys.readouterr().err
    assert _children() <= before
    zst = zstandard.ZstdCompressor().compress(corpus.read_bytes() * 40)
    (tmp_path / "trunc.jsonl.zst").write_bytes(zst[: len(zst) // 2])
    assert _pp([tmp_path / "trunc.jsonl.zst"], tmp_path / "z", d / "bpe.model") == 2
    assert "unreadable" in capsys.readouterr().err
    assert (
        not list(tmp_path.glob(".tmp*")) and not list(tmp_path.glob("t_*")) and not list(tmp_path.glob("z_*"))
    )
    assert _pp([tmp_path / "none*.jsonl"], tmp_path / "n", d / "bpe.model") == 2
    assert "no file matches" in capsys.readouterr().err


def _register(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "tools/register_dataset.py"), *map(str, args)],
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_register_dataset_records_ids_and_refuses_bad_files(env, tmp_path, capsys):
    d, corpus = env
    prefix = tmp_path / "meg_text_document"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for n in (3, 7, 1):
        builder.add_document(np.arange(n), [n])
    builder.finalize(f"{prefix}.idx")
    src = write_jsonl(
        tmp_path / "src.jsonl", [{"id": "x1", "text": "a"}, {"text": "b"}, {"id": "x3", "text": "c"}]
    )
    tok = ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", d / "bpe.model"]
    r = _register("--data-path", prefix, *tok, "--input", src)
    assert r.returncode == 0, r.stderr
    info = load_dataset_info(prefix)
    assert info.ids == ["x1", "src.jsonl:2", "x3"] and info.num_docs == 3 and info.num_tokens == 11
    assert IndexedDataset(str(prefix)).sequence_lengths.tolist() == [3, 7, 1]
    sidecar = Path(f"{prefix}.gm.json").read_bytes()

    def refused(args, words):
        assert register_main([*map(str, args), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error:") and words in err, err
        assert Path(f"{prefix}.gm.json").read_bytes() == sidecar  # nothing overwritten

    refused(
        [
            "--data-path",
            prefix,
            "--tokenizer-type",
            "GPTSentencePieceTokenizer",
            "--tokenizer-model",
            tmp_path / "no.model",
        ],
        "tokenizer model not found",
    )
    refused(["--data-path", prefix, *tok, "--input", corpus], "300 lines but the dataset has 3 documents")
    binary = Path(f"{prefix}.bin").read_bytes()  # 11 tokens of 2 bytes
    Path(f"{prefix}.bin").write_bytes(binary[:11])
    refused(["--data-path", prefix, *tok], "11 bytes but")
    Path(f"{prefix}.bin").write_bytes(binary)
    idx = Path(f"{prefix}.idx").read_bytes()
    Path(f"{prefix}.idx").write_bytes(b"garbage!" + idx[8:])
    refused(["--data-path", prefix, *tok], "not a readable Megatron index")
    Path(f"{prefix}.idx").write_bytes(idx[:20])
    refused(["--data-path", prefix, *tok], "not a readable Megatron index")


def test_skip_counts_are_the_same_in_every_tool(env, tmp_path):
    """A hand-made file: 2 good, 1 not JSON, 1 surrogate, 1 empty text."""
    lines = [b'{"text": "one"}', b"{nope", b'{"text": "\\udfff"}', b'{"text": "  "}', b'{"text": "two"}']
    path = write_jsonl(tmp_path / "mix.jsonl", lines)
    statuses = Counter(s for s, _, _ in iter_records([path], ["text"], "id"))
    assert statuses == {"ok": 3, "json": 1, "surrogate": 1}


def test_tokenizer_training_reads_every_format_the_same(env, tmp_path):
    d, corpus = env
    records = [json.loads(x) for x in corpus.read_text().splitlines()]
    files = _write_formats(tmp_path / "src", records)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (fmt, lo, hi) in enumerate((("zst", 0, 100), ("parquet", 100, 220), ("gz", 220, 300))):
        part = _write_formats(tmp_path / f"part{i}", records[lo:hi])[fmt]
        os.replace(part, shards / f"{i:02d}_{part.name}")
    models = []
    for name, inputs in (("jsonl", [files["jsonl"]]), ("zst", [files["zst"]]), ("parquet", [files["parquet"]]),
                         ("glob", [shards / "*"])):  # fmt: skip
        args = ["--input", *map(str, inputs), "--model-prefix", str(tmp_path / name), "--vocab-size", "400"]
        assert train_main(args) == 0, name
        models.append((tmp_path / f"{name}.model").read_bytes())
    assert models[0] == models[1] == models[2] == models[3]


EDGE_LINES = [
    b'{"id": "a", "text": "plain"}',
    b"",
    b"   ",
    b'{"text": "lone \\ud800 surrogate"}',
    b'{"text": "\\u00e9t\\u00e9 \\ud83d\\ude00"}',  # escapes, a surrogate pair
    b'{"text": "dup", "text": "last wins"}',
    b'{"id": 123456789012345678901234567890, "text": "big id"}',  # orjson reads it as a float
    b'{"id": 7, "text": "int id"}',
    b'{"id": 1.5, "text": "float id"}',
    b'{"x": NaN, "text": "json allows NaN"}',
    b'{"text": 5}',
    b'{"other": "no text"}',
    b"[1, 2]",
    b'"a string"',
    b"{bad",
    b'{"text": "caf\xc3\xa9"}',
    b'{"text": "bad utf8 \xff"}',
    b'{"text": "trailing"}   ',
]


@pytest.mark.parametrize("id_key", ["id", None])
def test_fast_json_parser_gives_json_statuses_and_records(monkeypatch, id_key):
    from megatron_gm.data import jsonl

    if jsonl._orjson_loads is None:
        pytest.skip("orjson not installed")
    fast = [jsonl.parse_record(line, ["text"], id_key) for line in EDGE_LINES]
    monkeypatch.setattr(jsonl, "_orjson_loads", None)
    plain = [jsonl.parse_record(line, ["text"], id_key) for line in EDGE_LINES]
    for line, (fs, frec), (ps, prec) in zip(EDGE_LINES, fast, plain):
        assert fs == ps, line
        if fs == "ok":
            assert frec["text"] == prec["text"], line
            assert jsonl.doc_id(frec, id_key, "f", 0) == jsonl.doc_id(prec, id_key, "f", 0), line
    if id_key is None:
        return
    # the ids json gives, written by hand
    ids = [jsonl.doc_id(r, "id", "f", i) for i, (s, r) in enumerate(fast) if s == "ok"]
    assert ids == ["a", "f:5", "f:6", "123456789012345678901234567890", "7", "1.5", "f:10", "f:16", "f:18"]
