#!/usr/bin/env python
"""Evaluate Megatron checkpoints: reference-set loss and prompt/target accuracy (LAMBADA final word).

    python tools/evaluate.py --load runs/x/stage1/checkpoints \
        --gm-eval-ref ../shared/data/ref_wikitext103_valid.jsonl.gz \
        --gm-eval-prompts ../shared/data/lambada_eval.jsonl.gz --gm-eval-output eval.json

Model and tokenizer flags default to the checkpoint's saved args. See megatron_gm/evaluate.py.
"""

import sys

from megatron_gm.errors import cli_main
from megatron_gm.evaluate import evaluate


@cli_main
def main(argv: list[str] | None = None) -> int:
    evaluate(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
