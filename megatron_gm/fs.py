"""Files on the ground floor: atomic writes, build-then-swap folders, JSON reading, hashing.

- ``atomic_write_bytes``/``atomic_write_text``: a temporary sibling ``.{name}.tmp<pid>``, fsync, rename;
  ``remove_stale_temporaries`` deletes those a killed writer left.
- ``write_folder``: build a folder as ``.{name}.tmp<pid>`` and swap it in, so readers never see half of it.
- ``read_json``: a JSON file, or one ``GMError`` line naming the file and the fix.
- ``sha256_text``, ``sha256_file``, ``sha256_files`` (labelled files in one digest): hex digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from megatron_gm.errors import GMError

BLOCK = 1 << 22  # bytes read at a time when hashing


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>\d+)")


def remove_stale_temporaries(folder: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Delete ``.{name}.tmp<pid>`` files that ``atomic_write_bytes`` left in ``folder`` when killed.

    Only names starting with ``prefix`` and only those of processes that are gone (or of this one);
    a live writer's temporaries stay. Call it once when (re)opening an output, not per write.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMPORARY.fullmatch(p.name)
        if m and m["name"].startswith(prefix) and p.is_file() and not pid_alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process counts as gone: its old temporaries are stale)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_siblings(folder: Path) -> None:
    """Delete ``.{name}.tmp<pid>``/``.{name}.old<pid>`` left next to ``folder`` by a killed process."""
    pattern = re.compile(rf"\.{re.escape(folder.name)}\.(tmp|old)(\d+)")
    if not folder.parent.is_dir():
        return
    for p in folder.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and not pid_alive(int(m.group(2))):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def write_folder(folder: str | os.PathLike, build: Callable[[Path], Any]) -> Path:
    """``build(tmp)`` fills a temporary sibling folder, which then replaces ``folder``.

    An error leaves any existing ``folder`` untouched (and removes the temporary one); what a killed
    process left next to it is removed first.
    """
    folder = Path(folder)
    remove_stale_siblings(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The parsed JSON of ``path``; a file that does not parse is ``{path}: corrupt {what} (...); {fix}``."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GMError(f"{path}: corrupt{' ' + what if what else ''} ({e}); {fix}") from e


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _update(h, path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def sha256_files(items: Iterable[tuple[bytes, str | os.PathLike]]) -> str:
    """One digest over (label, file) pairs in order: each label's bytes, then the file's bytes."""
    h = hashlib.sha256()
    for label, path in items:
        h.update(label)
        _update(h, path)
    return h.hexdigest()
