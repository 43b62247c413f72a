"""``tools/quality_filter.py``: a DCLM-style fastText quality filter written as a pool-scores folder.

    python tools/quality_filter.py --data-path data/pool_text_document --positives ref.jsonl.gz \\
        --h-from runs/s0/selection.scores --output runs/s0/fasttext.scores
    python tools/select_data.py --data-path data/pool_text_document --scores-from runs/s0/fasttext.scores \\
        --gm-select-method individual --gm-select-temperature 0 --gm-select-ratio 0.5 --gm-stage 1 \\
        --output runs/s0/fasttext.selection

See megatron_gm/quality/fasttext_filter.py for what is trained, scored and written.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from megatron_gm.errors import cli_main
from megatron_gm.quality.fasttext_filter import LOG, FilterConfig, run_filter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quality_filter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-path", required=True, help="dataset prefix (the .bin/.idx without extension)")
    p.add_argument("--positives", required=True, help="reference documents, .jsonl or .jsonl.gz")
    p.add_argument("--text-key", default="text", help="key of the text in --positives")
    p.add_argument("--h-from", required=True, help="a finished scores folder of this dataset: h is copied")
    p.add_argument("--output", required=True, help="scores folder to write (must not exist, or be finished)")
    helps = {"seed": "negatives, held-out split and fastText seed", "holdout": "share held out for metrics"}
    helps["bucket"] = "hashed word n-gram rows (model size: bucket x dim x 4 bytes)"
    helps["negatives_per_positive"] = "pool documents drawn as negatives per positive (capped at the pool)"
    for f in dataclasses.fields(FilterConfig)[5:]:  # the hyper-parameters, with FilterConfig's defaults
        p.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f"{helps.get(f.name, 'fastText ' + f.name)} (default {f.default})",
        )
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("quality_filter: %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    logging.getLogger("megatron.core.datasets.indexed_dataset").setLevel(logging.WARNING)
    try:
        run_filter(FilterConfig(**vars(args)))
    finally:
        LOG.removeHandler(handler)
    return 0
