"""The end-of-run report: wall time per phase, losses per stage (Group-MATES vs the random twin), paths.

What selection aims at is the reference set, so the report puts, per stage and branch, the loss on the
reference set and on the LAMBADA evaluation half (``tools/evaluate.py`` on each stage's checkpoint,
``evaluate_run``; results under ``RUN/eval/``) beside the loss on Megatron's validation split of the pool,
and draws the three across stages in ``RUN/report.png``.

    python -m megatron_gm.pipeline.report --run runs/quickstart/loop \
        --ref ../shared/data/ref_wikitext103_valid.jsonl.gz --prompts ../shared/data/lambada_eval.jsonl.gz
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from megatron_gm.dist import add_log_level_arg, get_logger, tool_logging
from megatron_gm.errors import GMError, cli_main
from megatron_gm.fs import atomic_write_text
from megatron_gm.pipeline.plan import Phase
from megatron_gm.pipeline.state import RunState

log = get_logger(__name__)

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
    evals = {
        str(p.stage): {}
        for p in phases
        if p.kind == "pretrain" and (out / "eval" / f"{p.name}.json").exists()
    }
    for p in phases:
        if p.kind == "pretrain" and (e := eval_facts(out / "eval" / f"{p.name}.json")):
            evals[str(p.stage)][p.branch] = e
    return {
        "run": str(out), "phases": rows, "losses": {str(k): v for k, v in sorted(stages.items())},
        "eval": dict(sorted(evals.items(), key=lambda kv: int(kv[0]))), "artifacts": facts,
    }  # fmt: skip


def eval_facts(path: Path) -> dict[str, Any]:
    """Reference loss and LAMBADA loss/accuracy of the latest iteration in a tools/evaluate.py output."""
    rows = _json(path).get("results") or []
    if not rows:
        return {}
    last = rows[-1]
    ref, prompts = last.get("reference", {}), last.get("prompts", {})
    return {
        "iteration": last.get("iteration"), "ref_loss": ref.get("loss"),
        "lambada_loss": prompts.get("loss"), "lambada_accuracy": prompts.get("accuracy"),
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
    if report.get("eval"):
        lines += [
            "",
            "what selection aims at (tools/evaluate.py on each stage's checkpoint; lower loss is better)",
            "stage  reference loss (group / random)   LAMBADA eval loss (group / random)   LAMBADA acc (group / random)",
        ]
        for stage, v in report["eval"].items():
            g, r = v.get("main", {}), v.get("random", {})
            cells = [
                f"{_fmt(g.get(k))} / {_fmt(r.get(k))}"
                for k in ("ref_loss", "lambada_loss", "lambada_accuracy")
            ]
            lines.append(f"{stage:>5}  {cells[0]:<31}   {cells[1]:<34}   {cells[2]}".rstrip())
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
    if plot(rep, out / "report.png"):
        text += f"\ncurves across stages: {out / 'report.png'}\n"
    atomic_write_text(out / "report.txt", text)
    return text


def curves(report: dict[str, Any]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """metric -> branch -> [(stage, value)]; stage 0 (shared) starts both branches' curves."""
    metrics = {"reference loss": ("eval", "ref_loss"), "LAMBADA eval loss": ("eval", "lambada_loss"),
               "pool validation loss": ("losses", "valid_loss")}  # fmt: skip
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for title, (section, key) in metrics.items():
        lines: dict[str, list[tuple[int, float]]] = {"main": [], "random": []}
        for stage, v in report.get(section, {}).items():
            for branch in ("main", "random"):
                src = v.get(branch) or (v.get("main") if int(stage) == 0 else None)
                if src and src.get(key) is not None:
                    lines[branch].append((int(stage), float(src[key])))
        if any(len(x) > 0 for x in lines.values()):
            out[title] = lines
    return out


def plot(report: dict[str, Any], path: Path) -> bool:
    """Draw the curves (group vs random twin) as a PNG; False when there is nothing to draw."""
    data = curves(report)
    if not data:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data), 3.4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], data.items()):
        for branch, label, style in (("main", "Group-MATES", "o-"), ("random", "random twin", "s--")):
            if lines[branch]:
                xs, ys = zip(*sorted(lines[branch]))
                ax.plot(xs, ys, style, label=label)
        ax.set_title(title)
        ax.set_xlabel("stage")
        ax.set_ylabel("loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(Path(report["run"]).name + ": lower is better")
    fig.tight_layout()
    tmp = path.with_name(f".tmp{os.getpid()}_{path.name}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


# --- evaluating each stage's checkpoint --------------------------------------------------------------


def evaluate_run(out: Path, ref: str, prompts: str | None, *, ref_samples: int = 128, prompts_max: int = 500,
                 python: str = sys.executable, root: Path | None = None) -> list[Path]:  # fmt: skip
    """Run tools/evaluate.py on every finished stage checkpoint of ``out`` (report.json names them).

    Results go to ``out/eval/<phase>.json``; one already there is kept (delete it to redo)."""
    root = root or Path(__file__).resolve().parents[2]
    rep = _json(out / "report.json")
    if not rep:
        raise GMError(f"{out}/report.json: not found; run tools/run_pipeline.py --out {out} first")
    for f in (ref, prompts):
        if f and not Path(f).is_file():
            raise GMError(f"{f}: not found; pass --ref/--prompts (the bundled files are in ../shared/data)")
    written = []
    for row in rep["phases"]:
        ckpt = row["outputs"].get("checkpoints")
        if (
            not ckpt
            or row["status"] != "done"
            or not (Path(ckpt) / "latest_checkpointed_iteration.txt").exists()
        ):
            continue
        dest = out / "eval" / f"{row['phase']}.json"
        if not dest.exists():
            cmd = [python, str(root / "tools/evaluate.py"), "--load", ckpt, "--gm-eval-ref", ref,
                   "--gm-eval-ref-samples", str(ref_samples), "--gm-eval-output", str(dest)]  # fmt: skip
            if prompts:
                cmd += ["--gm-eval-prompts", prompts, "--gm-eval-prompts-max", str(prompts_max)]
            dest.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PYTHONPATH": str(root)}
            log.info(f"[report] evaluating {row['phase']} ({ckpt})")
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            (out / "eval" / f"{row['phase']}.log").write_text(r.stdout + r.stderr)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["no output"])[-1]
                raise GMError(
                    f"{row['phase']}: tools/evaluate.py failed ({last}); see {dest.with_suffix('.log')}"
                )
        written.append(dest)
    return written


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the run folder (tools/run_pipeline.py --out)")
    p.add_argument("--ref", required=True, help="reference set jsonl(.gz) (what selection aims at)")
    p.add_argument("--prompts", default=None, help="LAMBADA evaluation half (context/target jsonl)")
    p.add_argument("--ref-samples", type=int, default=128)
    p.add_argument("--prompts-max", type=int, default=500)
    add_log_level_arg(p)
    a = p.parse_args(argv)
    with tool_logging(a.log_level):
        out = Path(a.run).resolve()
        evaluate_run(out, a.ref, a.prompts, ref_samples=a.ref_samples, prompts_max=a.prompts_max)
        from megatron_gm.pipeline.config import PipelineConfig
        from megatron_gm.pipeline.plan import build_plan

        cfg = PipelineConfig.from_dict(json.loads((out / "config.json").read_text()))
        phases = build_plan(cfg, out, cfg.oracle.ref_data)
        text = write_report(out, phases, RunState(out / "state.json"))
        print(text, end="")
        print(f"[report] {out / 'report.txt'} (and report.json, report.png)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
