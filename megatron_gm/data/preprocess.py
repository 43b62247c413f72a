"""Turn jsonl(.gz) documents into Megatron indexed datasets (``tools/preprocess_data.py``).

Same flags and file names as Megatron-LM's ``tools/preprocess_data.py``: for each ``--json-keys`` key,
``{output_prefix}_{key}_document.bin/.idx``, written through megatron.core's ``IndexedDatasetBuilder``.
We add a sidecar ``{...}_document.gm.json`` with each document's input id and the dataset fingerprint.

- Output bytes do not depend on ``--workers`` (workers tokenize chunks; results are written in order).
- Lines that are not UTF-8, not JSON, lack a key, or are empty are skipped and counted; a run that writes
  no document is an error. Outputs are written under temporary names and renamed at the end, so an
  interrupted or failed run leaves nothing at the output prefix.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_gm.data.indexed import _dtype_for, finish_indexed_dataset
from megatron_gm.data.jsonl import iter_lines, parse_record
from megatron_gm.data.tokenizer import TOKENIZER_TYPES, build_tokenizer, tokenizer_spec
from megatron_gm.errors import GMError, cli_main

CHUNK = 256  # lines per worker task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="path to a jsonl or jsonl.gz file")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="space-separated keys to extract")
    g.add_argument("--id-key", default="id", help="key of each record's id (line number when absent)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", default=None, help="sentencepiece / HF tokenizer model")
    g.add_argument("--vocab-size", type=int, default=None, help="vocab size (NullTokenizer)")
    g.add_argument("--append-eod", action="store_true", help="append an end-of-document token")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="path prefix of the binary output files")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    g.add_argument("--log-interval", type=int, default=1000, help="update progress every N documents")
    g.add_argument("--max-docs", type=int, default=None, help="stop after N documents (for quick runs)")
    return p


# --- worker side -----------------------------------------------------------------------------
_TOKENIZER = None
_ARGS = None


def _init_worker(args: argparse.Namespace) -> None:
    global _TOKENIZER, _ARGS
    _ARGS = args
    _TOKENIZER = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)


def _encode_chunk(
    chunk: list[tuple[int, bytes]],
) -> list[tuple[int, str, str | None, list[np.ndarray] | None]]:
    """(line number, status, id, tokens per key) for each line of the chunk."""
    out = []
    for lineno, line in chunk:
        status, rec = parse_record(line, _ARGS.json_keys)
        if status != "ok":
            out.append((lineno, status, None, None))
            continue
        docs = []
        for key in _ARGS.json_keys:
            ids = _TOKENIZER.tokenize(rec[key]) if rec[key].strip() else []
            if not ids:
                break
            if _ARGS.append_eod:
                ids = list(ids) + [_TOKENIZER.eod]
            docs.append(np.asarray(ids, dtype=np.int64))
        if len(docs) < len(_ARGS.json_keys):
            out.append((lineno, "empty", None, None))
            continue
        doc_id = rec.get(_ARGS.id_key)
        out.append((lineno, "ok", str(doc_id) if doc_id is not None else str(lineno), docs))
    return out


# --- main side -------------------------------------------------------------------------------
def output_prefixes(args) -> list[str]:
    return [f"{args.output_prefix}_{key}_document" for key in args.json_keys]


def _chunks(path):
    lines = enumerate(iter_lines(path))
    while chunk := list(itertools.islice(lines, CHUNK)):
        yield chunk


def _encoded(args):
    if args.workers <= 1:
        _init_worker(args)
        for chunk in _chunks(args.input):
            yield _encode_chunk(chunk)
        return
    # forkserver: a clean single-threaded server imports the tokenizer code once and forks the workers
    # (plain fork from a process with torch/sentencepiece threads can crash; spawn re-imports per worker)
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    ctx.set_forkserver_preload(["megatron_gm.data.preprocess", "megatron.core.tokenizers"])
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(args,)) as pool:
        yield from pool.imap(_encode_chunk, _chunks(args.input), chunksize=2)


@cli_main
def main(argv: list[str] | None = None) -> int:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise GMError(f"--workers must be >= 1, got {args.workers}")
    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)  # fail fast
    vocab = args.vocab_size or tokenizer.vocab_size
    spec = tokenizer_spec(args.tokenizer_type, args.tokenizer_model, vocab)
    prefixes = output_prefixes(args)
    for prefix in prefixes:
        existing = [f"{prefix}{e}" for e in (".bin", ".idx", ".gm.json") if Path(f"{prefix}{e}").exists()]
        if existing and not args.overwrite:
            raise GMError(
                f"{existing[0]}: exists; pass --overwrite to replace it or choose another --output-prefix"
            )
    out_dir = Path(args.output_prefix).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    tmps = [str(out_dir / f".tmp{os.getpid()}_{Path(p).name}") for p in prefixes]
    builders = [IndexedDatasetBuilder(f"{t}.bin", dtype=_dtype_for(vocab)) for t in tmps]

    skipped: Counter[str] = Counter()
    ids: list[str] = []
    n_tok = [0] * len(prefixes)
    start = time.time()
    bar = tqdm(desc="preprocess", unit="doc", mininterval=1.0, disable=None)
    try:
        for results in _encoded(args):
            for _lineno, status, doc_id, docs in results:
                if status != "ok":
                    skipped[status] += 1
                    continue
                for b, d, k in zip(builders, docs, range(len(docs))):
                    b.add_document(d, [len(d)])
                    n_tok[k] += len(d)
                ids.append(doc_id)
                if len(ids) % args.log_interval == 0:
                    dt = max(time.time() - start, 1e-9)
                    bar.set_postfix(tok_s=f"{sum(n_tok) / dt:,.0f}", skipped=sum(skipped.values()))
                bar.update(1)
                if args.max_docs and len(ids) >= args.max_docs:
                    break
            if args.max_docs and len(ids) >= args.max_docs:
                break
        bar.close()
        if not ids:
            reasons = ", ".join(f"{k}={v}" for k, v in skipped.items()) or "no lines"
            raise GMError(
                f"{args.input}: no document written ({reasons}); check --json-keys "
                f"{' '.join(args.json_keys)} and that the file is UTF-8 jsonl"
            )
        for b, t in zip(builders, tmps):
            b.finalize(f"{t}.idx")
        infos = [
            finish_indexed_dataset(t, p, len(ids), n, spec, os.path.abspath(args.input), ids)
            for t, p, n in zip(tmps, prefixes, n_tok)
        ]
    finally:
        bar.close()
        for t in tmps:
            for e in (".bin", ".idx"):
                Path(f"{t}{e}").unlink(missing_ok=True)
    dt = time.time() - start
    for info in infos:
        print(f"wrote {info.prefix}.bin/.idx (fingerprint {info.fingerprint})")
    skip_txt = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none"
    print(
        f"summary: docs={len(ids)} tokens={sum(n_tok)} skipped={sum(skipped.values())} ({skip_txt}) "
        f"seconds={dt:.1f} docs/s={len(ids) / dt:,.0f} tokens/s={sum(n_tok) / dt:,.0f} workers={args.workers}"
    )
    return 0
