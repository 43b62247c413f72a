"""Pure numerics of the benchmark: token efficiency on a loss curve, seed aggregation, overhead FLOPs.

No I/O, no Megatron: unit-tested in tests/unit/bench/test_benchmark_metrics.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def tokens_to_reach(tokens: list[float], losses: list[float], target: float) -> float | None:
    """Tokens at which the piecewise-linear curve (tokens ascending) first reaches ``target`` loss.

    None when the curve never gets that low (the other method is better than the whole curve).
    """
    t = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if t.ndim != 1 or t.shape != y.shape or len(t) == 0:
        raise ValueError("tokens and losses must be 1-d and of the same non-zero length")
    if np.any(np.diff(t) <= 0):
        raise ValueError("tokens must be strictly ascending")
    if y[0] <= target:
        return float(t[0])
    for i in range(1, len(t)):
        if y[i] <= target:
            frac = (y[i - 1] - target) / (y[i - 1] - y[i])
            return float(t[i - 1] + frac * (t[i] - t[i - 1]))
    return None


@dataclasses.dataclass
class Efficiency:
    value: float  # tokens random needs / tokens the method used
    lower_bound: bool  # random never reached the loss: value uses random's last point (a lower bound)
    upper_bound: bool = False  # matched_quality_efficiency: the method never reached random's final loss


def token_efficiency(
    random_tokens: list[float], random_losses: list[float], method_final_loss: float, method_tokens: float
) -> Efficiency:
    """Tokens random needs to reach the method's final loss (interpolated on random's curve) ÷ the
    method's tokens. If random never gets there, random's total is used and flagged as a lower bound."""
    if method_tokens <= 0:
        raise ValueError("method_tokens must be positive")
    need = tokens_to_reach(random_tokens, random_losses, method_final_loss)
    if need is None:
        return Efficiency(float(random_tokens[-1]) / method_tokens, True)
    return Efficiency(need / method_tokens, False)


def matched_quality_efficiency(
    method_tokens: list[float], method_losses: list[float], random_final_loss: float, random_tokens: float
) -> Efficiency:
    """Tokens random used ÷ tokens the method needs to reach random's final loss (interpolated on the
    method's curve): "the same quality with 1/x of the tokens". If the method never gets there, its total
    is used and flagged as an upper bound."""
    if random_tokens <= 0:
        raise ValueError("random_tokens must be positive")
    need = tokens_to_reach(method_tokens, method_losses, random_final_loss)
    if need is None:
        return Efficiency(random_tokens / float(method_tokens[-1]), False, True)
    return Efficiency(random_tokens / need if need > 0 else math.inf, False)


@dataclasses.dataclass
class Aggregate:
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for one seed
    lo: float
    hi: float
    n: int


def aggregate(values: list[float]) -> Aggregate:
    """Across seeds (NaN / None values are dropped)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return Aggregate(math.nan, math.nan, math.nan, math.nan, 0)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return Aggregate(float(v.mean()), std, float(v.min()), float(v.max()), len(v))


def curve_band(
    curves: list[tuple[list[float], list[float]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seed band of curves on their common token grid (points all seeds have): x, mean, min, max."""
    common = sorted(set.intersection(*[set(map(float, c[0])) for c in curves])) if curves else []
    x = np.asarray(common, dtype=np.float64)
    ys = np.asarray([[dict(zip(map(float, t), y))[k] for k in common] for t, y in curves], dtype=np.float64)
    if len(common) == 0:
        return x, x, x, x
    return x, ys.mean(0), ys.min(0), ys.max(0)


def wins(method: list[float], baseline: list[float]) -> tuple[int, int]:
    """Seeds where the method's loss is strictly lower than the baseline's (paired by seed), of how many."""
    pairs = [(a, b) for a, b in zip(method, baseline, strict=True) if a is not None and b is not None]
    return sum(a < b for a, b in pairs), len(pairs)


def overhead_share(overhead_s: float, pretrain_s: float) -> float:
    """Share of the whole run's time spent on selection overhead."""
    total = overhead_s + pretrain_s
    return overhead_s / total if total > 0 else math.nan


# --- efficiency the paper's way: random trained to several budgets, each with its own full schedule -----


@dataclasses.dataclass
class BudgetEfficiency:
    """Tokens random needs for the method's final loss ÷ the method's tokens, from random's budget runs.

    ``value`` is None outside the budgets' range; ``label`` is then "> {largest}" (random's largest budget
    does not reach the method's loss) or "< {smallest}" (the method is worse than random at its own budget).
    ``bound`` is the budget ratio at the edge, used for censored means."""

    value: float | None
    label: str
    bound: float | None = None


def budget_efficiency(
    budget_tokens: list[float], budget_losses: list[float], method_loss: float, method_tokens: float
) -> BudgetEfficiency:
    """Interpolate, linearly in log(tokens), the final losses of random's complete runs at several budgets
    (tokens ascending) to the method's final loss, and divide by the method's tokens."""
    t = np.asarray(budget_tokens, dtype=np.float64)
    y = np.asarray(budget_losses, dtype=np.float64)
    if t.ndim != 1 or t.shape != y.shape or len(t) < 2 or np.any(np.diff(t) <= 0) or method_tokens <= 0:
        raise ValueError(
            "need >= 2 budgets with ascending tokens, as many losses, and positive method tokens"
        )
    ratios = t / method_tokens
    if method_loss > y[0]:
        return BudgetEfficiency(None, f"< {ratios[0]:.2g}", float(ratios[0]))
    need = tokens_to_reach(list(np.log(t)), list(y), method_loss)
    if need is None:
        return BudgetEfficiency(None, f"> {ratios[-1]:.2g}", float(ratios[-1]))
    v = float(np.exp(need) / method_tokens)
    return BudgetEfficiency(v, f"{v:.2f}")


def summarize_efficiency(per_seed: list[BudgetEfficiency], *, seed: int = 0) -> dict:
    """Per seed (numbers, or strings outside the range), the mean and a 95% bootstrap CI over seeds.

    A value outside the range counts at its bound (a censored value): the mean and CI are then bounds too,
    and are written as strings ("> 2.31")."""
    from megatron_gm.stats import bootstrap_ci

    vals = [e.value if e.value is not None else e.bound for e in per_seed]
    above = any(e.value is None and e.label.startswith(">") for e in per_seed)
    below = any(e.value is None and e.label.startswith("<") for e in per_seed)
    mean = float(np.mean(vals))
    lo, hi = bootstrap_ci(vals, seed=seed)

    def fmt(x: float):
        if above and not below:
            return f"> {x:.2f}"
        if below and not above:
            return f"< {x:.2f}"
        return f"~ {x:.2f}" if (above and below) else round(x, 4)

    return {
        "per_seed": [e.value if e.value is not None else e.label for e in per_seed],
        "mean": fmt(mean),
        "ci95": [fmt(lo), fmt(hi)],
        "censored": sum(e.value is None for e in per_seed),
    }


def paired(method: list[float], baseline: list[float], *, seed: int = 0) -> dict:
    """Per-seed differences method − baseline (lower loss is better), mean, 95% bootstrap CI, wins k of n."""
    from megatron_gm.stats import bootstrap_ci

    d = [a - b for a, b in zip(method, baseline, strict=True)]
    lo, hi = bootstrap_ci(d, seed=seed)
    k, n = wins(method, baseline)
    return {"per_seed": d, "mean": float(np.mean(d)), "ci95": [lo, hi], "wins": k, "n": n}
