#!/usr/bin/env python
"""DCLM-style fastText quality filter as a pool-scores folder. See megatron_gm/quality/cli.py."""

import sys

from megatron_gm.quality.cli import main

if __name__ == "__main__":
    sys.exit(main())
