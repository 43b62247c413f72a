"""``python -m megatron_gm.megatron.launch [torchrun options] SCRIPT [ARGS]``: torchrun, our error last.

torchrun reports a failed worker with its own traceback (``ChildFailedError``) after everything the
workers printed, and exits 1: a user's one-line error (``error: ...``, exit code 2, printed once by rank
0 before any collective) ended up above torchrun's report. This wrapper runs torchrun unchanged and
passes its output through; when the job failed and a worker printed our one-line error, it prints that
line again as the last line on stderr and exits 2. Any other failure keeps torchrun's exit code.

SIGINT and SIGTERM are passed on to torchrun (which passes them to the workers: a preempted job still
saves), and torchrun is killed with this process if it dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import re
import signal
import subprocess
import sys

ERROR = re.compile(r"^(?:\[(?:rank|default)\d+\]:\s*)?(error: .*)$")


def _die_with_us() -> None:
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run(argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", *argv]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, preexec_fn=_die_with_us)
    forward = {
        s: signal.signal(s, lambda sig, _f: proc.send_signal(sig)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    last_error = None
    try:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
            m = ERROR.match(raw.decode(errors="replace").rstrip("\n"))
            if m:
                last_error = m.group(1)
        rc = proc.wait()
    finally:
        for s, h in forward.items():
            signal.signal(s, h)
    if rc != 0 and last_error is not None:
        print(last_error, file=sys.stderr, flush=True)
        return 2
    return 128 - rc if rc < 0 else rc  # killed by a signal: the shell's convention


def main() -> int:
    if len(sys.argv) < 2:
        print(
            "error: usage: python -m megatron_gm.megatron.launch [torchrun options] SCRIPT [ARGS]",
            file=sys.stderr,
        )
        return 2
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
