#!/usr/bin/env python
"""Write our sidecar for a dataset Megatron-LM's own tools wrote. See megatron_gm/data/register.py."""

import sys

from megatron_gm.data.register import main

if __name__ == "__main__":
    sys.exit(main())
