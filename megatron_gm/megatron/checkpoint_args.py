"""Flags a run on a saved checkpoint takes from it, and the architecture check against it.

The oracle (``tools/collect_oracle.py``) and ``tools/evaluate.py`` both start Megatron on a stage
checkpoint: training flags the command line leaves out are taken from the checkpoint's saved args
(``INHERITED_VALUES``, ``INHERITED_SWITCHES``), and model flags that differ from it are refused.
"""

from __future__ import annotations

import argparse

from megatron_gm.errors import GMError

# Training settings the probe step uses, copied from the checkpoint's saved args when the command line
# leaves them out (value flags), or added when pretraining had them on (switches).
INHERITED_VALUES = (
    "--lr", "--min-lr", "--clip-grad", "--weight-decay", "--weight-decay-incr-style", "--adam-beta1",
    "--adam-beta2", "--adam-eps", "--optimizer", "--lr-decay-style", "--gm-stage", "--gm-stage-iters",
)  # fmt: skip
INHERITED_SWITCHES = ("--bf16", "--fp16", "--eod-mask-loss", "--reset-position-ids", "--reset-attention-mask")


def given_flags(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def inherit_flags(argv: list[str], ckpt) -> list[str]:
    """Flags to add from the checkpoint's saved args: training settings the command line leaves out.

    The LR schedule itself is loaded from the checkpoint; its flags only have to pass Megatron's checks.
    """
    given = given_flags(argv)
    extra: list[str] = []

    def saved(flag: str):
        return ckpt.saved(flag[2:].replace("-", "_"))

    def add(flag: str) -> None:
        if flag not in given and saved(flag) is not None:
            extra.extend([flag, str(saved(flag))])

    for flag in INHERITED_VALUES:
        add(flag)
    if saved("--weight-decay-incr-style") not in (None, "constant"):
        add("--start-weight-decay")
        add("--end-weight-decay")
    if given & {"--train-iters", "--train-samples"}:
        unit = "iters" if "--train-iters" in given else "samples"
    else:
        unit = "iters" if saved("--train-iters") else "samples"
        add(f"--train-{unit}")
    if not given & {"--lr-decay-iters", "--lr-decay-samples"}:
        add(f"--lr-decay-{unit}")
    if not given & {"--lr-warmup-fraction", "--lr-warmup-iters", "--lr-warmup-samples"}:
        add("--lr-warmup-fraction" if saved("--lr-warmup-fraction") is not None else f"--lr-warmup-{unit}")
    if (
        saved("--lr-decay-style") == "WSD"
    ):  # WSD needs its cooldown length (and style) to pass Megatron's checks
        add("--lr-wsd-decay-style")
        if not given & {"--lr-wsd-decay-iters", "--lr-wsd-decay-samples"}:
            add(
                "--lr-wsd-decay-iters"
                if saved("--lr-wsd-decay-iters") is not None
                else "--lr-wsd-decay-samples"
            )
    for flag in INHERITED_SWITCHES:
        if flag not in given and saved(flag):
            extra.append(flag)
    return extra


def pre_parse(argv: list[str]):
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--load", default=None)
    p.add_argument("--ckpt-step", type=int, default=None)
    known, _ = p.parse_known_args(argv)
    if not known.load:
        raise GMError("--load is required: the stage checkpoint folder (pretraining's --save)")
    return known


# Flags that shape the model or its training sample: the run must match the checkpoint's.
ARCHITECTURE = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "group_query_attention",
    "max_position_embeddings", "seq_length", "position_embedding_type", "untie_embeddings_and_output_weights",
    "normalization", "swiglu", "add_bias_linear", "bf16", "fp16",
)  # fmt: skip


def check_architecture(args, ckpt, vocab_size: int) -> None:
    """Refuse a run whose model differs from the checkpoint's (Megatron may load it silently)."""
    from megatron.training.vocab_utils import calculate_padded_vocab_size

    from megatron_gm.megatron.checkpoint import padded_vocab_mismatch

    diff = []
    for name in ARCHITECTURE:
        have, saved = getattr(args, name, None), ckpt.saved(name)
        if saved is not None and have != saved:
            diff.append(f"{name}: checkpoint {saved}, this run {have}")
    have = calculate_padded_vocab_size(
        vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size, logging_enabled=False
    )
    vocab = padded_vocab_mismatch(ckpt.saved("padded_vocab_size"), have, args)
    if vocab:
        diff.append(vocab)
    if diff:
        raise GMError(f"{ckpt.path}: the model flags differ from pretraining's: {'; '.join(diff)}")
