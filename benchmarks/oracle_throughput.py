#!/usr/bin/env python
"""Oracle throughput on CPU: a probe trajectory's parts against a pretraining step (issue 13, item 5).

Builds the tiny Megatron GPT the oracle tests use (pool, reference set, a stage-0 checkpoint from
``pretrain_gpt_gm.py``), then, in one torchrun process, times with the real Megatron engine a pretraining
step (the checkpoint's global batch, with the DP all-reduce: ``time_training_steps``), and in two modes,
"before" (``MegatronEngine.direct = False``: every micro-batch through Megatron's ``get_batch``) and
"after" (direct micro-batches, the default), a snapshot restore, one probe step (one sample: Adam +
clipping + scheduler), one reference pass, and whole trajectories through ``collect_shard`` (restore +
T x (probe step + reference pass)); the two modes' labels are compared.

Each time is the median of ``--reps`` repetitions, the modes interleaved in one process, so ratios share
the machine's load. Writes ``results.json`` and ``report.md`` to --out.

    .venv/bin/python benchmarks/oracle_throughput.py --out benchmarks/results/oracle_throughput
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_gm.errors import GMError, cli_main  # noqa: E402

VOCAB = 256
SPEC = {"type": "NullTokenizer", "model": None, "model_sha256": None, "vocab_size": VOCAB}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for results.json and report.md")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    p.add_argument("--reps", type=int, default=7, help="repetitions of every timing (medians)")
    p.add_argument("--T", type=int, default=4, help="steps per trajectory")
    p.add_argument("--trajectories", type=int, default=8, help="trajectories per repetition")
    p.add_argument("--ref-samples", type=int, default=16)
    p.add_argument("--ref-micro-batch-size", type=int, default=16)
    p.add_argument("--seq-length", type=int, default=32)
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--inner", default="", help=argparse.SUPPRESS)  # the measurement, under torchrun
    return p


# -- set-up: the oracle tests' tiny GPT ---------------------------------------------------------------


def _docs(n: int = 120) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.append(rng.integers(0, VOCAB - 1, rng.integers(5, 60)), VOCAB - 1) for _ in range(n)]


def _write_reference(path: Path, n_text: int) -> None:
    rng = np.random.default_rng(1)
    recs = [
        {"text": " ".join(map(str, rng.integers(0, VOCAB - 1, rng.integers(10, 60))))} for _ in range(n_text)
    ]
    recs += [{"context": "3 4 5 6 7", "target": "8 9"}, {"context": "10 11", "target": "12 13 14"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def model_flags(w: Path, a) -> list[str]:
    return [
        "--num-layers", str(a.num_layers), "--hidden-size", str(a.hidden_size), "--num-attention-heads", "2",
        "--ffn-hidden-size", str(2 * a.hidden_size), "--seq-length", str(a.seq_length),
        "--max-position-embeddings", str(a.seq_length), "--hidden-dropout", "0", "--attention-dropout", "0",
        "--seed", "1234", "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB),
        "--data-path", str(w / "pool"),
    ]  # fmt: skip


def torchrun(script: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", script]


def _run(cmd: list[str], w: Path, name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=w, env=env, capture_output=True, text=True, errors="replace")
    (w / f"{name}.log").write_text(f"{p.args}\n{p.stdout}\n{p.stderr}")
    if p.returncode != 0:
        raise GMError(f"{w / name}.log: {name} failed (rc {p.returncode}); read the log and fix the cause")
    return p


def prepare(w: Path, a) -> None:
    """Pool, reference jsonl and the stage-0 checkpoint (iteration 4 of 8, with optimizer state)."""
    from megatron_gm.data.indexed import write_indexed_dataset

    if (w / "ck" / "latest_checkpointed_iteration.txt").exists():
        return
    write_indexed_dataset(w / "pool", _docs(), tokenizer=SPEC, source="benchmark")
    _write_reference(w / "ref.jsonl", a.ref_samples)
    flags = [
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "8", "--gm-stage-iters", "4",
        "--lr", "3e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "1",
        "--weight-decay", "0.1", "--clip-grad", "0.5", "--split", "90,5,5", "--data-cache-path", str(w / "cache"),
        "--eval-iters", "0", "--eval-interval", "1000", "--log-interval", "1", "--num-workers", "0",
        "--save", str(w / "ck"), "--save-interval", "1000",
    ]  # fmt: skip
    _run(torchrun(str(ROOT / "pretrain_gpt_gm.py")) + model_flags(w, a) + flags, w, "pretrain")


def collect_flags(w: Path, a) -> list[str]:
    return model_flags(w, a) + [
        "--micro-batch-size", "1", "--load", str(w / "ck"), "--gm-oracle-ref-data", str(w / "ref.jsonl"),
        "--gm-oracle-ref-samples", str(a.ref_samples),
        "--gm-oracle-ref-micro-batch-size", str(a.ref_micro_batch_size),
        "--gm-oracle-trajectories", str(a.trajectories), "--gm-oracle-T", str(a.T),
        "--gm-oracle-output", str(w / "unused"),
    ]  # fmt: skip


# -- the measurement (one torchrun process) ------------------------------------------------------------


class Clock:
    """Wall and CPU seconds (this process, all threads) of each timed part; CPU time is what a loaded
    machine distorts least."""

    def __init__(self):
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def time(self, name: str, fn, per: int = 1):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        self.wall.setdefault(name, []).append((time.perf_counter() - wall) / per)
        self.cpu.setdefault(name, []).append((time.process_time() - cpu) / per)
        return out


MODES = {"before": False, "after": True}  # MegatronEngine.direct: Megatron's get_batch, or direct_batch
PARTS = ("restore", "probe_step", "reference_pass", "trajectory")


def measure(argv: list[str], reps: int) -> dict:
    import torch

    from megatron_gm.oracle import cli
    from megatron_gm.oracle.collect import collect_shard

    p = cli.prepare(argv)
    args, cfg, ckpt, source, ref = p.args, p.cfg, p.ckpt, p.source, p.reference
    s, eng, gbs = cli.build_engine(p)
    if not eng.direct:
        raise GMError("benchmarks/oracle_throughput.py: run it with one process (no TP/PP/CP)")
    ids = np.arange(source.num_trajectories)
    docs = source.documents(ids)
    mbs = ckpt.saved("micro_batch_size")
    eng.restore()
    base = eng.reference_loss()
    clock, losses = Clock(), {}
    pre_docs = docs.reshape(-1)[:gbs]
    for _ in range(reps):
        clock.time("pretrain_step", lambda: eng.time_training_steps(1, mbs, gbs // mbs, pre_docs), 2)
        for mode, direct in MODES.items():
            eng.direct = direct
            clock.time(f"restore_{mode}", eng.restore)
            clock.time(f"probe_step_{mode}", lambda: eng.train_step(int(docs[0, 0]), 7))
            clock.time(f"reference_pass_{mode}", eng.reference_loss)
            shard = clock.time(
                f"trajectory_{mode}", lambda: collect_shard(eng, ids, docs, base, cfg.seed), len(ids)
            )
            losses[mode] = shard[1]
    # per pretraining step: time_training_steps(1) runs a warm-up and a timed step, then a restore (~1 ms)
    med = {k: float(np.median(v)) for k, v in clock.cpu.items()}
    T = docs.shape[1]
    out = {"medians_cpu_s": med, "medians_wall_s": {k: float(np.median(v)) for k, v in clock.wall.items()},
           "samples_cpu_s": clock.cpu, "samples_wall_s": clock.wall}  # fmt: skip
    for mode in MODES:
        traj = med[f"trajectory_{mode}"]
        parts = {"restore": med[f"restore_{mode}"], "probe_steps": T * med[f"probe_step_{mode}"],
                 "reference_passes": T * med[f"reference_pass_{mode}"]}  # fmt: skip
        out[mode] = {
            "trajectories_per_s": 1 / traj,
            "share_of_trajectory": {k: v / traj for k, v in parts.items()} | {"other": 1 - sum(parts.values()) / traj},
            "probe_step_over_pretrain_step": med[f"probe_step_{mode}"] / med["pretrain_step"],
            "trajectory_over_pretrain_step": traj / med["pretrain_step"],
        }  # fmt: skip
    out["speedup_trajectories_per_s"] = med["trajectory_before"] / med["trajectory_after"]
    paired = np.asarray(clock.cpu["trajectory_before"]) / np.asarray(clock.cpu["trajectory_after"])
    out["paired_speedups"] = paired.tolist()  # repetition by repetition: the same moment's load
    out["median_paired_speedup"] = float(np.median(paired))
    labels = {m: np.diff(v, axis=1) for m, v in losses.items()}
    out["max_abs_label_difference"] = float(np.abs(labels["before"] - labels["after"]).max())
    out["setup"] = {
        "T": int(T), "trajectories_per_rep": len(ids), "reps": reps, "reference_samples": len(ref),
        "reference_evaluated_tokens": ref.evaluated_tokens, "ref_micro_batch_size": cfg.ref_micro_batch_size,
        "seq_length": args.seq_length, "parameters": int(sum(p.numel() for m in s.model for p in m.parameters())),
        "pretrain_global_batch": int(gbs), "pretrain_micro_batch": int(mbs), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    return out


# -- the report ----------------------------------------------------------------------------------------


def report(r: dict) -> str:
    m, w, st = r["medians_cpu_s"], r["medians_wall_s"], r["setup"]
    T, n = st["T"], st["reference_samples"]
    lines = [
        "# Oracle throughput on CPU (`benchmarks/oracle_throughput.py`)",
        "",
        f"Tiny Megatron GPT ({st['parameters']:,} parameters, sequence {st['seq_length']}), one process, "
        f"{st['torch_threads']} thread; T = {T}, {st['trajectories_per_rep']} trajectories and {n} reference "
        f"samples ({st['reference_evaluated_tokens']} evaluated tokens) per repetition. Medians of "
        f"{st['reps']} repetitions, before and after interleaved in one process, on cores shared with a "
        f"high-priority benchmark (1-minute load average {r.get('load_average_1min', float('nan')):.0f} on 2 "
        "cores at the end): absolute times are the loaded machine's, the ratios are the result.",
        "",
        "CPU time of the process (all threads): the shares, ratios and speed-up below are of CPU time; wall "
        "time, which the load inflates, is in parentheses.",
        "",
        f"pretraining step (global batch {st['pretrain_global_batch']}, micro-batch {st['pretrain_micro_batch']}, "
        f"a warm-up and a timed step, per step): {1e3 * m['pretrain_step']:.2f} ms a step "
        f"({1e3 * w['pretrain_step']:.2f})",
        "",
        "| part (median ms CPU (wall)) | before: Megatron get_batch | after: direct batches |",
        "|---|---|---|",
    ]
    names = {"restore": "snapshot restore", "probe_step": "probe step (one sample)",
             "reference_pass": f"reference pass ({n} samples)",
             "trajectory": f"trajectory (restore + {T} x (step + pass))"}  # fmt: skip
    for p in PARTS:
        b, a = p + "_before", p + "_after"
        lines.append(
            f"| {names[p]} | {1e3 * m[b]:.2f} ({1e3 * w[b]:.2f}) | {1e3 * m[a]:.2f} ({1e3 * w[a]:.2f}) |"
        )
    lines += ["", "| share of a trajectory | before | after |", "|---|---|---|"]
    for k in r["before"]["share_of_trajectory"]:
        b, a = r["before"]["share_of_trajectory"][k], r["after"]["share_of_trajectory"][k]
        lines.append(f"| {k} | {100 * b:.1f}% | {100 * a:.1f}% |")
    lines += ["", "| | before | after |", "|---|---|---|"]
    for k in ("trajectories_per_s", "probe_step_over_pretrain_step", "trajectory_over_pretrain_step"):
        lines.append(f"| {k} | {r['before'][k]:.2f} | {r['after'][k]:.2f} |")
    lines += [
        "",
        f"speed-up (trajectories/s, after / before): x{r['speedup_trajectories_per_s']:.2f} of the medians, "
        f"x{r['median_paired_speedup']:.2f} the median of the {st['reps']} repetitions' own ratios "
        f"({', '.join(f'{x:.2f}' for x in r['paired_speedups'])}); "
        f"max |label difference| {r['max_abs_label_difference']:.1e}",
    ]
    return "\n".join(lines) + "\n"


def run(a) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(a.work or tmp)
        w.mkdir(parents=True, exist_ok=True)
        prepare(w, a)
        result_file = w / "measure.json"
        cmd = torchrun(__file__) + ["--out", str(a.out), "--reps", str(a.reps), "--inner", str(result_file),
                                    "--", *collect_flags(w, a)]  # fmt: skip
        _run(cmd, w, "measure")
        r = json.loads(result_file.read_text())
    r["load_average_1min"] = os.getloadavg()[0]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "report.md").write_text(report(r))
    return r


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    a = parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if a.inner:
        r = measure(rest, a.reps)
        Path(a.inner).write_text(json.dumps(r))
        return 0
    print(report(run(a)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
