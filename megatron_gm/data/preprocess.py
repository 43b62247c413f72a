"""Turn pool documents into Megatron indexed datasets (``tools/preprocess_data.py``).

Same flags and file names as Megatron-LM's ``tools/preprocess_data.py``: for each ``--json-keys`` key,
``{output_prefix}_{key}_document.bin/.idx``, written through megatron.core's ``IndexedDatasetBuilder``.
We add a sidecar ``{...}_document.gm.json`` with each document's input id and the dataset fingerprint.

- Inputs: ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` and ``.parquet`` files, several or globs, read in a
  stable order (``megatron_gm.data.jsonl``); the id is ``--id-key``'s value or ``FILE:LINE``.
- Pipeline: the main process reads blocks of input (a feeder thread), ``--workers`` processes forked
  after the tokenizer is built tokenize whole blocks (``megatron_gm.data.fast_encode``), and the main
  process writes each block's tokens in input order, so output bytes do not depend on ``--workers``.
  Workers die with the main process, even when it is killed (``SIGKILL``).
- Lines that are not UTF-8, not JSON, lack a key, hold a lone UTF-16 surrogate or are empty are skipped
  and counted; a run that writes no document is an error. Outputs are written under temporary names
  and renamed at the end, so an interrupted or failed run leaves nothing at the output prefix.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_gm.data import jsonl
from megatron_gm.data.fast_encode import make_encoder
from megatron_gm.data.indexed import _dtype_for, finish_indexed_dataset
from megatron_gm.data.tokenizer import TOKENIZER_TYPES, build_tokenizer, tokenizer_spec
from megatron_gm.dist import add_log_level_arg, tool_logging
from megatron_gm.errors import GMError, cli_main

BLOCK_BYTES = 1 << 21  # jsonl bytes per worker task
PARQUET_ROWS = 2048  # parquet rows per worker task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input data")
    g.add_argument(
        "--input", required=True, nargs="+", help=f"{jsonl.FORMATS} files or globs (read in order)"
    )
    g.add_argument("--json-keys", nargs="+", default=["text"], help="space-separated keys to extract")
    g.add_argument("--id-key", default="id", help="key of each record's id (FILE:LINE when absent)")
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
    add_log_level_arg(p)
    return p


# --- worker side (state set before the fork, inherited by the workers) -------------------------------
_STATE: dict = {}


def _setup(args: argparse.Namespace, tokenizer, dtype) -> None:
    _STATE.update(
        keys=list(args.json_keys),
        id_key=args.id_key,
        eod=tokenizer.eod if args.append_eod else None,
        encoder=make_encoder(tokenizer, args.tokenizer_model),
        dtype=dtype,
    )


def _records(task):
    """(status, record, id) of the lines or rows of one task."""
    kind, label, first, payload = task
    keys, id_key = _STATE["keys"], _STATE["id_key"]
    out = []
    if kind == "rows":
        cols = payload
        for i in range(len(cols[keys[0]])):
            rec = {c: v[i] for c, v in cols.items()}
            out.append((jsonl.check_text(rec, keys), rec, jsonl.doc_id(rec, id_key, label, first + i)))
    else:
        for i, line in enumerate(jsonl.split_lines(payload)):
            status, rec = jsonl.parse_record(line, keys, id_key)
            out.append((status, rec, jsonl.doc_id(rec, id_key, label, first + i)))
    return out


def encode_task(task):
    """Tokenize one task: (skipped counts, ids, [(tokens, lengths) per key], (pid, CPU s so far))."""
    keys, encoder, eod, dtype = _STATE["keys"], _STATE["encoder"], _STATE["eod"], _STATE["dtype"]
    skipped: Counter[str] = Counter()
    ids, texts = [], {k: [] for k in keys}
    for status, rec, rid in _records(task):
        if status == "ok" and all(rec[k].strip() for k in keys):
            ids.append(rid)
            for k in keys:
                texts[k].append(rec[k])
        else:
            skipped["empty" if status == "ok" else status] += 1
    encoded = [encoder.encode(texts[k]) if ids else (np.zeros(0), np.zeros(0, np.int64)) for k in keys]
    keep = np.ones(len(ids), dtype=bool)
    for _, lengths in encoded:
        keep &= lengths > 0
    if not keep.all():
        skipped["empty"] += int((~keep).sum())
        ids = [i for i, k in zip(ids, keep) if k]
    out = []
    for tokens, lengths in encoded:
        if not keep.all():
            tokens, lengths = tokens[np.repeat(keep, lengths)], lengths[keep]
        if eod is not None and len(lengths):
            tokens, lengths = np.insert(tokens, np.cumsum(lengths), eod), lengths + 1
        out.append((tokens.astype(dtype, copy=False), lengths))
    return dict(skipped), ids, out, (os.getpid(), time.process_time())


# --- main side -------------------------------------------------------------------------------
def output_prefixes(args) -> list[str]:
    return [f"{args.output_prefix}_{key}_document" for key in args.json_keys]


def iter_tasks(paths: list[Path], keys: list[str], id_key: str | None):
    """Worker tasks in input order: ('lines', label, first line, bytes) or ('rows', label, first row, cols)."""
    for path, label in zip(paths, jsonl.input_labels(paths)):
        if jsonl.input_format(path) == "parquet":
            cols = list(keys) + ([id_key] if id_key else [])
            for first, batch in jsonl.iter_parquet(path, cols, PARQUET_ROWS):
                yield "rows", label, first, batch
        else:
            for first, block in jsonl.iter_blocks(path, BLOCK_BYTES):
                yield "lines", label, first, block


def _die_with_parent(parent: int) -> None:
    """Pool initializer: the kernel kills this worker when the main process dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # not Linux: workers still end when the main process ends normally
    if os.getppid() != parent:  # the main process died before prctl took effect
        os._exit(1)


