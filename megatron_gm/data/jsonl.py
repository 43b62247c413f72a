"""Reading jsonl / jsonl.gz input line by line, keeping bad lines countable instead of fatal."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

from megatron_gm.errors import GMError


def open_input(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise GMError(f"{path}: input not found; pass a .jsonl or .jsonl.gz file with --input")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_lines(path: str | os.PathLike) -> Iterator[bytes]:
    """Raw lines (bytes, newline stripped) of a jsonl or jsonl.gz file."""
    try:
        with open_input(path) as f:
            for line in f:
                yield line.rstrip(b"\r\n")
    except (gzip.BadGzipFile, EOFError, OSError) as e:
        raise GMError(f"{path}: unreadable ({e}); check the file is complete jsonl or jsonl.gz") from e


def parse_record(line: bytes, keys: list[str]) -> tuple[str, dict | None]:
    """Return (status, record): status is 'ok', 'blank', 'utf8', 'json', 'not_object' or 'missing_key'."""
    if not line.strip():
        return "blank", None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "utf8", None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return "json", None
    if not isinstance(rec, dict):
        return "not_object", None
    if any(not isinstance(rec.get(k), str) for k in keys):
        return "missing_key", rec
    return "ok", rec


def iter_texts(path: str | os.PathLike, key: str = "text", max_docs: int | None = None) -> Iterator[str]:
    """Non-empty texts under ``key``; bad lines are skipped."""
    n = 0
    for line in iter_lines(path):
        status, rec = parse_record(line, [key])
        if status == "ok" and rec[key].strip():
            yield rec[key]
            n += 1
            if max_docs is not None and n >= max_docs:
                return
