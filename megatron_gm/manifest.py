"""Manifests: every artifact says what it was made from, and loading a mismatched one is refused.

A manifest is a small JSON file next to (or inside the folder of) an artifact. It records the kind of
artifact, the dataset fingerprint it belongs to, the stage and checkpoint iteration, the seed and the
config that made it. ``Manifest.check`` compares it with what the consumer expects.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from megatron_gm import __version__
from megatron_gm.errors import GMError, ManifestMismatch
from megatron_gm.fs import atomic_write_text, read_json, sha256_text


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
        d = read_json(path, "manifest", "regenerate the artifact")
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in fields})
        except TypeError as e:
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
