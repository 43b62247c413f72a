#!/usr/bin/env python
"""Write a selection as its own Megatron indexed dataset. See megatron_gm/data/export.py."""

import sys

from megatron_gm.data.export import main

if __name__ == "__main__":
    sys.exit(main())
