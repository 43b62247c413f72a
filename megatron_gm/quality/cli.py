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
import logging
import sys

from megatron_gm.config import add_dataclass_args, from_namespace
from megatron_gm.dist import add_log_level_arg, tool_logging
from megatron_gm.errors import cli_main
from megatron_gm.quality.fasttext_filter import FilterConfig, run_filter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quality_filter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataclass_args(p, FilterConfig, show_defaults=True)
    add_log_level_arg(p)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("megatron.core.datasets.indexed_dataset").setLevel(logging.WARNING)
    with tool_logging(args.log_level, sys.stderr, "quality_filter: %(message)s"):  # stderr, as before
        run_filter(from_namespace(FilterConfig, args))
    return 0
