#!/usr/bin/env python
"""Held-out evaluation of one final checkpoint: WikiText-103 test loss and BLiMP accuracy.

ONLY the benchmark's final report runs this (``run_benchmark.py --heldout``); nothing else in the project
reads ../shared/heldout. BLiMP: a minimal pair counts as right when the model gives the good sentence a
higher total log-probability (each sentence scored from an EOD start token, every token counted).

    python examples/benchmark/heldout.py --load CKPT --heldout-dir ../shared/heldout --output out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from megatron_gm.errors import GMError, cli_main  # noqa: E402

PAIR_KEYS = (("sentence_good", "sentence_bad"), ("good", "bad"))


def blimp_pairs(path: Path, max_pairs: int = 0) -> list[tuple[str, str]]:
    from megatron_gm.data.jsonl import iter_lines, parse_record

    pairs = []
    for line in iter_lines(str(path)):
        status, rec = parse_record(line, [])
        if status != "ok":
            continue
        for g, b in PAIR_KEYS:
            if isinstance(rec.get(g), str) and isinstance(rec.get(b), str):
                pairs.append((rec[g], rec[b]))
                break
        if max_pairs and len(pairs) >= max_pairs:
            break
    if not pairs:
        raise GMError(f"{path}: no minimal pairs (expected sentence_good/sentence_bad fields)")
    return pairs


def clean_share(heldout_dir: Path, data_path: str, selections: dict[str, Path]) -> dict[str, dict]:
    """Share of documents labelled clean (pool_labels.tsv.gz, by document id) in the pool and each selection."""
    import csv
    import gzip

    from megatron_gm.data.indexed import load_dataset_info

    path = Path(heldout_dir) / "pool_labels.tsv.gz"
    if not path.is_file():
        raise GMError(f"{path}: not found; pass --heldout-dir <folder with the held-out files>")
    with gzip.open(path, "rt", newline="") as f:
        group = {row["id"]: row["group"] for row in csv.DictReader(f, delimiter="\t")}
    ids = load_dataset_info(data_path).ids
    clean = np.asarray([group.get(i) == "clean" for i in ids])
    known = np.asarray([i in group for i in ids])
    out = {"pool": {"docs": len(ids), "clean_share": float(clean.mean()), "labelled": float(known.mean())}}
    for name, folder in selections.items():
        f = Path(folder) / "documents.npy"
        if f.exists():
            docs = np.load(f)
            out[name] = {"docs": int(docs.size), "clean_share": float(clean[docs].mean())}
    return out


def sentence_samples(sentences: list[str], tokenize, eod: int, seq_length: int):
    from megatron_gm.megatron.samples import pad_sample

    rows = [pad_sample(np.asarray([eod, *tokenize(s)]), None, seq_length) for s in sentences]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--load", required=True)
    p.add_argument("--heldout-dir", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--blimp-max", type=int, default=0)
    a = p.parse_args(argv)
    d = Path(a.heldout_dir)
    wiki, blimp = d / "wikitext103_test.jsonl.gz", d / "blimp.jsonl.gz"
    for f in (wiki, blimp):
        if not f.is_file():
            raise GMError(f"{f}: not found; pass --heldout-dir <folder with the held-out files>")
    from megatron_gm import evaluate as E
    from megatron_gm.megatron.scoring import score_samples

    prep = E.prepare(["--load", a.load, "--gm-eval-ref", str(wiki), "--gm-eval-ref-samples", "1000000",
                      "--gm-eval-output", a.output + ".wiki.json"])  # fmt: skip
    wiki_out = E.run(prep)["results"][0]["reference"]
    pairs = blimp_pairs(blimp, a.blimp_max)
    tok = prep.tokenizer
    model = prep.session.model[0]
    scores = {}
    for j, name in enumerate(("good", "bad")):
        t, m = sentence_samples([pr[j] for pr in pairs], tok.tokenize, tok.eod, prep.args.seq_length)
        scores[name] = score_samples(model, t, m, prep.fmt, tok.vocab_size, 64).loss_sum
    acc = float(np.mean(scores["good"] < scores["bad"]))
    out = {"load": a.load, "wikitext103_test": wiki_out, "blimp": {"accuracy": acc, "pairs": len(pairs)}}
    Path(a.output).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
