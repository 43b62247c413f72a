"""Relational data influence model (docs/method.md steps 2 and 3): model, scoring API, training, bootstrap.

Scoring API used by selection::

    model, manifest = load_influence_model(path, dataset_fingerprint=fp)
    texts = document_texts(data_prefix, indices)
    h, s = score_texts(model, texts, batch_size)      # float32 [n, d], float32 [n]
    model.alpha, model.tau                             # learned scalars (floats)
"""

from megatron_gm.data.documents import document_texts
from megatron_gm.influence.embed import score_texts
from megatron_gm.influence.io import load_influence_model, save_influence_model
from megatron_gm.influence.model import (
    InfluenceModel,
    ModelConfig,
    RelationHeads,
    group_prediction,
)

__all__ = [
    "InfluenceModel",
    "ModelConfig",
    "RelationHeads",
    "document_texts",
    "group_prediction",
    "load_influence_model",
    "save_influence_model",
    "score_texts",
]
