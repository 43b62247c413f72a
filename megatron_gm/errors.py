"""User-facing errors: one line that names the file and the fix; tools exit non-zero on them."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class GMError(Exception):
    """An error caused by the user's input or environment, reported as one line without traceback."""


class ManifestMismatch(GMError):
    """An artifact was made for another dataset, stage, checkpoint or config."""


def cli_main(fn: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a tool's ``main``: a GMError becomes ``error: <message>`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            rc = fn(*args, **kwargs)
        except GMError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        return 0 if rc is None else int(rc)

    return wrapper
