"""Spherical k-means on the learned embeddings h (faiss), trained on a seeded sample.

Training happens in one process (rank 0) on a sample that depends only on the number of documents, the
number of clusters and the seed, with a fixed thread count, so the centroids do not depend on how many
ranks run. Assignment is the nearest centroid by inner product (centroids are unit vectors, so this is
also the L2-nearest one), ties to the lowest cluster id.
"""

from __future__ import annotations

import logging

import numpy as np

from megatron_gm.errors import GMError
from megatron_gm.selection.methods import STREAM_KMEANS, rng_for


def kmeans_sample(num_docs: int, num_clusters: int, seed: int, points_per_centroid: int) -> np.ndarray:
    """Sorted document indices to train the centroids on (all documents if the pool is small)."""
    size = min(num_docs, num_clusters * points_per_centroid)
    if size == num_docs:
        return np.arange(num_docs, dtype=np.int64)
    idx = rng_for(seed, STREAM_KMEANS).choice(num_docs, size=size, replace=False)
    return np.sort(idx).astype(np.int64)


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines are noise here
    import faiss

    return faiss


def train_centroids(
    x: np.ndarray, num_clusters: int, *, seed: int, niter: int, threads: int = 1
) -> np.ndarray:
    faiss = _faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if num_clusters > x.shape[0]:
        raise GMError(f"--gm-num-clusters {num_clusters} is more than the {x.shape[0]} documents to cluster")
    faiss.omp_set_num_threads(threads)
    km = faiss.Kmeans(
        x.shape[1],
        num_clusters,
        niter=niter,
        spherical=True,
        seed=seed,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(1, -(-x.shape[0] // num_clusters)),
    )
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(h: np.ndarray, centroids: np.ndarray, block: int = 16384) -> np.ndarray:
    """Cluster id (int32) of each row of h."""
    out = np.empty(h.shape[0], dtype=np.int32)
    ct = np.ascontiguousarray(centroids.T)
    for lo in range(0, h.shape[0], block):
        out[lo : lo + block] = np.argmax(h[lo : lo + block] @ ct, axis=1)
    return out
