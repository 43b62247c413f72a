"""Manifests: every artifact says what it was made from, and loading a mismatched one is refused.

A manifest is a small JSON file next to (or inside the folder of) an artifact. It records the kind of
artifact, the dataset fingerprint it belongs to, the stage and checkpoint iteration, the seed and the
config that made it. ``Manifest.check`` compares it with what the consumer expects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from megatron_gm import __version__
from megatron_gm.errors import GMError, ManifestMismatch


@dataclasses.dataclass
class Manifest:
    kind: str
    dataset_fingerprint: str
    stage: int | None = None
    iteration: int | None = None
    seed: int | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> hash of an input artifact
    version: str = __version__

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json())

    def digest(self) -> str:
        """A short hash of the manifest (without the package version), for chaining artifacts."""
        d = dataclasses.asdict(self)
        d.pop("version")
        return sha256_text(json.dumps(d, sort_keys=True))[:16]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        path = Path(path)
        if not path.exists():
            raise GMError(f"{path}: manifest not found; the artifact is incomplete or the path is wrong")
        try:
            d = json.loads(path.read_text())
            fields = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in fields})
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise GMError(f"{path}: corrupt manifest ({e}); regenerate the artifact") from e

    def check(self, *, path: str | os.PathLike = "", **expected: Any) -> Manifest:
        """Raise ManifestMismatch unless every given field (or config key) has the expected value.

        ``expected`` keys are manifest fields; ``config__name=value`` checks ``config['name']``.
        """
        for key, want in expected.items():
            if want is None:
                continue
            if key.startswith("config__"):
                name = key[len("config__") :]
                have = self.config.get(name)
            else:
                have = getattr(self, key)
            if have != want:
                where = f"{path}: " if path else ""
                raise ManifestMismatch(
                    f"{where}{self.kind} was made for {key.replace('config__', 'config.')}={have!r}, "
                    f"this run has {want!r}; rebuild it for this run or point to the right artifact"
                )
        return self


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
