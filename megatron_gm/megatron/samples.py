"""Training samples as Megatron's GPT dataset makes them, for one pool document or a reference chunk.

A sample is ``tokens`` (int64, seq_length + 1) and ``mask`` (float32, seq_length): which label positions
count. Shorter inputs are padded with token 0 and mask 0. ``to_batch`` turns samples into the batch dict
Megatron's ``get_batch`` reads (tokens, labels, loss_mask, position_ids, attention_mask), with the
attention mask, position ids and EOD loss masking built by Megatron's own
``gpt_dataset._get_ltor_masks_and_position_ids``, so a probe step sees exactly what pretraining sees.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from megatron_gm.data.reference import pad_sample


@dataclasses.dataclass(frozen=True)
class SampleFormat:
    """The dataset flags that shape a sample (Megatron's names)."""

    seq_length: int
    eod: int
    eod_mask_loss: bool = False
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    create_attention_mask: bool = True

    @classmethod
    def from_args(cls, args, eod: int) -> SampleFormat:
        return cls(
            seq_length=args.seq_length,
            eod=eod,
            eod_mask_loss=bool(args.eod_mask_loss),
            reset_position_ids=bool(args.reset_position_ids),
            reset_attention_mask=bool(args.reset_attention_mask),
            create_attention_mask=bool(args.create_attention_mask_in_dataloader),
        )


def document_sample(dataset, doc: int, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Pool document ``doc`` of a Megatron ``IndexedDataset`` as one sample (its first seq_length+1 tokens)."""
    length = int(dataset.sequence_lengths[doc])
    tokens = dataset.get(int(doc), offset=0, length=min(length, seq_length + 1))
    return pad_sample(tokens, None, seq_length)


def to_batch(tokens: np.ndarray, mask: np.ndarray, fmt: SampleFormat) -> dict:
    """Samples ``tokens`` [b, s+1] and ``mask`` [b, s] as Megatron's batch dict of CPU tensors."""
    import torch
    from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

    tokens = np.atleast_2d(tokens)
    mask = np.atleast_2d(mask)
    rows = {"tokens": [], "labels": [], "loss_mask": [], "position_ids": [], "attention_mask": []}
    for t, m in zip(tokens, mask, strict=True):
        text = torch.from_numpy(np.ascontiguousarray(t, dtype=np.int64))
        inp, labels = text[:-1].contiguous(), text[1:].contiguous()
        attn, loss_mask, pos = _get_ltor_masks_and_position_ids(
            inp,
            fmt.eod,
            fmt.reset_position_ids,
            fmt.reset_attention_mask,
            fmt.eod_mask_loss,
            fmt.create_attention_mask,
        )
        rows["tokens"].append(inp)
        rows["labels"].append(labels)
        rows["loss_mask"].append(loss_mask * torch.from_numpy(np.asarray(m, dtype=np.float32)))
        rows["position_ids"].append(pos)
        rows["attention_mask"].append(attn)
    batch = {k: torch.stack(v) for k, v in rows.items() if k != "attention_mask"}
    batch["attention_mask"] = torch.stack(rows["attention_mask"]) if fmt.create_attention_mask else None
    return batch
