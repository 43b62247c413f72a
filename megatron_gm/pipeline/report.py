"""The end-of-run report: wall time per phase, losses per stage (Group-MATES vs the random twin), paths."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from megatron_gm.manifest import atomic_write_text
from megatron_gm.pipeline.plan import Phase
from megatron_gm.pipeline.state import RunState

# Megatron's log lines: " validation loss at iteration 100 | lm loss value: 5.123E+00 | ..." and
# " [...] iteration  100/  200 | ... | lm loss: 5.432E+00 | ..."
VALID_RE = re.compile(r"validation loss at iteration\s+(\d+)[^|]*\|\s*lm loss value:\s*([0-9.eE+-]+)")
TRAIN_RE = re.compile(r"iteration\s+(\d+)/\s*\d+\s*\|.*?\blm loss:\s*([0-9.eE+-]+)")


def phase_logs(log_dir: Path, phase: str) -> list[Path]:
    """The local log (``phase.log``) and every Slurm attempt's (``phase.<jobid>.log``), oldest first."""
    logs = [
        p
        for p in log_dir.glob(f"{phase}.*log")
        if p.name == f"{phase}.log" or p.name[len(phase) + 1 : -4].isdigit()
    ]
    return sorted(logs, key=lambda p: p.stat().st_mtime)


def losses(log_dir: Path, phase: str) -> dict[str, Any]:
    """The last validation and training loss a pretraining phase logged (None when not found)."""
    valid = train = None
    for log in phase_logs(log_dir, phase):
        text = log.read_text(errors="replace")
        for m in VALID_RE.finditer(text):
            valid = (int(m.group(1)), float(m.group(2)))
        for m in TRAIN_RE.finditer(text):
            train = (int(m.group(1)), float(m.group(2)))
    return {
        "valid_iter": valid[0] if valid else None,
        "valid_loss": valid[1] if valid else None,
        "train_iter": train[0] if train else None,
        "train_loss": train[1] if train else None,
    }


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def artifact_facts(phase: Phase) -> dict[str, Any]:
    """What an influence model or a selection says about itself (empty when it is not there)."""
    if phase.kind == "influence":
        m = _json(Path(phase.outputs["influence"]) / "metrics.json")
        best, abl = m.get("main", {}).get("best", {}), m.get("ablation", {}).get("best", {})
        if not best:
            return {}
        return {
            "val_spearman": best.get("spearman"), "val_spearman_no_relation": abl.get("spearman"),
            "alpha": best.get("alpha"), "tau": best.get("tau"),
            "trajectories": m.get("train_trajectories"), "val_trajectories": m.get("val_trajectories"),
        }  # fmt: skip
    if phase.kind == "select":
        c = _json(Path(phase.outputs["selection"]) / "manifest.json").get("config", {})
        if not c:
            return {}
        return {k: c.get(k) for k in ("method", "num_selected", "num_docs", "num_clusters", "ratio")}
    return {}


def build_report(out: Path, phases: list[Phase], state: RunState) -> dict[str, Any]:
    recs = state.phases()
    rows = []
    for p in phases:
        r = recs.get(p.name, {})
        rows.append({
            "phase": p.name, "status": r.get("status", "pending"), "seconds": r.get("seconds"),
            "cpu_seconds": r.get("cpu_seconds"),
            "attempts": r.get("attempts", 0), "outputs": p.outputs,
        })  # fmt: skip
    stages: dict[int, dict[str, Any]] = {}
    for p in phases:
        if p.kind == "pretrain":
            stages.setdefault(p.stage, {})[p.branch] = losses(out / "logs", p.name)
    facts = {p.name: f for p in phases if (f := artifact_facts(p))}
    return {
        "run": str(out), "phases": rows, "losses": {str(k): v for k, v in sorted(stages.items())},
        "artifacts": facts,
    }  # fmt: skip


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Group-MATES run {report['run']}",
        "",
        "phase                        status       seconds  CPU-seconds  attempts",
    ]
    total = cpu_total = 0.0
    for r in report["phases"]:
        sec, cpu = r["seconds"], r.get("cpu_seconds")
        total += sec or 0.0
        cpu_total += cpu or 0.0
        lines.append(
            f"{r['phase']:<28} {r['status']:<11} {'-' if sec is None else f'{sec:8.1f}':>8}  "
            f"{'-' if cpu is None else f'{cpu:11.1f}':>11}  {r['attempts']:>8}"
        )
    lines.append(f"{'total':<28} {'':<11} {total:8.1f}  {cpu_total:11.1f}")
    lines += ["", "validation loss at the end of each stage (Megatron's validation split of the pool; lower is better)",
              "stage  group-mates  random-twin   (train loss: group / random)"]  # fmt: skip
    for stage, v in report["losses"].items():
        g, r = v.get("main", {}), v.get("random", {})
        lines.append(
            f"{stage:>5}  {_fmt(g.get('valid_loss')):>11}  {_fmt(r.get('valid_loss')):>11}   "
            f"({_fmt(g.get('train_loss'))} / {_fmt(r.get('train_loss'))})"
        )
    if report.get("artifacts"):
        lines.append("")
    for name, f in report.get("artifacts", {}).items():
        if "val_spearman" in f:
            lines.append(
                f"{name}: validation Spearman {_fmt(f['val_spearman'])} (without the relation term "
                f"{_fmt(f['val_spearman_no_relation'])}), alpha {_fmt(f['alpha'])}, tau {_fmt(f['tau'])}, "
                f"{f['trajectories']} + {f['val_trajectories']} trajectories"
            )
        elif "num_selected" in f:
            lines.append(
                f"{name}: {f['method']} kept {f['num_selected']} of {f['num_docs']} documents "
                f"({f['num_clusters']} clusters, ratio {f['ratio']})"
            )
    lines += ["", "artifacts"]
    for r in report["phases"]:
        for name, path in r["outputs"].items():
            lines.append(f"  {r['phase']:<28} {name:<12} {path}")
    return "\n".join(lines) + "\n"


def write_report(out: Path, phases: list[Phase], state: RunState) -> str:
    rep = build_report(out, phases, state)
    text = render(rep)
    atomic_write_text(out / "report.json", json.dumps(rep, indent=2) + "\n")
    atomic_write_text(out / "report.txt", text)
    return text
