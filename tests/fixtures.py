"""Tiny synthetic fixtures built by the tests themselves (never the bundled pool)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more can about out time "
    "river city market council season album station energy report music garden winter empire engine"
).split()


def fake_text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    for i in range(0, n_words, rng.randint(8, 15)):
        words[i] = words[i].capitalize()
    text = " ".join(words)
    return text.replace(" The ", ". The ") + rng.choice([".", "!", " — café, naïve 123.", "\n\nEnd."])


def write_jsonl(path: Path, records: list[dict] | list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for r in records:
            f.write(r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode())
            f.write(b"\n")
    return path


def make_corpus(path: Path, n_docs: int = 200, seed: int = 0) -> Path:
    rng = random.Random(seed)
    return write_jsonl(
        path, [{"id": f"doc{i}", "text": fake_text(rng, rng.randint(20, 120))} for i in range(n_docs)]
    )
