#!/usr/bin/env python
"""Calibrate the cost model's CPU rates on this machine and check its estimates against measured time.

Reads finished local pipeline runs (``tools/run_pipeline.py``, e.g. the quickstart's ``runs/quickstart/
loop``), or starts them with ``--launch``. From the first run (``--fit``) it measures, per phase, the
seconds of its compute and the rest (start-up, checkpoints, evaluation, bookkeeping):

- pretrain: Megatron's ``elapsed time per iteration`` from the first to the last logged iteration;
- oracle: the collection loop's seconds and the mean reference pass (``oracle summary``), so probe steps
  and reference passes get their own rates;
- influence: ``prepare_seconds`` (embedding the trajectories' documents) of the model's metrics.json;
- select: the tool's ``embed``/``score`` seconds.

The effective FLOP/s per thread of each part is the FLOPs the cost model assigns to it
(``estimate.phase_parts``) over its measured seconds x threads; a kind's start-up is the mean of wall -
compute over its phases. By default only the first round's phases are fitted (``--fit-only``); the later
phases of that run (a second round, cached pool embeddings, the random twin) and every ``--check`` run
are held out. Every run then gets a table of each
phase's estimate with these rates against its measured wall time. Writes results.json (the rates
``megatron_gm/pipeline/estimate.py`` reads) and report.md to --out, with the machine's load average.

    .venv/bin/python benchmarks/cost_calibration.py --fit runs/calib_a/loop --check runs/calib_b/loop \\
        --out benchmarks/results/cost_calibration
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_gm.errors import GMError, cli_main  # noqa: E402
from megatron_gm.pipeline import estimate as est  # noqa: E402
from megatron_gm.pipeline.config import PipelineConfig  # noqa: E402
from megatron_gm.pipeline.plan import Phase, build_plan  # noqa: E402

TOLERANCE = 0.35
ITER = re.compile(
    r"\[([\d-]+ [\d:.]+)\] iteration\s+(\d+)/\s*\d+ .*?elapsed time per iteration \(ms\): ([\d.]+)"
)


def load_run(run: Path) -> tuple[PipelineConfig, list[Phase], dict, est.PoolStats]:
    try:
        cfg = PipelineConfig.from_dict(json.loads((run / "config.json").read_text()))
        state = json.loads((run / "state.json").read_text())["phases"]
    except (OSError, ValueError, KeyError) as e:
        raise GMError(f"{run}: not a finished pipeline run ({e}); pass --fit/--check a run folder") from e
    phases = [
        p for p in build_plan(cfg, run, cfg.oracle.ref_data) if state.get(p.name, {}).get("status") == "done"
    ]
    if not phases:
        raise GMError(f"{run}/state.json: no finished phase; run the pipeline first")
    return cfg, phases, state, est.pool_stats(cfg)


def _log(run: Path, phase: Phase) -> str:
    path = run / "logs" / f"{phase.name}.log"
    return path.read_text(errors="replace") if path.is_file() else ""


def compute_seconds(run: Path, phase: Phase, parts: est.Parts) -> dict[str, float] | None:
    """Measured seconds of each rate part of a phase (None: its log lacks them)."""
    text = _log(run, phase)
    if phase.kind == "pretrain":
        its = [(int(n), float(ms) / 1e3) for _, n, ms in ITER.findall(text)]
        if len(its) < 2:
            return None
        seconds, prev = its[0][1], its[0][0]  # iteration 1, then each interval at its mean
        for n, s in its[1:]:
            seconds += (n - prev) * s
            prev = n
        return {"pretrain": seconds}
    if phase.kind == "oracle":
        found = re.findall(r"oracle summary: (\{.*\})", text)
        if not found:
            return None
        summary = json.loads(found[-1])
        passes = summary["trajectories"] * summary["T"] + 1
        ref = passes * float(summary["reference_loss_s"])
        return {"probe": float(summary["seconds"]) - ref, "ref": ref}
    if phase.kind == "influence":
        try:
            metrics = json.loads((Path(phase.outputs["influence"]) / "metrics.json").read_text())
        except (OSError, ValueError):
            return None
        return {next(iter(parts.flops)): float(metrics["prepare_seconds"])}
    if phase.kind == "select" and parts.flops:
        found = re.findall(r"seconds: (.*?); CPU-seconds", text)
        if not found:
            return None
        words = found[-1].split()
        secs = {words[i]: float(words[i + 1]) for i in range(0, len(words) - 1, 2)}
        return {"select": sum(v for k, v in secs.items() if k in ("score", "cluster", "assign", "select"))}
    return None


def fit(runs: list[Path], only: str = "") -> tuple[dict, dict, list[dict]]:
    """Rates (FLOP/s per thread) and start-up seconds per kind, from the measured phases of ``runs``
    whose names match ``only`` (a regular expression; "" = all)."""
    flops: dict[str, float] = {}
    thread_s: dict[str, float] = {}
    rest: dict[str, list[float]] = {}
    rows = []
    for run in runs:
        cfg, phases, state, pool = load_run(run)
        for p in phases:
            if only and not re.search(only, p.name):
                continue
            parts = est.phase_parts(cfg, p, pool)
            wall = float(state[p.name]["seconds"])
            measured = compute_seconds(run, p, parts) if parts.flops else {}
            if measured is None:
                continue
            threads = est.phase_devices(p, est.CPU_TYPED)
            for k, s in measured.items():
                flops[k] = flops.get(k, 0.0) + parts.flops[k]
                thread_s[k] = thread_s.get(k, 0.0) + s * threads
            rest.setdefault(est.startup_key(p), []).append(wall - sum(measured.values()))
            rows.append({"run": rel(run), "phase": p.name, "wall_s": wall, "compute_s": measured})
    rates = {k: flops[k] / thread_s[k] for k in flops if thread_s[k] > 0}
    startup = {k: max(0.0, sum(v) / len(v)) for k, v in rest.items()}
    return rates, startup, rows


def table(run: Path, hw: est.Hardware, fitted: set[str]) -> list[dict]:
    cfg, phases, state, pool = load_run(run)
    out = []
    for p in phases:
        e = est.estimate_phase(cfg, p, pool, hw)
        wall = float(state[p.name]["seconds"])
        cpu = state[p.name].get("cpu_seconds")  # user + system of the phase's processes
        share = None if not cpu else round(cpu / (wall * est.phase_devices(p, est.CPU_TYPED)), 3)
        out.append({"phase": p.name, "fitted": p.name in fitted, "estimate_s": round(e.seconds, 1),
                    "measured_s": round(wall, 1), "ratio": round(e.seconds / wall, 3),
                    "within": abs(e.seconds / wall - 1) <= TOLERANCE, "flops": e.flops,
                    "cpu_share": share})  # fmt: skip
    return out


def launch(out: Path, extra: list[str]) -> Path:
    """A quickstart-sized run into ``out`` (examples/quickstart.sh; extra args go to run_pipeline.py)."""
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT)}
    if subprocess.run(["bash", str(ROOT / "examples" / "quickstart.sh"), *extra], env=env).returncode:
        raise GMError(f"{out}: the quickstart run failed; see {out}/loop/logs")
    return out / "loop"


def rel(path: Path) -> str:
    """A run folder as written in the results: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Cost model calibration on this machine",
        "",
        f"Machine: {result['cpu']}; load average {result['load_average']} (1, 5, 15 min) at the end, "
        f"{result['load_note']}",
        "",
        f"Rates fitted on the phases of `{result['fit']}` matching `{result['fit_only']}` (effective FLOP/s "
        "per thread under the cost model's FLOP count; they include whatever the phase does besides "
        "arithmetic); every other phase is held out:",
        "",
        "| part | FLOP/s per thread |",
        "|---|---|",
        *[f"| {k} | {v:.3g} |" for k, v in sorted(result["rates"].items())],
        "",
        "| kind | start-up and other fixed seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in sorted(result["startup_s"].items())],
        "",
    ]
    for run, rows in result["tables"].items():
        held = [r for r in rows if not r["fitted"]]
        lines += [
            f"## `{run}`: {sum(r['within'] for r in rows)} of {len(rows)} phases within ±{TOLERANCE:.0%}, "
            f"{sum(r['within'] for r in held)} of {len(held)} held-out phases",
            "",
            "| phase | rates fitted on it | estimate (s) | measured (s) | estimate / measured | CPU share |",
            "|---|---|---|---|---|---|",
        ]
        lines += [f"| {r['phase']} | {'yes' if r['fitted'] else 'no'} | {r['estimate_s']} | {r['measured_s']} | "
                  f"{r['ratio']:.2f}{'' if r['within'] else ' (outside)'} | "
                  f"{'-' if r['cpu_share'] is None else format(r['cpu_share'], '.2f')} |" for r in rows]  # fmt: skip
        lines += ["", "CPU share: the phase's CPU-seconds over wall x its threads; below 1 the phase waited "
                  "for the CPU (other jobs on the machine) or for I/O.", ""]  # fmt: skip
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))


