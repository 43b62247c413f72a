"""A synthetic oracle store over a real pool, for benchmarking the influence model before real labels exist.

NOT oracle labels: nothing here measures a language model. The labels mimic the shape of group influence
with features the encoder does not see directly:

    q(x)   = standardised share of letters and spaces in the text (clean text helps: negative label)
    r(i,j) = cosine of hashed bag-of-words vectors (redundancy)
    I_0 = −q(x_0),  I_t = −q(x_t) · (1/t) Σ_{j<t} (1 − r(x_j, x_t)/τ*) + noise,   τ* = 0.3

    python -m megatron_gm.influence.synthetic --data-path PREFIX --output DIR [--trajectories 2000 --T 10]
        [--pool-docs 3000]
"""

from __future__ import annotations

import argparse
import re
import zlib

import numpy as np

from megatron_gm.errors import cli_main
from megatron_gm.manifest import Manifest

TAU_STAR = 0.3
BUCKETS = 4096


def _features(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    q = np.array([sum(c.isalpha() or c == " " for c in t) / max(1, len(t)) for t in texts])
    q = (q - q.mean()) / (q.std() + 1e-12)
    bow = np.zeros((len(texts), BUCKETS), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z]{3,}", t.lower()):
            bow[i, zlib.crc32(w.encode()) % BUCKETS] += 1.0
    bow /= np.linalg.norm(bow, axis=1, keepdims=True) + 1e-12
    return q, bow


def synthetic_labels(texts: list[str], docs: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Labels [n, T] for trajectories ``docs`` (indices into ``texts``)."""
    q, bow = _features(texts)
    n, T = docs.shape
    labels = np.zeros((n, T))
    for t in range(T):
        if t == 0:
            labels[:, 0] = -q[docs[:, 0]]
            continue
        r = np.einsum("bjd,bd->bj", bow[docs[:, :t]], bow[docs[:, t]])
        labels[:, t] = -q[docs[:, t]] * np.mean(1 - r / TAU_STAR, axis=1)
    rng = np.random.default_rng(seed)
    return labels + noise * labels.std() * rng.normal(size=labels.shape)


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--trajectories", type=int, default=2000)
    p.add_argument("--T", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.3, help="noise std as a share of the label std")
    p.add_argument(
        "--pool-docs", type=int, default=0, help="draw trajectories from this many documents (0: all)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from megatron_gm.data.documents import document_texts
    from megatron_gm.data.indexed import load_dataset_info
    from megatron_gm.oracle.store import write_oracle_store

    info = load_dataset_info(args.data_path)
    rng = np.random.default_rng(args.seed)
    pool = np.arange(info.num_docs)
    if 0 < args.pool_docs < info.num_docs:
        pool = np.sort(rng.choice(info.num_docs, args.pool_docs, replace=False))
    docs = np.stack([rng.choice(pool, args.T, replace=False) for _ in range(args.trajectories)])
    uniq, inv = np.unique(docs, return_inverse=True)
    labels = synthetic_labels(
        document_texts(args.data_path, uniq), inv.reshape(docs.shape), args.noise, args.seed
    )
    manifest = Manifest(
        "oracle",
        info.fingerprint,
        stage=0,
        iteration=0,
        seed=args.seed,
        config={"T": args.T, "policy": "synthetic", "noise": args.noise, "synthetic": True},
    )
    n = len(docs)
    write_oracle_store(
        args.output,
        manifest,
        [
            {
                "traj_id": np.arange(n, dtype=np.int64),
                "documents": docs.astype(np.int64),
                "labels": labels.astype(np.float32),
                "ref_loss": np.zeros((n, args.T + 1), np.float32),
            }
        ],
    )
    print(f"wrote {args.output}: {n} synthetic trajectories, T={args.T}, label std {labels.std():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
