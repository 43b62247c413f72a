"""Run one writer of the kill -9 matrix and SIGKILL this process at an exact point of its writes.

    python tests/kill_driver.py PATTERN ENTRY ARGS...

Every artifact is written under a temporary name and renamed into place with ``os.replace``; the driver
kills the process (``SIGKILL``: no handler, no cleanup, as ``kill -9``) just before the first
``os.replace`` whose destination matches the regular expression PATTERN, i.e. with that file complete
under its temporary name and everything after it not begun. ENTRY is the writer:

- ``select ARGS``: tools/select_data.py's main;
- ``dataset PREFIX``: write_indexed_dataset of the matrix's pool;
- ``influence FOLDER ENCODER FINGERPRINT``: save_influence_model of the matrix's model;
- ``oracle FOLDER FINGERPRINT``: write_oracle_store of the matrix's store.

The process exits 0 when the pattern never matched (the test then fails: the point was not reached).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arm(pattern: str) -> None:
    real, rx = os.replace, re.compile(pattern)

    def replace(src, dst, *a, **k):
        if rx.search(str(dst)):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)

    os.replace = replace


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from tests import kill_writers

    pattern, entry, *args = sys.argv[1:]
    arm(pattern)
    return kill_writers.ENTRIES[entry](args)


if __name__ == "__main__":
    sys.exit(main())
