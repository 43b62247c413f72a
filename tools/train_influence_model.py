#!/usr/bin/env python
"""See megatron_gm/influence/cli.py (train_main)."""

import sys

from megatron_gm.influence.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
