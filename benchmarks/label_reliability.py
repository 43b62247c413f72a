#!/usr/bin/env python
"""Split-half reliability of oracle labels versus the number of reference examples (issue 13).

From the stage-0 checkpoint of a finished pipeline run (e.g. the quickstart's ``runs/quickstart/loop``),
probe K random trajectories of T steps exactly as ``tools/collect_oracle.py`` does, recording every
reference example's loss after every step (one collection). Then, for each size n, split the reference
examples at random into two disjoint halves of n, compute both halves' labels over the same
trajectories and correlate them (megatron_gm/oracle/reliability.py), over many splits. Writes
``results.json`` and ``report.md`` (the curve and the smallest n with reliability >= 0.9) to --out.

    .venv/bin/python benchmarks/label_reliability.py --run runs/quickstart/loop \\
        --out benchmarks/results/label_reliability

The collection runs under torchrun (one process), started by this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_gm.errors import GMError, cli_main  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a pipeline run folder (config.json, stage0/checkpoints)")
    p.add_argument("--out", required=True, help="folder for results.json and report.md")
    p.add_argument("--trajectories", type=int, default=32)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--ref-examples", type=int, default=192, help="reference examples probed (2 x largest n)")
    p.add_argument("--ref", default="", help="reference jsonl (default: the run's)")
    p.add_argument("--sizes", default="2,4,8,16,32,64,96")
    p.add_argument("--splits", type=int, default=50)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--rows", default="", help="reuse a rows.npz of an earlier collection (no probing)")
    return p


def oracle_argv(run: Path, args, out: Path) -> list[str]:
    """The run's stage-0 oracle command, resized: the same checkpoint, model, pool and reference flags."""
    from megatron_gm.pipeline.config import PipelineConfig
    from megatron_gm.pipeline.plan import build_plan

    try:
        cfg = PipelineConfig.from_dict(json.loads((run / "config.json").read_text()))
    except (OSError, ValueError) as e:
        raise GMError(f"{run}/config.json: unreadable ({e}); pass --run a pipeline run folder") from e
    if args.ref:
        cfg.oracle.ref_data = str(Path(args.ref).resolve())
    phase = next(p for p in build_plan(cfg, run, cfg.oracle.ref_data) if p.name == "stage0.oracle")
    if not (run / "stage0" / "checkpoints" / "latest_checkpointed_iteration.txt").is_file():
        raise GMError(f"{run}/stage0/checkpoints: no checkpoint; run the pipeline's stage 0 first")
    return [
        *phase.args,
        "--gm-oracle-trajectories", str(args.trajectories), "--gm-oracle-T", str(args.T),
        "--gm-oracle-ref-samples", str(args.ref_examples), "--gm-oracle-output", str(out / "unused_store"),
        "--gm-oracle-ref-data", cfg.oracle.ref_data,
    ]  # fmt: skip


def collect_rows(argv: list[str], rows_path: Path) -> None:
    """Inside torchrun: per-example reference losses [K, T+1, n, 2] of K probed trajectories."""
    import torch

    from megatron_gm.oracle import cli
    from megatron_gm.oracle.collect import step_seed

    p = cli.prepare(argv)
    source, ref = p.source, p.reference
    _, eng, _ = cli.build_engine(p)
    docs = source.documents(np.arange(source.num_trajectories))
    start = time.perf_counter()
    eng.restore()
    base = eng.reference_example_losses()
    rows = np.empty((len(docs), docs.shape[1] + 1, len(ref), 2))
    for k, traj in enumerate(docs):
        eng.restore()
        rows[k, 0] = base
        for t, doc in enumerate(traj):
            eng.train_step(int(doc), step_seed(source.seed, k, t))
            rows[k, t + 1] = eng.reference_example_losses()
    if torch.distributed.get_rank() == 0:
        meta = {"seconds": time.perf_counter() - start, "layout": ref.layout, "source": ref.source,
                "iteration": p.ckpt.iteration, "evaluated_tokens": ref.evaluated_tokens,
                "load_average": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
        np.savez(rows_path, rows=rows, meta=json.dumps(meta))


def report(rows: np.ndarray, meta: dict, args, out: Path) -> dict:
    from megatron_gm.oracle.reliability import smallest_reliable, split_half

    sizes = [int(x) for x in args.sizes.split(",") if int(x) <= rows.shape[2] // 2]
    points = [split_half(rows, n, args.splits, seed=n) for n in sizes]
    best = smallest_reliable(points, args.threshold)
    load = os.getloadavg()
    load_now = [round(x, 2) for x in load]
    result = {
        "trajectories": int(rows.shape[0]), "T": int(rows.shape[1] - 1), "reference_examples": int(rows.shape[2]),
        "splits": args.splits, "threshold": args.threshold, "smallest_reliable": best,
        "curve": [dataclasses.asdict(p) for p in points], "collection": meta,
        "load_average_at_report": [round(x, 2) for x in load],
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Oracle label reliability versus reference size",
        "",
        f"{rows.shape[0]} random trajectories x T={rows.shape[1] - 1} from the stage-0 checkpoint (iteration "
        f"{meta.get('iteration')}) of `{args.run}`; {rows.shape[2]} reference examples of "
        f"`{Path(meta.get('source', '')).name}` ({meta.get('layout')} layout). Split-half reliability = mean "
        f"correlation of the labels of two disjoint random halves of n examples each, over {args.splits} splits "
        "(the same trajectories, so only the reference sample differs).",
        "",
        "| n (examples per half) | Pearson r (mean ± std) | Spearman ρ |",
        "|---|---|---|",
        *[f"| {p.size} | {p.pearson:.3f} ± {p.pearson_std:.3f} | {p.spearman:.3f} |" for p in points],
        "",
        f"Smallest n with r >= {args.threshold}: **{best if best is not None else f'none up to {sizes[-1]}'}**.",
        "",
        f"Collection: {meta.get('seconds', 0):.0f} s on a shared, busy CPU (load average "
        + (f"{meta['load_average']} at its end" if "load_average" in meta else f"{load_now} at this report")
        + "); the time does not enter the curve.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return result


@cli_main
def main(argv: list[str] | None = None) -> int:
    worker = os.environ.get("GM_RELIABILITY_WORKER")  # our own argv, past torchrun's parser
    raw = json.loads(worker) if worker else (sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(raw)
    run, out = Path(args.run).resolve(), Path(args.out).resolve()
    rows_path = Path(args.rows) if args.rows else out / "rows.npz"
    if worker:
        collect_rows(oracle_argv(run, args, out), rows_path)
        return 0
    if not args.rows:
        out.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "1",
            __file__,
        ]
        env = {**os.environ, "GM_RELIABILITY_WORKER": json.dumps(raw), "PYTHONPATH": str(ROOT)}
        oracle_argv(run, args, out)  # fail here, with one line, before starting torchrun
        if subprocess.run(cmd, env=env).returncode != 0:
            raise GMError("label_reliability: the collection failed (see its output above)")
    data = np.load(rows_path)
    result = report(data["rows"], json.loads(str(data["meta"])), args, out)
    print(json.dumps({k: result[k] for k in ("smallest_reliable", "curve")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
