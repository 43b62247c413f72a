"""Look into a Megatron checkpoint before loading it: its iteration, saved args, and optimizer state.

Megatron's ``load_checkpoint`` exits the process when a checkpoint lacks optimizer state; the oracle
needs that state (Adam moments, step, LR schedule position), so we refuse such a checkpoint first with
a one-line error. Reads Megatron's tracker file and either the distributed checkpoint (``torch_dist``:
common state + tensor metadata) or the legacy per-rank ``model_optim_rng.pt``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any

from megatron_gm.errors import GMError

TRACKER = "latest_checkpointed_iteration.txt"


@dataclasses.dataclass
class CheckpointInfo:
    path: str  # the iteration folder
    iteration: int
    args: Any  # the argparse Namespace pretraining saved (None if absent)
    has_optimizer: bool
    has_scheduler: bool

    def saved(self, name: str, default=None):
        return getattr(self.args, name, default) if self.args is not None else default


def padded_vocab_mismatch(saved: int | None, have: int | None, args) -> str | None:
    """Why a checkpoint's padded vocabulary does not fit this run's (None: it fits or is unknown).

    Megatron loads e.g. a TP=1 checkpoint into a TP=2 model with another padded vocabulary without an
    error (the embedding is silently re-cut), so pretraining and the oracle check it themselves."""
    if saved is None or have is None or saved == have:
        return None
    return (
        f"padded vocabulary {saved} in the checkpoint, {have} in this run (--make-vocab-size-divisible-by "
        f"{args.make_vocab_size_divisible_by} x TP {args.tensor_model_parallel_size}); pick a "
        f"--make-vocab-size-divisible-by that gives {saved}"
    )


def checkpoint_dir(load: str, step: int | None = None) -> tuple[str, int]:
    if step is not None:
        return os.path.join(load, f"iter_{step:07d}"), step
    tracker = os.path.join(load, TRACKER)
    if not os.path.isfile(tracker):
        raise GMError(
            f"{load}: no Megatron checkpoint ({TRACKER} missing); pass the stage's --save folder as --load"
        )
    text = open(tracker).read().strip()
    if text == "release":
        return os.path.join(load, "release"), 0
    try:
        it = int(text)
    except ValueError:
        raise GMError(f"{tracker}: unreadable ({text[:40]!r}); the checkpoint folder is corrupt") from None
    return os.path.join(load, f"iter_{it:07d}"), it


def inspect_checkpoint(load: str, step: int | None = None) -> CheckpointInfo:
    path, it = checkpoint_dir(load, step)
    if not os.path.isdir(path):
        raise GMError(f"{path}: checkpoint folder not found; check --load and --ckpt-step")
    meta = os.path.join(path, "metadata.json")
    if os.path.isfile(meta):
        info = _inspect_dist(path, meta)
    else:
        info = _inspect_legacy(path)
    info.iteration = int(info.iteration if info.iteration is not None else it)
    return info


def _inspect_dist(path: str, meta: str) -> CheckpointInfo:
    from megatron.core import dist_checkpointing

    try:
        backend = json.load(open(meta)).get("sharded_backend")
        common = dist_checkpointing.load_common_state_dict(path)
    except Exception as e:  # noqa: BLE001 - any read failure is a corrupt checkpoint to the user
        raise GMError(f"{path}: unreadable distributed checkpoint ({_first_line(e)}); check --load") from e
    has_opt = "optimizer" in common
    if has_opt and backend == "torch_dist":
        from torch.distributed.checkpoint import FileSystemReader

        keys = FileSystemReader(path).read_metadata().state_dict_metadata
        has_opt = any(k.startswith("optimizer.state.") for k in keys)
    return CheckpointInfo(
        path, common.get("iteration"), common.get("args"), has_opt, "opt_param_scheduler" in common
    )


def _inspect_legacy(path: str) -> CheckpointInfo:
    import torch

    files = sorted(glob.glob(os.path.join(path, "mp_rank_*", "model_optim_rng.pt")))
    if not files:
        raise GMError(f"{path}: neither a distributed nor a legacy Megatron checkpoint; check --load")
    import megatron.core  # noqa: F401 - registers Megatron's checkpoint classes as safe to unpickle

    try:  # weights_only: a checkpoint file never runs code here (only tensors and allow-listed types)
        sd = torch.load(files[0], map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or holding types outside the allow-list
        raise GMError(f"{files[0]}: unreadable checkpoint ({_first_line(e)}); check --load") from e
    return CheckpointInfo(
        path, sd.get("iteration"), sd.get("args"), "optimizer" in sd, "opt_param_scheduler" in sd
    )


def require_optimizer_state(info: CheckpointInfo) -> None:
    if not info.has_optimizer or not info.has_scheduler:
        missing = "optimizer state" if not info.has_optimizer else "LR scheduler state"
        raise GMError(
            f"{info.path}: checkpoint has no {missing}; the oracle probes with the Adam moments, step and LR "
            "schedule of the stage checkpoint: use a checkpoint saved without --no-save-optim"
        )


def _first_line(e: BaseException) -> str:
    """An exception as one short line (torch's messages run over many)."""
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else "") or type(e).__name__
