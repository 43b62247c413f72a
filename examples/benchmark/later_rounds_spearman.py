"""An influence model's Spearman on a common test store, scored by the project's own validation code.

``tools/train_influence_model.py`` picks its best model by ``Run.evaluate`` (megatron_gm/influence/trainer.py):
predictions of every held-out trajectory, then scipy's Spearman over all positions, with a CI that resamples
whole trajectories (``megatron_gm.stats.spearman_ci``). Here the same ``Run.evaluate`` runs on a store the
model never saw (every trajectory of it is "held out"), the model's heads standing in for the DeepSpeed
engine. Fast mode only: h comes from the frozen encoder, embedded and cached exactly as training does
(``cached_embeddings``), so every model of a seed shares one cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_gm.errors import GMError

EMBED_BATCH = 32  # the training tool's --embed-batch-size default (h depends on it only in the last bits)


class HeadsEngine:
    """What ``Run.evaluate`` asks of a DeepSpeed engine, over a loaded model's heads (fast mode: h -> [B, T])."""

    def __init__(self, heads, micro_batch: int = 32):
        self.heads, self.micro = heads, micro_batch

    def __call__(self, h):
        return self.heads(h)

    def train_micro_batch_size_per_gpu(self) -> int:
        return self.micro

    def eval(self) -> None:
        self.heads.eval()

    def train(self) -> None:  # evaluation only: stays in eval mode
        pass


def test_spearman(model_dir: Path, store: Path, data_path: str, cache: Path) -> dict:
    """Spearman (and its 95% CI over trajectories) of the model in ``model_dir`` on the oracle ``store``."""
    import torch

    from megatron_gm.data.indexed import load_dataset_info
    from megatron_gm.influence.data import load_stores, zscore_stats
    from megatron_gm.influence.embed_cache import cached_embeddings
    from megatron_gm.influence.io import load_influence_model, read_model_config
    from megatron_gm.influence.model import encoder_hash
    from megatron_gm.influence.train_config import TrainConfig
    from megatron_gm.influence.trainer import Prepared, Run
    from megatron_gm.stats import spearman_ci

    if read_model_config(model_dir)["fine_tuned"]:
        raise GMError(f"{model_dir}: a fine-tuned encoder; this benchmark scores fast-mode models only")
    torch.set_num_threads(2)
    info = load_dataset_info(data_path)
    model, manifest = load_influence_model(model_dir, info.fingerprint, device="cpu")
    data = load_stores([str(store)], info.fingerprint, info.num_docs)
    docs = np.unique(data.documents)
    h = cached_embeddings(encoder_hash(model.config.encoder_path), model, data_path, docs, cache, EMBED_BATCH,
                          info.fingerprint, False)  # fmt: skip
    mean, std = zscore_stats(data.labels)  # Spearman does not depend on it; MSE is on the store's own scale
    y = ((data.labels.astype(np.float64) - mean) / std).astype(np.float32)
    prep = Prepared(data, info.fingerprint, np.zeros(0, np.int64), np.arange(len(data)), y, mean, std, docs,
                    embeddings=h)  # fmt: skip
    cfg = TrainConfig(data_path=data_path, oracle=[str(store)], output=str(model_dir), mode="fast")
    run = Run(cfg, prep, "fast", model.config.relation, cache, rank=0, world=1)
    m = run.evaluate(HeadsEngine(model.heads))
    lo, hi = spearman_ci(*run.last_val, n=1000, seed=0)
    return {"spearman": m["spearman"], "ci95": [lo, hi], "mse": m["mse"], "trajectories": len(data),
            "model_iteration": manifest.iteration, "model_digest": manifest.digest()}  # fmt: skip
