"""benchmarks/preprocess.py: our summary line's CPU split and the projected wall time it gives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_preprocess", ROOT / "benchmarks/preprocess.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_split_is_read_from_the_summary_line():
    bench = _bench()
    line = (
        "summary: docs=10 tokens=99 skipped=0 (none) startup=1.0s seconds=2.00 docs/s=5 tokens/s=50 "
        "workers=2 tokenizer_path=words parent_cpu=0.21 worker_cpu=2.37,2.38"
    )
    assert bench.cpu_split(line) == (0.21, [2.37, 2.38])
    one = line.replace("workers=2", "workers=1").replace("worker_cpu=2.37,2.38", "worker_cpu=")
    assert bench.cpu_split(one) == (0.21, [])


def test_projected_wall_is_the_longer_of_critical_path_and_cpu_per_core():
    bench = _bench()
    # 1 worker: critical path 0.5 + 4 = 4.5; all CPU 4.5 / 2 cores = 2.25 -> 4.5
    assert bench.projected(0.5, [4.0], 2) == (4.5, 4.5)
    # 2 balanced workers: critical 0.5 + 2 = 2.5; all CPU 4.5 / 2 = 2.25 -> 2.5
    assert bench.projected(0.5, [2.0, 2.0], 2) == (2.5, 2.5)
    # 3 workers on 2 cores: critical 1 + 2 = 3; all CPU 7 / 2 = 3.5 -> 3.5
    assert bench.projected(1.0, [2.0, 2.0, 2.0], 2) == (3.0, 3.5)
    # everything in the parent (no workers): critical path and wall are its CPU
    assert bench.projected(3.0, [], 2) == (3.0, 3.0)
