#!/usr/bin/env python
"""Group-MATES selection across MPI/Slurm ranks. See megatron_gm/selection/cli.py."""

import sys

from megatron_gm.selection.cli import main

if __name__ == "__main__":
    sys.exit(main())
