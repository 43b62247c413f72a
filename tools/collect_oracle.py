#!/usr/bin/env python
"""Collect oracle influence labels from a stage checkpoint (docs/method.md step 1), on Megatron.

Launch it like pretraining, with pretraining's model and data flags plus the --gm-oracle-* group:

    torchrun --nproc-per-node 2 tools/collect_oracle.py <pretraining's Megatron flags> \
        --load runs/x/stage0/checkpoints --gm-stage 0 \
        --gm-oracle-output runs/x/stage0/oracle --gm-oracle-trajectories 1000 --gm-oracle-T 10

Trajectories are split over data-parallel groups (world size / (TP x PP)); a rerun after a kill skips
the finished shards. See megatron_gm/oracle/cli.py for every flag.
"""

import sys

from megatron_gm.oracle.cli import main

if __name__ == "__main__":
    sys.exit(main())
