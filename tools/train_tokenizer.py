#!/usr/bin/env python
"""Train a SentencePiece tokenizer on jsonl(.gz) input. See megatron_gm/data/train_tokenizer.py."""

import sys

from megatron_gm.data.train_tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
