"""install() with the CPU shim off (what runs with CUDA): Megatron's initialization must not fail.

megatron-core's wheel ships the compiled dataset helpers but no Makefile, so Megatron's own
``_compile_dependencies`` (``make -C megatron/core/datasets``) exits 1 on every GPU run. install()
skips that ``make`` when the compiled module imports, and keeps the barrier.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.megatron, pytest.mark.slow, pytest.mark.timeout(120)]

CHECK = """
import sys
import torch
import megatron.core.datasets.utils as dutils
from megatron.training import global_vars, initialize

global_vars.set_args(object())  # Megatron's own version reads the args first
calls = []
dutils.compile_helpers = lambda: calls.append("make")
torch.distributed.barrier = lambda *a, **k: calls.append("barrier")
if sys.argv[1] == "no-helpers":
    sys.modules["megatron.core.datasets.helpers_cpp"] = None  # its import fails: compile as Megatron does
import megatron_gm
from megatron_gm.megatron import cpu_shim

megatron_gm.install(cpu_shim=False)
assert not cpu_shim.is_active()
initialize._compile_dependencies()
print("CALLS", ",".join(calls))
"""


def _run(mode: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # rank 0 is the one that compiles; get_rank reads the process group, so fake it like Megatron sees it
    code = "import torch.distributed as d\nd.get_rank = lambda *a, **k: 0\n" + CHECK
    p = subprocess.run(
        [sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, cwd=ROOT, timeout=110
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return next(line for line in p.stdout.splitlines() if line.startswith("CALLS"))


def test_shipped_helpers_skip_megatrons_make_and_keep_the_barrier():
    assert _run("helpers") == "CALLS barrier"


def test_without_compiled_helpers_megatron_compiles_them():
    assert _run("no-helpers") == "CALLS make,barrier"
