#!/usr/bin/env python
"""Preprocessing throughput: ours (tools/preprocess_data.py) beside Megatron-LM's tools/preprocess_data.py.

    .venv/bin/python benchmarks/preprocess.py --megatron-tool /scratch/Megatron-LM/tools/preprocess_data.py

Megatron-LM's tool is not part of this project: check out Megatron-LM somewhere outside the repository
and point ``--megatron-tool`` at its ``tools/preprocess_data.py`` (without it, only ours is timed).
Both run on the same uncompressed copy of the pool (Megatron's tool reads plain jsonl), with the same
tokenizer and flags, alternating ours/theirs for every worker count and repeat, because a shared
machine's load moves between runs. Every run's .bin/.idx must be byte-identical to the first one's.

Throughput is documents (tokens) over each tool's own processing time, which it prints: Megatron's
"Processed N documents (X docs/s)" line for the last document (--log-interval N), our summary line's
``seconds`` (which also holds writing the index, fingerprint and sidecar). Start-up (interpreter,
imports, tokenizer, workers) is the rest of the wall time. The report gives the median of each, the
ratios ours ÷ Megatron's per alternated pair and their median, and the total wall-time ratio. Writes ``results.json`` and ``report.md`` under ``--out``.

Our summary line also splits the work's CPU time by process: the parent (reading, handing out blocks,
writing) and each worker (JSON parsing and tokenizing). From those, robust to a busy machine's load:
the critical path (parent CPU + the busiest worker's CPU, as if nothing overlapped) and the projected
wall time on idle cores, ``max(critical path, all CPU / cores)``. ``--quick``: the first 20,000
documents, one repeat (a few minutes on idle cores).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", default=str(ROOT.parent / "shared/data/pool.jsonl.gz"), help="jsonl(.gz) pool")
    p.add_argument("--megatron-tool", default=None, help="Megatron-LM's tools/preprocess_data.py")
    p.add_argument(
        "--tokenizer-model", default=None, help="SentencePiece model (trained on the pool if absent)"
    )
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=None, help="alternated repeats (3; 1 with --quick)")
    p.add_argument("--max-docs", type=int, default=None, help="use the first N documents of the pool")
    p.add_argument("--scratch", default=None, help="work folder (a temporary one if absent)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/preprocess"))
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores for the projected wall time")
    p.add_argument("--quick", action="store_true", help="first 20,000 documents, one repeat")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile (for the report)")
    args = p.parse_args(argv)
    if args.quick:
        args.max_docs = args.max_docs or 20_000
        args.repeats = args.repeats or 1
    args.repeats = args.repeats or 3
    return args


def prepare(args, scratch: Path) -> tuple[Path, Path, int]:
    """Plain-jsonl pool and tokenizer; returns them and the document count."""
    pool = scratch / "pool.jsonl"
    opener = gzip.open if args.pool.endswith(".gz") else open
    n = 0
    with opener(args.pool, "rb") as src, open(pool, "wb") as dst:
        for line in src:
            if args.max_docs and n >= args.max_docs:
                break
            dst.write(line)
            n += 1
            if n == 1:
                (scratch / "one.jsonl").write_bytes(line)
    model = Path(args.tokenizer_model) if args.tokenizer_model else scratch / "tok.model"
    if not model.exists():
        subprocess.run(
            [sys.executable, str(ROOT / "tools/train_tokenizer.py"), "--input", str(pool)]
            + ["--model-prefix", str(scratch / "tok"), "--vocab-size", "8192", "--max-docs", "20000"],
            check=True,
        )
    return pool, model, n


def command(
    tool: str, which: str, inp: Path, prefix: Path, model: Path, workers: int, n_docs: int
) -> list[str]:
    cmd = [sys.executable, tool, "--input", str(inp), "--output-prefix", str(prefix)]
    cmd += ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(model)]
    cmd += ["--append-eod", "--workers", str(workers)]
    if which == "ours":
        cmd += ["--overwrite"]
    else:
        cmd += ["--log-interval", str(n_docs)]  # one progress line, at the last document
    return cmd


def cpu_split(summary: str) -> tuple[float, list[float]]:
    """(parent CPU s, each worker's CPU s) from our summary line; no workers when one ran in the parent."""
    fields = dict(x.split("=", 1) for x in summary.split() if "=" in x)
    workers = [float(x) for x in fields["worker_cpu"].split(",") if x]
    return float(fields["parent_cpu"]), workers


def timed(cmd: list[str], which: str, n_docs: int) -> tuple[float, float, float, tuple | None]:
    """(wall s, the tool's own processing s, CPU s of the tool and its workers, our CPU split or None)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if which == "megatron":
        env.pop("PYTHONPATH", None)  # Megatron's tool uses the installed megatron-core only
    else:
        env["PYTHONPATH"] = str(ROOT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode != 0:
        raise SystemExit(f"error: {which} failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    if which == "ours":
        summary = [x for x in r.stdout.splitlines() if x.startswith("summary:")][-1]
        work = float(summary.split(" seconds=")[1].split()[0])
        split = cpu_split(summary)
    else:
        split = None
        last = [x for x in r.stderr.splitlines() if x.startswith(f"Processed {n_docs} documents")][-1]
        work = n_docs / float(last.split("(")[1].split(" docs/s")[0])
    return wall, work, cpu, split


def digest(prefix: Path) -> str:
    h = hashlib.sha256()
    for ext in (".bin", ".idx"):
        h.update(Path(f"{prefix}_text_document{ext}").read_bytes())
    return h.hexdigest()[:16]


def count_tokens(prefix: Path) -> int:
    """Tokens written, from our sidecar (the .bin/.idx bytes are checked identical to Megatron's)."""
    return int(json.loads(Path(f"{prefix}_text_document.gm.json").read_text())["num_tokens"])


def run(args, scratch: Path) -> dict:
    pool, model, n_docs = prepare(args, scratch)
    tools = {"ours": str(ROOT / "tools/preprocess_data.py")}
    if args.megatron_tool:
        tools["megatron"] = os.path.abspath(args.megatron_tool)
    runs: list[dict] = []
    reference = None
    for rep in range(args.repeats):
        for workers in args.workers:
            order = list(tools) if rep % 2 == 0 else list(reversed(tools))
            for which in order:
                prefix = scratch / f"{which}_w{workers}"
                for p in scratch.glob(f"{prefix.name}_text_document.*"):
                    p.unlink()
                one = scratch / "one.jsonl"
                _, _, startup_cpu, _ = timed(
                    command(tools[which], which, one, scratch / f"one_{which}", model, workers, 1), which, 1
                )
                wall, work, cpu, split = timed(
                    command(tools[which], which, pool, prefix, model, workers, n_docs), which, n_docs
                )
                d = digest(prefix)
                reference = reference or d
                if d != reference:
                    raise SystemExit(
                        f"error: {which} with {workers} workers wrote different bytes ({d} != {reference})"
                    )
                runs.append(
                    dict(
                        tool=which,
                        workers=workers,
                        repeat=rep,
                        wall_s=wall,
                        work_s=work,
                        startup_s=wall - work,
                        cpu_s=cpu,
                        startup_cpu_s=startup_cpu,
                    )
                )
                if split:
                    runs[-1].update(parent_cpu_s=split[0], worker_cpu_s=split[1])
                print(
                    f"[{rep}] {which:8s} workers={workers} wall={wall:.2f}s work={work:.2f}s "
                    f"cpu={cpu:.2f}s startup_cpu={startup_cpu:.2f}s",
                    flush=True,
                )
    n_tokens = count_tokens(scratch / "ours_w1")
    return summarize(runs, n_docs, n_tokens, reference, list(tools), args.cores)


def projected(parent_cpu: float, worker_cpu: list[float], cores: int) -> tuple[float, float]:
    """(critical path s, projected wall s on ``cores`` idle cores) of one run's CPU split."""
    critical = parent_cpu + max(worker_cpu, default=0.0)
    return critical, max(critical, (parent_cpu + sum(worker_cpu)) / cores)


def summarize(runs, n_docs, n_tokens, digest_, tools, cores: int = 2) -> dict:
    table = []
    for w in sorted({r["workers"] for r in runs}):
        row = {"workers": w}
        for t in tools:
            mine = [r for r in runs if r["tool"] == t and r["workers"] == w]
            work = statistics.median(r["work_s"] for r in mine)
            for r in mine:  # CPU seconds of the work: the run's CPU minus the tool's median start-up CPU
                r["work_cpu_s"] = max(r["cpu_s"] - statistics.median(x["startup_cpu_s"] for x in mine), 1e-3)
            row[t] = dict(
                startup_s=round(statistics.median(r["startup_s"] for r in mine), 3),
                wall_s=round(statistics.median(r["wall_s"] for r in mine), 3),
                docs_per_s=round(n_docs / work, 1),
                tokens_per_s=round(n_tokens / work, 1),
                work_cpu_s=round(statistics.median(r["work_cpu_s"] for r in mine), 3),
                docs_per_cpu_s=round(n_docs / statistics.median(r["work_cpu_s"] for r in mine), 1),
            )
            if all("parent_cpu_s" in r for r in mine):
                crit, proj = zip(*(projected(r["parent_cpu_s"], r["worker_cpu_s"], cores) for r in mine))
                busiest = [max(r["worker_cpu_s"], default=0.0) for r in mine]
                row[t].update(
                    parent_cpu_s=round(statistics.median(r["parent_cpu_s"] for r in mine), 3),
                    busiest_worker_cpu_s=round(statistics.median(busiest), 3),
                    critical_path_s=round(statistics.median(crit), 3),
                    projected_wall_s=round(statistics.median(proj), 3),
                    projected_docs_per_s=round(n_docs / statistics.median(proj), 1),
                )
        if "megatron" in tools:
            pairs = [
                (a, b)
                for a in runs
                for b in runs
                if a["tool"] == "ours"
                and b["tool"] == "megatron"
                and a["workers"] == b["workers"] == w
                and a["repeat"] == b["repeat"]
            ]
            row["throughput_ratios"] = [round(b["work_s"] / a["work_s"], 3) for a, b in pairs]
            row["throughput_ratio_median"] = round(statistics.median(row["throughput_ratios"]), 3)
            row["cpu_ratios"] = [round(b["work_cpu_s"] / a["work_cpu_s"], 3) for a, b in pairs]
            row["cpu_ratio_median"] = round(statistics.median(row["cpu_ratios"]), 3)
            row["wall_ratio_median"] = round(
                statistics.median(b["wall_s"] / a["wall_s"] for a, b in pairs), 3
            )
        table.append(row)
    return dict(
        docs=n_docs,
        tokens=n_tokens,
        digest=digest_,
        identical_bytes=True,
        cores=cores,
        table=table,
        runs=runs,
    )


def report(res: dict, args) -> str:
    lines = [
        "# Preprocessing: ours vs Megatron-LM's tools/preprocess_data.py",
        "",
        f"Pool: `{args.pool}` ({res['docs']:,} documents, {res['tokens']:,} tokens, GPTSentencePieceTokenizer, "
        f"--append-eod); {args.repeats} alternated repeats; every run wrote the same bytes (sha256 {res['digest']}).",
        "docs/s and tokens/s are over each tool's own processing time (start-up split out: the rest of the "
        "wall time). CPU s is the work's CPU time (tool and workers, minus the tool's start-up CPU on a "
        "one-document input): on a shared, busy machine it moves far less with the load than wall time. "
        "Ratios are ours ÷ Megatron's per alternated pair, median shown.",
        "",
        f"Command: `{res.get('command', '')}` at `{res.get('commit', '')[:12]}`; load average (1, 5, 15 min) "
        f"{res.get('load_average', {}).get('before')} before, {res.get('load_average', {}).get('after')} after"
        + (f"; {res['note']}" if res.get("note") else "")
        + ".",
        "",
        "| workers | tool | start-up s | wall s | docs/s | tokens/s | work CPU s | docs per CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in res["table"]:
        for t in ("ours", "megatron"):
            if t in row:
                r = row[t]
                lines.append(
                    f"| {row['workers']} | {t} | {r['startup_s']:.2f} | {r['wall_s']:.2f} | "
                    f"{r['docs_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | {r['work_cpu_s']:.2f} | "
                    f"{r['docs_per_cpu_s']:,.0f} |"
                )
    if any("throughput_ratio_median" in row for row in res["table"]):
        lines += [
            "",
            "| workers | throughput ratio (median; all pairs) | CPU-time ratio (median; all pairs) | wall-time ratio |",
            "|---|---|---|---|",
        ]
        for row in res["table"]:
            ratios = ", ".join(f"{x:.2f}" for x in row["throughput_ratios"])
            cpu = ", ".join(f"{x:.2f}" for x in row["cpu_ratios"])
            lines.append(
                f"| {row['workers']} | {row['throughput_ratio_median']:.2f} ({ratios}) | "
                f"{row['cpu_ratio_median']:.2f} ({cpu}) | {row['wall_ratio_median']:.2f} |"
            )
    ours = [row for row in res["table"] if "critical_path_s" in row.get("ours", {})]
    if ours:
        lines += [
            "",
            "Ours by process (CPU s, medians): the parent reads, hands out blocks and writes; workers parse "
            "and tokenize. Critical path = parent + busiest worker; projected wall = max(critical path, "
            f"all CPU / {res.get('cores', 2)} cores).",
            "",
            "| workers | parent CPU s | busiest worker CPU s | critical path s | projected wall s | projected docs/s |",
            "|---|---|---|---|---|---|",
        ]
        for row in ours:
            r = row["ours"]
            lines.append(
                f"| {row['workers']} | {r['parent_cpu_s']:.2f} | {r['busiest_worker_cpu_s']:.2f} | "
                f"{r['critical_path_s']:.2f} | {r['projected_wall_s']:.2f} | {r['projected_docs_per_s']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if not Path(args.pool).is_file():
        print(f"error: {args.pool}: pool not found; pass --pool <jsonl or jsonl.gz>", file=sys.stderr)
        return 2
    if args.megatron_tool and not Path(args.megatron_tool).is_file():
        print(
            f"error: {args.megatron_tool}: not found; pass Megatron-LM's tools/preprocess_data.py",
            file=sys.stderr,
        )
        return 2
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="gm_pp_bench_"))
    scratch.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        res = run(args, scratch)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    res.update(command=" ".join(["benchmarks/preprocess.py", *(argv if argv is not None else sys.argv[1:])]),
               commit=commit.strip(), load_average={"before": load_before,
               "after": [round(x, 2) for x in os.getloadavg()]}, note=args.note)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(res, pool=args.pool), indent=1) + "\n")
    text = report(res, args)
    (out / "report.md").write_text(text)
    print(text)
    print(f"wrote {out / 'report.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
