#!/usr/bin/env python
"""Megatron-compatible preprocessing into indexed datasets. See megatron_gm/data/preprocess.py."""

import sys

from megatron_gm.data.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
