"""Shared pieces of the reliability suite: a tiny pool pair, damaged copies, and what a failed run must show."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from megatron_gm.data.indexed import write_indexed_dataset

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 256
NULL_SPEC = {"type": "NullTokenizer", "model": None, "model_sha256": None, "vocab_size": VOCAB}


def docs(seed: int, n: int = 300) -> list[np.ndarray]:
    """``n`` documents of 20..199 ids below VOCAB - 1, each ending with the eod id VOCAB - 1."""
    rng = np.random.default_rng(seed)
    return [np.append(rng.integers(0, VOCAB - 1, rng.integers(20, 200)), VOCAB - 1) for _ in range(n)]


def write_pool(prefix: Path, seed: int, n: int = 300, spec: dict | None = None):
    return write_indexed_dataset(prefix, docs(seed, n), tokenizer=spec or NULL_SPEC, source=f"seed{seed}")


def copy_pool(src: Path, dst: Path) -> Path:
    """Copy ``src.{bin,idx,gm.json}`` to ``dst``: damage the copy, never the fixture."""
    for ext in (".bin", ".idx", ".gm.json"):
        if Path(f"{src}{ext}").exists():
            shutil.copyfile(f"{src}{ext}", f"{dst}{ext}")
    return dst


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_byte(path: Path, at: int = -9) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def snapshot(*folders: Path) -> dict:
    """Every file's bytes and mtime under the folders (what 'unchanged' means)."""
    out = {}
    for folder in folders:
        if Path(folder).is_file():
            out[str(folder)] = (Path(folder).read_bytes(), Path(folder).stat().st_mtime_ns)
            continue
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def assert_one_line_error(rc: int, err: str, names: tuple[str, ...]) -> str:
    """Non-zero exit; the last stderr line is ``error: ...`` naming one of ``names``; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0, f"exit code 0\n{err[-3000:]}"
    assert lines and lines[-1].startswith("error: "), f"last line is not the error\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert any(n in lines[-1] for n in names), f"{lines[-1]!r} names none of {names}"
    return lines[-1]


class LockHolder:
    """Another live process that holds the output lock of ``folder`` (lock_output) until stopped."""

    def __init__(self, folder: Path):
        code = (
            "import sys\nfrom megatron_gm.procs import lock_output\n"
            "lock_output(sys.argv[1]); print('locked', flush=True); sys.stdin.readline()\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("RANK", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert self.proc.stdout.readline().strip() == "locked"

    def stop(self) -> None:
        """End it normally: its lock file goes with it."""
        self.proc.communicate("\n", timeout=30)
