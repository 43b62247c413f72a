"""Pure logic of the later-rounds benchmark (later_rounds.py): which checkpoint round 2 starts from, the
stage flags of the new stage, selection overlap, the LR-schedule check from Megatron's log, paired
differences by seed. No I/O beyond the strings given, no Megatron: unit-tested in
tests/unit/bench/test_later_rounds_logic.py.
"""

from __future__ import annotations

import re

import numpy as np
from metrics import paired

from megatron_gm.errors import GMError

# a later round's phases before its stage's pretraining (later_rounds.round_phases names them so)
ROUND = ("oracle", "influence", "bootstrap", "oracle_bootstrap", "influence_bootstrap", "select")
# Megatron's training log line: " ... iteration      423/    1267 | ... | learning rate: 3.000000E-03 | ..."
ITERATION_LINE = re.compile(r"iteration\s+(\d+)/\s*(\d+)\s*\|.*?learning rate:\s*([0-9.eE+-]+)")


def pick_iteration(
    saved: list[int], start: int, end: int, share: float = 0.75, want: int | None = None
) -> int:
    """The saved checkpoint strictly inside the stage (``start`` < it < ``end``) nearest ``share`` of the whole
    run's ``end`` iterations (ties: the earlier one), or ``want`` when given (it must be such a checkpoint)."""
    inside = sorted(i for i in saved if start < i < end)
    if want is not None:
        if want not in inside:
            raise GMError(
                f"--at-iteration {want}: no saved checkpoint there inside the stage ({start}..{end}); "
                f"saved: {', '.join(map(str, inside)) or 'none'}"
            )
        return want
    if not inside:
        raise GMError(
            f"no checkpoint saved strictly inside the stage ({start}..{end}) to start a second round from; "
            f"saved: {', '.join(map(str, sorted(saved))) or 'none'}"
        )
    target = share * end
    return min(inside, key=lambda i: (abs(i - target), i))


def stage_iters_flag(boundaries: list[int], at: int, total: int) -> str:
    """``--gm-stage-iters`` for a new stage that starts at ``at``: the run's earlier stage boundaries, then
    ``at`` (the new stage runs from ``at`` to ``--train-iters``; its index is ``len(boundaries) + 1``)."""
    if boundaries and at <= boundaries[-1]:
        raise GMError(f"a new stage at iteration {at} must start after the last boundary {boundaries[-1]}")
    if not 0 < at < total:
        raise GMError(f"a new stage at iteration {at} must start inside the run (0..{total})")
    return ",".join(str(b) for b in [*boundaries, at])


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with the value after ``flag`` replaced (the flag must be there once)."""
    if args.count(flag) != 1:
        raise ValueError(f"{flag} appears {args.count(flag)} times")
    i = args.index(flag)
    return [*args[: i + 1], value, *args[i + 2 :]]


def jaccard(a, b) -> float:
    """|A ∩ B| / |A ∪ B| of two sets of document indices."""
    a, b = np.unique(np.asarray(a)), np.unique(np.asarray(b))
    union = np.union1d(a, b).size
    return float(np.intersect1d(a, b, assume_unique=True).size / union) if union else 1.0


def learning_rates(log_text: str) -> tuple[dict[int, float], int | None]:
    """Megatron's logged learning rate by iteration, and the run's total iterations as logged."""
    lrs: dict[int, float] = {}
    total = None
    for m in ITERATION_LINE.finditer(log_text):
        lrs[int(m.group(1))] = float(m.group(3))
        total = int(m.group(2))
    return lrs, total


def schedule_check(stage: dict[int, float], total_logged: int | None, reference: dict[int, float], at: int,
                   total: int, rtol: float = 1e-6) -> dict:  # fmt: skip
    """Did the new stage resume at ``at`` and run the same LR schedule as the reference run (the evidence's
    stage 1, which continued through ``at``)? Compares the learning rate at every iteration both logged."""
    common = sorted(set(stage) & set(reference))
    worst = max((abs(stage[i] - reference[i]) / max(abs(reference[i]), 1e-30) for i in common), default=None)
    first = min(stage) if stage else None
    ok = bool(first == at + 1 and total_logged == total and common and worst is not None and worst <= rtol)
    return {"first_logged_iteration": first, "last_logged_iteration": max(stage) if stage else None,
            "train_iters_logged": total_logged, "compared_iterations": len(common),
            "max_relative_lr_difference": worst, "first_lr": stage.get(first) if first else None, "ok": ok}  # fmt: skip


def paired_by_seed(
    method: list[float | None], base: list[float | None], higher_is_better: bool = False
) -> dict | None:
    """metrics.paired (method - base per seed, mean, CI, wins) over the seeds where both have a value; None when
    no seed has both. ``wins``: seeds where the method is better (a lower loss, or a higher Spearman)."""
    seeds = [i for i, (m, b) in enumerate(zip(method, base, strict=True)) if m is not None and b is not None]
    if not seeds:
        return None
    m, b = [method[i] for i in seeds], [base[i] for i in seeds]
    out = paired(m, b)
    if higher_is_better:
        out["wins"] = sum(x > y for x, y in zip(m, b))
    out["seeds"] = seeds
    return out


def ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else float(num) / float(den)