def _encoded(args, paths, ctx):
    tasks = iter_tasks(paths, args.json_keys, args.id_key)
    if ctx is None:
        yield from map(encode_task, tasks)
        return
    # fork: the workers inherit the imports and the tokenizer built above, and start at once
    with ctx.Pool(args.workers, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            yield from pool.imap(encode_task, tasks, chunksize=1)
        finally:
            pool.terminate()
            pool.join()


def add_block(builder, tokens: np.ndarray, lengths: np.ndarray) -> None:
    """Append documents (one sequence each) to an IndexedDatasetBuilder, as add_document would."""
    if hasattr(builder, "data_file") and isinstance(getattr(builder, "document_indices", None), list):
        builder.data_file.write(np.asarray(tokens, dtype=builder.dtype).tobytes(order="C"))
        n0 = len(builder.sequence_lengths)
        builder.sequence_lengths.extend(lengths.tolist())
        builder.document_indices.extend(range(n0 + 1, n0 + 1 + len(lengths)))
        return
    ends = np.cumsum(lengths)
    for a, b in zip(ends - lengths, ends):
        builder.add_document(tokens[a:b], [int(b - a)])


def _fork_context(workers: int):
    """Workers are forked (they inherit the tokenizer); without fork one worker runs in this process."""
    if "fork" not in mp.get_all_start_methods():
        if workers > 1:
            raise GMError(f"--workers {workers}: needs the 'fork' start method (Linux); pass --workers 1")
        return None
    return mp.get_context("fork")


@cli_main
def main(argv: list[str] | None = None) -> int:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    t_start = time.time()
    args = build_parser().parse_args(argv)
    with tool_logging(args.log_level):
        if args.workers < 1:
            raise GMError(f"--workers must be >= 1, got {args.workers}")
        paths = jsonl.expand_inputs(args.input)
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
        _setup(args, tokenizer, _dtype_for(vocab))
        ctx = _fork_context(args.workers)
        source = os.path.abspath(paths[0]) if len(paths) == 1 else " ".join(os.path.abspath(p) for p in paths)
        tmps = [str(out_dir / f".tmp{os.getpid()}_{Path(p).name}") for p in prefixes]

        skipped: Counter[str] = Counter()
        ids: list[str] = []
        n_tok = [0] * len(prefixes)
        worker_cpu: dict[int, float] = {}  # each worker's CPU seconds (its last task's report)
        start, start_cpu = time.time(), time.process_time()
        bar = tqdm(desc="preprocess", unit="doc", mininterval=1.0, disable=None)
        try:
            builders = [IndexedDatasetBuilder(f"{t}.bin", dtype=_dtype_for(vocab)) for t in tmps]
            for task_skipped, task_ids, per_key, (pid, pid_cpu) in _encoded(args, paths, ctx):
                skipped.update(task_skipped)
                worker_cpu[pid] = pid_cpu
                take = len(task_ids)
                if args.max_docs:
                    take = min(take, args.max_docs - len(ids))
                for k, (b, (tokens, lengths)) in enumerate(zip(builders, per_key)):
                    if take < len(lengths):
                        tokens, lengths = tokens[: int(lengths[:take].sum())], lengths[:take]
                    add_block(b, tokens, lengths)
                    n_tok[k] += len(tokens)
                ids.extend(task_ids[:take])
                bar.update(take)
                if len(ids) // args.log_interval != (len(ids) - take) // args.log_interval:
                    dt = max(time.time() - start, 1e-9)
                    bar.set_postfix(tok_s=f"{sum(n_tok) / dt:,.0f}", skipped=sum(skipped.values()))
                if args.max_docs and len(ids) >= args.max_docs:
                    break
            bar.close()
            if not ids:
                reasons = ", ".join(f"{k}={v}" for k, v in skipped.items()) or "no lines"
                raise GMError(
                    f"{' '.join(args.input)}: no document written ({reasons}); check --json-keys "
                    f"{' '.join(args.json_keys)} and that the input is UTF-8 {jsonl.FORMATS}"
                )
            for b, t in zip(builders, tmps):
                b.finalize(f"{t}.idx")
            infos = [
                finish_indexed_dataset(t, p, len(ids), n, spec, source, ids)
                for t, p, n in zip(tmps, prefixes, n_tok)
            ]
        finally:
            bar.close()
            for t in tmps:
                for e in (".bin", ".idx"):
                    Path(f"{t}{e}").unlink(missing_ok=True)
        dt, parent_cpu = time.time() - start, time.process_time() - start_cpu
        if ctx is None:  # one worker in this process: its CPU is the parent's
            worker_cpu = {}
        for info in infos:
            print(f"wrote {info.prefix}.bin/.idx (fingerprint {info.fingerprint})")
        skip_txt = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none"
        print(
            f"summary: docs={len(ids)} tokens={sum(n_tok)} skipped={sum(skipped.values())} ({skip_txt}) "
            f"startup={start - t_start:.1f}s seconds={dt:.2f} docs/s={len(ids) / dt:,.0f} "
            f"tokens/s={sum(n_tok) / dt:,.0f} workers={args.workers} tokenizer_path={_STATE['encoder'].path} "
            f"parent_cpu={parent_cpu:.2f} worker_cpu={','.join(f'{c:.2f}' for c in sorted(worker_cpu.values()))}"
        )
        return 0
