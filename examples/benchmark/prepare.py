"""Benchmark data: tokenizer, the pool as a Megatron dataset, the reference split and the evaluation pack.

The reference set (WikiText-103 validation) is split by article: even-numbered articles (in file order) are
what selection may see (the oracle's reference windows, the fastText filter's positives), odd-numbered
ones are the development evaluation. So no evaluation window shares an article, let alone text, with the
oracle's windows. Everything is written once under OUT/data and skipped when there.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np

from megatron_gm.errors import GMError

POOLS = {"20k": "pool_20k.jsonl.gz", "64k": "pool.jsonl.gz"}


@dataclasses.dataclass
class Data:
    prefix: str  # Megatron dataset prefix of the pool
    tokenizer: str  # SentencePiece model
    ref_oracle: str  # reference articles selection may see
    ref_eval: str  # reference articles only the evaluation sees
    lambada: str  # LAMBADA eval half
    pack: str  # the evaluation pack (.npz)
    pool_tokens: int
    pool_docs: int
    vocab_size: int


def _open(path: Path):
    return gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)


def split_reference(src: Path, oracle_out: Path, eval_out: Path) -> dict:
    """Even articles -> oracle_out, odd -> eval_out (jsonl of {"text"}); returns the counts."""
    articles: dict[str, int] = {}
    rows: dict[str, list[str]] = {"oracle": [], "eval": []}
    with _open(src) as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            key = str(rec.get("article", ""))
            idx = articles.setdefault(key, len(articles))
            rows["oracle" if idx % 2 == 0 else "eval"].append(json.dumps({"text": rec["text"]}) + "\n")
    if not rows["oracle"] or not rows["eval"]:
        raise GMError(
            f"{src}: needs at least two articles ('article' field) to split into oracle/eval halves"
        )
    oracle_out.write_text("".join(rows["oracle"]))
    eval_out.write_text("".join(rows["eval"]))
    return {"articles": len(articles), "oracle_chunks": len(rows["oracle"]), "eval_chunks": len(rows["eval"])}


def valid_documents(num_docs: int, split: str) -> tuple[int, int]:
    """The document range Megatron's ``--split`` gives the validation split (its own rounding)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    beg, end = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))[1]
    return int(round(beg * float(num_docs))), int(round(end * float(num_docs)))


def build_pack(d: Data, out: Path, seq_length: int, sizes: dict[str, int], split: str) -> dict:
    """The three development sets, each a fixed seeded subset (the same for every seed and method)."""
    from megatron_gm.data.reference import prompts_from_jsonl, windows_from_jsonl
    from megatron_gm.data.tokenizer import build_tokenizer
    from megatron_gm.evalpack import save_pack, subset, windows_from_dataset

    tok = build_tokenizer("GPTSentencePieceTokenizer", d.tokenizer)
    lo, hi = valid_documents(d.pool_docs, split)
    sets = {
        "reference": (*subset(*windows_from_jsonl(d.ref_eval, tok.tokenize, tok.eod, seq_length), sizes["reference"], 0), "windows"),
        "lambada": (*subset(*prompts_from_jsonl(d.lambada, tok.tokenize, seq_length), sizes["lambada"], 0), "prompts"),
        "pool_valid": (*subset(*windows_from_dataset(d.prefix, (lo, hi), seq_length), sizes["pool_valid"], 0), "windows"),
    }  # fmt: skip
    meta = {
        "reference": f"{Path(d.ref_eval).name}: WikiText-103 validation, odd articles (never the oracle's)",
        "lambada": f"{Path(d.lambada).name}: LAMBADA eval half, target-only loss and accuracy",
        "pool_valid": f"pool documents {lo}..{hi} (Megatron's validation split {split}; never trained on)",
        "samples": {k: int(v[0].shape[0]) for k, v in sets.items()},
        "counted_tokens": {k: int(v[1].sum()) for k, v in sets.items()},
        "seq_length": seq_length,
    }
    save_pack(out, sets, meta)
    return meta


def prepare(run, a, out: Path) -> Data:
    """Tokenizer, pool, reference halves and eval pack under OUT/data. ``run`` runs a tool command."""
    src_pool = Path(a.pool_file) if a.pool_file else Path(a.data_dir) / POOLS[a.pool]
    ref_src = Path(a.data_dir) / "ref_wikitext103_valid.jsonl.gz"
    lambada = Path(a.data_dir) / "lambada_eval.jsonl.gz"
    for f in (src_pool, ref_src, lambada):
        if not f.is_file():
            raise GMError(f"{f}: not found; pass --data-dir <folder with the bundled data> (or --pool-file)")
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    pool = src_pool
    if a.quick:
        pool = d / f"pool_{a.quick_docs}.jsonl"
        if not pool.exists():
            with _open(src_pool) as f:
                pool.write_text("".join(line for _, line in zip(range(a.quick_docs), f)))
    tok = d / "tokenizer.model"
    if not tok.exists():
        print(f"[bench] training the tokenizer on {pool}", flush=True)
        run(["tools/train_tokenizer.py", "--input", str(pool), "--model-prefix", str(d / "tokenizer"),
             "--vocab-size", str(a.vocab), "--max-docs", "20000"], d / "tokenizer.log")  # fmt: skip
    prefix = d / "pool_text_document"
    if not Path(f"{prefix}.gm.json").exists():
        print(f"[bench] preprocessing {pool}", flush=True)
        run(["tools/preprocess_data.py", "--input", str(pool), "--output-prefix", str(d / "pool"),
             "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(tok), "--append-eod",
             "--workers", "2"], d / "preprocess.log")  # fmt: skip
    ref_oracle, ref_eval = d / "ref_oracle.jsonl", d / "ref_eval.jsonl"
    if not ref_eval.exists():
        split_reference(ref_src, ref_oracle, ref_eval)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    from megatron_gm.data.tokenizer import build_tokenizer

    data = Data(
        prefix=str(prefix), tokenizer=str(tok), ref_oracle=str(ref_oracle), ref_eval=str(ref_eval),
        lambada=str(lambada), pack=str(d / "eval_pack.npz"), pool_tokens=int(np.sum(ds.sequence_lengths)),
        pool_docs=len(ds), vocab_size=int(build_tokenizer("GPTSentencePieceTokenizer", str(tok)).vocab_size),
    )  # fmt: skip
    if not Path(data.pack).exists():
        print("[bench] building the evaluation pack", flush=True)
        meta = build_pack(data, Path(data.pack), a.seq_length, a.eval_sizes, a.split)
        (d / "eval_pack.json").write_text(json.dumps(meta, indent=2) + "\n")
    return data
