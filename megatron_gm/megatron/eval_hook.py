"""In-training evaluation: score the sets of an eval pack (``megatron_gm/evalpack.py``) every N iterations.

    pretrain_gpt_gm.py ... --gm-eval-pack pack.npz [--gm-eval-points 20 | --gm-eval-interval 50] [--gm-eval-log F]

Every ``--gm-eval-interval`` iterations counted from the stage's first iteration (default: the stage's
length / ``--gm-eval-points``, so every 5% of the stage), and at the stage's last iteration, rank 0 of each model replica's first TP rank scores every set with the
model being trained (eval mode, no gradients; no random draws, so the training trajectory and its resume
are unchanged) and appends one JSON line to the log (default ``{save}/gm_eval.jsonl``):
``{"iteration", "stage", "consumed_tokens", "sets": {name: {"loss", "tokens", ...}}}``. A run resumed after a
kill may repeat an iteration's line: readers keep the last one per iteration. Needs TP = PP = 1 (the
evaluation is a forward pass of the whole model in one process).
"""

from __future__ import annotations

import json
import os
import time

from megatron_gm.dist import get_logger
from megatron_gm.errors import GMError

log = get_logger(__name__)

_state: dict = {}


def add_eval_flags(group) -> None:
    group.add_argument(
        "--gm-eval-pack",
        type=str,
        default=None,
        metavar="NPZ",
        help="Eval pack (megatron_gm/evalpack.py) scored in-process during training.",
    )
    group.add_argument(
        "--gm-eval-interval",
        type=int,
        default=0,
        help="Iterations between in-training evaluations, counted from the stage start "
        "(the stage's last iteration is always evaluated); 0: see --gm-eval-points.",
    )
    group.add_argument(
        "--gm-eval-points",
        type=int,
        default=20,
        help="With --gm-eval-interval 0: evaluate this many evenly spaced times per stage (every 5%%).",
    )
    group.add_argument("--gm-eval-log", type=str, default=None, metavar="FILE",
                       help="JSON-lines log of the in-training evaluations (default: {save}/gm_eval.jsonl).")  # fmt: skip


def validate(args) -> None:
    pack = getattr(args, "gm_eval_pack", None)
    if not pack:
        if getattr(args, "gm_eval_interval", 0) or getattr(args, "gm_eval_log", None):
            raise GMError("--gm-eval-interval/--gm-eval-log need --gm-eval-pack")
        return
    if not os.path.isfile(pack):
        raise GMError(f"--gm-eval-pack {pack}: file not found; build it with megatron_gm.evalpack.save_pack")
    if args.gm_eval_interval < 0 or args.gm_eval_points < 1:
        raise GMError("--gm-eval-interval must be >= 0 and --gm-eval-points >= 1")
    if args.tensor_model_parallel_size > 1 or args.pipeline_model_parallel_size > 1:
        raise GMError("--gm-eval-pack evaluates the whole model in one process: use TP = PP = 1")
    if not (args.gm_eval_log or args.save):
        raise GMError("--gm-eval-pack needs --gm-eval-log or --save (the log goes to {save}/gm_eval.jsonl)")


def _due(args, iteration: int) -> bool:
    start = getattr(args, "gm_stage_start_iter", 0) or 0
    end = getattr(args, "gm_stage_end_iter", None) or args.train_iters
    every = args.gm_eval_interval or max(1, -(-(end - start) // args.gm_eval_points))
    return iteration > start and ((iteration - start) % every == 0 or iteration == end)


def _load(args):
    if "sets" not in _state:
        from megatron.training import get_tokenizer

        from megatron_gm.evalpack import load_pack
        from megatron_gm.megatron.samples import SampleFormat

        tok = get_tokenizer()
        _state["sets"], _state["meta"] = load_pack(args.gm_eval_pack, args.seq_length)
        _state["fmt"] = SampleFormat.from_args(args, tok.eod)
        _state["vocab"] = tok.vocab_size
    return _state["sets"], _state["fmt"], _state["vocab"]


def evaluate(model: list, iteration: int) -> dict | None:
    """Score the pack at ``iteration`` if due; rank 0 appends the line. Returns the row (rank 0) or None."""
    from megatron.training import get_args

    args = get_args()
    if not getattr(args, "gm_eval_pack", None) or not _due(args, iteration):
        return None  # every training iteration passes here: nothing else before this check
    import torch

    from megatron_gm.megatron.scoring import prompt_metrics, reference_metrics, score_samples

    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return None  # the replicas are identical; one process evaluates
    sets, fmt, vocab = _load(args)
    t0 = time.perf_counter()
    module = model[0]
    row: dict = {
        "iteration": iteration,
        "stage": getattr(args, "gm_stage", 0),
        "consumed_tokens": iteration * args.global_batch_size * args.seq_length,
        "sets": {},
    }
    try:
        for name, (tokens, mask, kind) in sets.items():
            scores = score_samples(module, tokens, mask, fmt, vocab, batch=32)
            row["sets"][name] = prompt_metrics(scores) if kind == "prompts" else reference_metrics(scores)
    finally:
        module.train()
    row["seconds"] = round(time.perf_counter() - t0, 3)
    path = args.gm_eval_log or os.path.join(args.save, "gm_eval.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    brief = "  ".join(f"{k} {v['loss']:.4f}" for k, v in row["sets"].items())
    log.info(f"megatron-gm eval at iteration {iteration}: {brief} ({row['seconds']:.1f} s)")
    return row


def read_log(path: str | os.PathLike) -> list[dict]:
    """The log's rows, one per iteration (the last line wins, as after a resume), by iteration."""
    rows: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                rows[int(r["iteration"])] = r
    return [rows[k] for k in sorted(rows)]
