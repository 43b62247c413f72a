#!/usr/bin/env python
"""See megatron_gm/influence/cli.py (bootstrap_main)."""

import sys

from megatron_gm.influence.cli import bootstrap_main

if __name__ == "__main__":
    sys.exit(bootstrap_main())
