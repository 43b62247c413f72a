"""A three-phase chain of tests/pipeline_toy_tool.py, run through the real executors and sbatch scripts.

    a (torchrun, ``nodes`` nodes) -> b (MPI, 2 ranks, complete marker) -> c (torchrun) -> d (one process)

Each phase hashes its input and its steps; ``d/result.txt`` is the chain's result.
"""

from __future__ import annotations

from pathlib import Path

from megatron_gm.pipeline.plan import Phase

TOOL = str(Path(__file__).with_name("pipeline_toy_tool.py"))
PHASES = "abcd"


def toy_plan(out: Path, *, steps: int = 3, sleep: float = 0.0, nodes: int = 1, fail: str = "") -> list[Phase]:
    out = Path(out).resolve()

    def phase(name, kind, launcher, script, nodes, per_node, args, deps, marker=""):
        return Phase(
            name=name, kind=kind, stage=0, branch="main", tool=TOOL,
            args=[*args, *(["--fail"] if name == fail else [])], deps=deps, launcher=launcher,
            nodes=nodes, procs_per_node=per_node, threads=1, time_limit="00:10:00", script=script,
            outputs={"out": str(out / name)}, complete_marker=marker,
        )  # fmt: skip

    sl = "slurm/"
    return [
        phase("a", "pretrain", "torchrun", sl + "pretrain_stage.sbatch", nodes, 1,
              ["--out", str(out / "a"), "--steps", str(steps), "--sleep", str(sleep)], []),
        phase("b", "select", "mpi", sl + "select_data.sbatch", 1, 2,
              ["--mpi", "--out", str(out / "b"), "--steps", str(steps), "--sleep", str(sleep),
               "--input", str(out / "a" / "result.txt")], ["a"], marker=str(out / "b" / "manifest.json")),
        phase("c", "oracle", "torchrun", sl + "collect_oracle.sbatch", 1, 1,
              ["--out", str(out / "c"), "--steps", str(steps), "--sleep", str(sleep),
               "--input", str(out / "b" / "result.txt")], ["b"]),
        phase("d", "bootstrap", "single", sl + "bootstrap.sbatch", 1, 1,
              ["--out", str(out / "d"), "--steps", str(steps), "--input", str(out / "c" / "result.txt")], ["c"],
              marker=str(out / "d" / "manifest.json")),
    ]  # fmt: skip


def expected_result(steps: int) -> str:
    """What an uninterrupted chain writes: the same hash chain the tool computes."""
    import hashlib

    data = b"start"
    for _ in PHASES:
        h = hashlib.sha256(data).hexdigest()
        for i in range(steps):
            h = hashlib.sha256(f"{h}:{i}".encode()).hexdigest()
        data = (h + "\n").encode()
    return data.decode()


def result(out: Path) -> str:
    return (Path(out) / "d" / "result.txt").read_text()


def work_counts(out: Path) -> dict[str, list[int]]:
    """Which steps each phase computed (a step redone after an interruption shows up twice)."""
    counts = {}
    for name in PHASES:
        log = Path(out) / name / "work.log"
        counts[name] = [int(x) for x in log.read_text().split()] if log.exists() else []
    return counts


def run_local(out: Path, **kw) -> None:
    """Run the toy chain with the local executor (what ``python tests/pipeline_toy.py OUT`` does)."""
    from megatron_gm.pipeline.local import LocalExecutor
    from megatron_gm.pipeline.state import RunState

    out = Path(out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[1]
    LocalExecutor(toy_plan(out, **kw), RunState(out / "state.json"), out / "logs", root=root).run()


if __name__ == "__main__":
    import sys

    from megatron_gm.pipeline.local import Interrupted

    try:
        run_local(Path(sys.argv[1]), steps=int(sys.argv[2]), sleep=float(sys.argv[3]))
    except Interrupted as e:
        print(f"interrupted: {e}", flush=True)
        sys.exit(130)
