#!/usr/bin/env python
"""The whole Group-MATES loop, locally or through Slurm. See megatron_gm/pipeline/cli.py."""

import sys

from megatron_gm.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
