"""Train a SentencePiece tokenizer on pool documents (``tools/train_tokenizer.py``).

Inputs: .jsonl, .jsonl.gz, .jsonl.zst or .parquet files, several or globs (``megatron_gm.data.jsonl``);
bad lines (not UTF-8 or JSON, a lone UTF-16 surrogate, no text) are skipped and counted.

Settings give exact round trips on arbitrary text (byte fallback, identity normalisation, whitespace
kept) and deterministic models for a given input and seed (one training thread, seeded sampler).
"""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter
from pathlib import Path

from megatron_gm.data.jsonl import FORMATS, expand_inputs, iter_texts_counted
from megatron_gm.dist import add_log_level_arg, tool_logging
from megatron_gm.errors import GMError, cli_main
from megatron_gm.fs import atomic_write_bytes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", required=True, nargs="+", help=f"{FORMATS} files or globs")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="keys whose text is used")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--max-docs", type=int, default=None, help="use only the first N documents")
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--overwrite", action="store_true", help="replace an existing PREFIX.model")
    add_log_level_arg(p)
    return p


def _lines(paths, keys, max_docs, skipped):
    for key in keys:
        for text, _ in iter_texts_counted(paths, key, max_docs, skipped):
            for line in text.split("\n"):
                if line.strip():
                    yield line


@cli_main
def main(argv: list[str] | None = None) -> int:
    import sentencepiece as spm

    args = build_parser().parse_args(argv)
    with tool_logging(args.log_level):
        if args.vocab_size < 300:
            raise GMError(
                f"--vocab-size {args.vocab_size} is too small: byte fallback alone needs 256+ pieces"
            )
        prefix = Path(args.model_prefix)
        out = Path(f"{prefix}.model")
        if out.exists() and not args.overwrite:
            raise GMError(f"{out}: exists; pass --overwrite to replace it or choose another --model-prefix")
        paths = expand_inputs(args.input)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        skipped: Counter[str] = Counter()
        lines = list(_lines(paths, args.json_keys, args.max_docs, skipped))
        skip_txt = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none"
        if not lines:
            raise GMError(
                f"{' '.join(args.input)}: no text under --json-keys {' '.join(args.json_keys)} "
                f"(skipped: {skip_txt}); check the keys"
            )
        start = time.time()
        model = io.BytesIO()
        spm.set_random_generator_seed(args.seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                vocab_size=args.vocab_size,
                model_type=args.model_type,
                character_coverage=args.character_coverage,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                split_digits=True,
                max_sentence_length=1 << 16,
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise GMError(
                f"{' '.join(args.input)}: sentencepiece training failed: {str(e).splitlines()[0]}"
            ) from e
        sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
        atomic_write_bytes(f"{prefix}.vocab", vocab.encode())
        atomic_write_bytes(out, model.getvalue())  # last: its presence means the tokenizer is complete
        print(
            f"wrote {out} ({args.model_type}, vocab {args.vocab_size}, {len(lines)} lines, "
            f"skipped {sum(skipped.values())} ({skip_txt}), {time.time() - start:.1f}s)"
        )
        return 0