def main_args() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fit", required=True, help="run folder whose phases give the rates")
    p.add_argument("--check", nargs="*", default=[], help="more run folders to check (not fitted)")
    p.add_argument(
        "--fit-only",
        default=r"^stage0\.|^(random\.)?stage1\.select$",
        help="fit on the phases whose names match this regular expression (default: the first round's); "
        "the others are held out",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cost_calibration"))
    p.add_argument("--launch", action="store_true", help="run the quickstart into --fit's parent first")
    p.add_argument("--launch-set", nargs="*", default=[], help="run_pipeline.py args for the launched run")
    p.add_argument("--load-note", default="", help="what else ran on the machine meanwhile")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = main_args().parse_args(argv)
    run = Path(args.fit).resolve()
    if args.launch:
        run = launch(run.parent, args.launch_set)
    rates, startup, measured = fit([run], args.fit_only)
    fitted = {m["phase"] for m in measured}
    if not rates:
        raise GMError(f"{run}: no phase with measured compute seconds in its logs")
    hw = est.Hardware("CPU (calibrated)", {**est.CPU_TYPED.rates, **rates}, 1e30,
                      {**est.CPU_TYPED.startup_s, **startup}, per_thread=True)  # fmt: skip
    runs = [run] + [Path(c).resolve() for c in args.check]
    result = {
        "cpu": f"{os.cpu_count()} CPU cores",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "load_note": args.load_note or "measured on a machine shared with other jobs",
        "fit": rel(run),
        "rates": rates,
        "startup_s": startup,
        "mem_bw": 1e30,  # on CPU the optimizer's memory traffic is inside the measured probe rate
        "measured": measured,
        "fit_only": args.fit_only,
        "tables": {rel(r): table(r, hw, fitted if r == run else set()) for r in runs},
    }
    write(Path(args.out), result)
    for r, rows in result["tables"].items():
        print(f"{r}: {sum(x['within'] for x in rows)} of {len(rows)} phases within ±{TOLERANCE:.0%}")
    print(f"wrote {args.out}/results.json and report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
