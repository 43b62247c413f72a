"""install() on a machine without a GPU: it adds the CPU flags, or stops in one line on GPU-only flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.megatron, pytest.mark.slow, pytest.mark.timeout(300)]

# one interpreter (importing torch and Megatron is the slow part): install() with a CPU-ready command
# line, then the flag check again on command lines that ask for a GPU
CODE = """
import contextlib, io, json, sys
import megatron_gm
from megatron_gm.megatron import cpu_shim

megatron_gm.install()
out = {"argv": sys.argv[1:], "refused": []}
for argv in (["x", "--transformer-impl", "transformer_engine"], ["x", "--distributed-backend=nccl"]):
    sys.argv = argv
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            megatron_gm._add_cpu_flags(cpu_shim)
            code = 0
        except SystemExit as e:
            code = e.code
    out["refused"].append([code, err.getvalue()])
print("RESULT", json.dumps(out))
"""


def test_cpu_flags_added_unless_given_and_gpu_only_flags_refused():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    argv = ["--num-layers", "2", "--transformer-impl=local", "--no-rope-fusion"]
    p = subprocess.run(
        [sys.executable, "-c", CODE, *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=280
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "megatron-gm: no CUDA, CPU shim on; added --distributed-backend gloo" in p.stdout
    res = json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT"))[len("RESULT ") :])
    assert res["argv"] == [
        "--num-layers", "2", "--transformer-impl=local", "--no-rope-fusion",
        "--distributed-backend", "gloo", "--use-cpu-initialization", "--no-persist-layer-norm",
        "--no-gradient-accumulation-fusion", "--no-masked-softmax-fusion", "--no-bias-gelu-fusion",
        "--no-bias-dropout-fusion",
    ]  # fmt: skip
    for (code, err), flag in zip(
        res["refused"], ("--transformer-impl transformer_engine", "--distributed-backend nccl")
    ):
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: {flag}: needs a GPU") and "--transformer-impl local" in err
