"""A plain torch probe engine on a tiny language model, for testing the oracle loop without Megatron."""

from __future__ import annotations

import numpy as np
import torch

from megatron_gm.data.reference import ReferenceSet
from megatron_gm.megatron.samples import document_sample
from megatron_gm.oracle.snapshot import StateSnapshot

VOCAB = 64
SEQ = 16


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 16):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.drop = torch.nn.Dropout(0.1)
        self.out = torch.nn.Linear(dim, vocab)

    def token_losses(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-label cross entropy for samples [b, s+1] -> [b, s]."""
        x = self.emb(tokens[:, :-1])
        x = x + torch.cumsum(x, dim=1) / torch.arange(1, x.shape[1] + 1)[None, :, None]
        h = self.drop(torch.tanh(self.mix(x)))
        logits = self.out(h)
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
        ).view(tokens.shape[0], -1)


def build_training(seed: int = 0, warm_steps: int = 3, dataset=None):
    """Model, AdamW, LR schedule; a few steps on pool documents so the optimizer has state."""
    torch.manual_seed(seed)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s))
    for i in range(warm_steps):
        tokens, mask = document_sample(dataset, i, SEQ)
        loss = masked_mean(model.token_losses(torch.from_numpy(tokens)[None]), torch.from_numpy(mask)[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched


def masked_mean(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def reference_loss(model: TinyLM, ref: ReferenceSet) -> float:
    model.eval()
    with torch.no_grad():
        losses = model.token_losses(torch.from_numpy(ref.tokens)).double()
    model.train()
    mask = torch.from_numpy(ref.mask).double()
    return float((losses * mask).sum() / mask.sum())


class TorchEngine:
    """The probe engine protocol over TinyLM + AdamW + clipping + LR schedule."""

    def __init__(self, model, opt, sched, dataset, ref: ReferenceSet, clip: float = 1.0):
        self.model, self.opt, self.sched = model, opt, sched
        self.dataset, self.ref, self.clip = dataset, ref, clip
        self.snapshot = StateSnapshot(model.parameters(), [opt], [sched])
        self.steps = 0

    def restore(self) -> None:
        self.snapshot.restore()

    def train_step(self, doc: int, seed: int) -> None:
        torch.manual_seed(seed)
        tokens, mask = document_sample(self.dataset, doc, SEQ)
        loss = masked_mean(
            self.model.token_losses(torch.from_numpy(tokens)[None]), torch.from_numpy(mask)[None]
        )
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        self.steps += 1

    def reference_loss(self) -> float:
        return reference_loss(self.model, self.ref)


def write_pool(prefix, n_docs: int = 40, seed: int = 0):
    """A tiny indexed dataset of random token documents (lengths 1..40, a few shorter than SEQ)."""
    from megatron_gm.data.indexed import write_indexed_dataset

    rng = np.random.default_rng(seed)
    docs = [rng.integers(1, VOCAB, size=int(rng.integers(1, 40))) for _ in range(n_docs)]
    docs[0] = rng.integers(1, VOCAB, size=30)
    docs[5] = np.array([7])  # one token: never a random candidate
    info = write_indexed_dataset(
        prefix, docs, tokenizer={"type": "NullTokenizer", "vocab_size": VOCAB}, source="test"
    )
    return info, docs


def reference_from_tokens(n: int = 6, seed: int = 1) -> ReferenceSet:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, size=(n, SEQ + 1)).astype(np.int64)
    mask = np.ones((n, SEQ), dtype=np.float32)
    mask[0, :5] = 0
    return ReferenceSet(tokens=tokens, mask=mask, source="synthetic", records={"text": n})
