"""Scoring fixed samples with a Megatron GPT model: per-sample losses and exact match from its logits.

Used by ``tools/evaluate.py`` (a checkpoint) and the in-training evaluation hook (``eval_hook.py``). The
loss is computed over the full padded vocabulary (as Megatron's own loss), the argmax over the
tokenizer's vocabulary.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from megatron_gm.megatron.samples import to_batch


@dataclasses.dataclass
class Scores:
    """Per sample: summed loss over counted labels, their count, and whether argmax got all of them."""

    loss_sum: np.ndarray  # float64 [n]
    count: np.ndarray  # int64 [n]
    all_correct: np.ndarray  # bool [n]


def score_samples(
    model, tokens: np.ndarray, mask: np.ndarray, fmt, vocab_size: int, batch: int = 16
) -> Scores:
    """Forward ``model`` (a Megatron GPTModel, eval mode) over samples; losses from its logits."""
    import torch

    n = len(tokens)
    loss_sum, count = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)
    all_correct = np.zeros(n, dtype=bool)
    model.eval()
    device = next(model.parameters()).device  # the batch goes where the model is (CPU or its GPU)
    with torch.no_grad():
        for i in range(0, n, batch):
            b = to_batch(tokens[i : i + batch], mask[i : i + batch], fmt)
            b = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
            logits = model(b["tokens"], b["position_ids"], b["attention_mask"]).float()
            logp = torch.log_softmax(logits, dim=-1)
            tok_loss = -logp.gather(-1, b["labels"][..., None])[..., 0].double()
            m = b["loss_mask"].double()
            correct = logits[..., :vocab_size].argmax(-1) == b["labels"]
            loss_sum[i : i + batch] = (tok_loss * m).sum(1).cpu().numpy()
            count[i : i + batch] = m.sum(1).cpu().numpy().astype(np.int64)
            all_correct[i : i + batch] = (correct | (m == 0)).all(1).cpu().numpy()
    return Scores(loss_sum, count, all_correct)


def reference_metrics(s: Scores) -> dict:
    return {
        "loss": float(s.loss_sum.sum() / s.count.sum()),
        "samples": len(s.count),
        "tokens": int(s.count.sum()),
    }


def prompt_metrics(s: Scores) -> dict:
    return {
        "loss": float(s.loss_sum.sum() / s.count.sum()),
        "example_loss": float(np.mean(s.loss_sum / s.count)),
        "accuracy": float(s.all_correct.mean()),
        "examples": len(s.count),
        "target_tokens": int(s.count.sum()),
    }
