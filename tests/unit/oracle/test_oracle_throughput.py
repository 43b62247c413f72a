"""The oracle's direct micro-batches (MegatronEngine.direct) give the labels of Megatron's get_batch path.

On the real Megatron engine (torchrun, gloo, CPU) from a stage-0 checkpoint of pretrain_gpt_gm.py, with
two data-parallel groups: every rank probes its own trajectories one at a time through Megatron's
``get_batch`` (the path before), then through ``collect_shard`` with direct batches; the labels, the
reference losses and the per-example reference losses must be equal bit for bit. With TP=2 the direct
path must switch itself off.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.megatron, pytest.mark.slow, pytest.mark.timeout(600)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

SCRIPT = r"""
import json, sys
import numpy as np
import torch
from megatron.core import mpu
from megatron_gm.megatron import runtime
from megatron_gm.oracle import cli
from megatron_gm.oracle.collect import collect_shard, probe_trajectory
from megatron_gm.oracle.megatron_engine import MegatronEngine
from megatron_gm.megatron.samples import SampleFormat

p = cli.prepare(sys.argv[2:])
args, cfg, ckpt, dataset, source, ref, tok = (
    p.args, p.cfg, p.ckpt, p.dataset, p.source, p.reference, p.tokenizer
)
args.use_checkpoint_opt_param_scheduler = True
runtime.initialize()
s = runtime.build(args)
eng = MegatronEngine(s, dataset, SampleFormat.from_args(args, tok.eod), ref, ref_micro_batch_size=3,
                     scheduler_increment=ckpt.saved("global_batch_size"))
dp, n = mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size()
ids = np.arange(source.num_trajectories)[dp::n]
docs = source.documents(ids)
auto = eng.direct
eng.direct = False  # before: Megatron's get_batch, one trajectory at a time
base = eng.reference_loss()
rows_before = eng.reference_example_losses()
before = np.stack([probe_trajectory(eng, d, base, cfg.seed, int(k))[1] for d, k in zip(docs, ids)])
eng.direct = auto
eng.restore()
base_after = eng.reference_loss()
rows_after = eng.reference_example_losses()
labels, after = collect_shard(eng, ids, docs, base_after, cfg.seed)
np.savez(f"{sys.argv[1]}_{torch.distributed.get_rank()}.npz", ids=ids, before=before, after=after,
         labels=labels, rows_before=rows_before, rows_after=rows_after, auto=auto, dp=n)
"""


def _bench():
    spec = importlib.util.spec_from_file_location(
        "oracle_throughput", ROOT / "benchmarks" / "oracle_throughput.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Pool, reference jsonl (text and prompt/target records), a stage-0 checkpoint; the probe script."""
    bench = _bench()
    w = tmp_path_factory.mktemp("throughput")
    a = bench.parser().parse_args(["--out", str(w), "--trajectories", "4", "--T", "3", "--ref-samples", "6"])
    bench.prepare(w, a)
    (w / "probe.py").write_text(SCRIPT)
    return w, bench.collect_flags(w, a)


def _probe(w: Path, flags: list[str], name: str, *extra: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(w / "probe.py"), str(w / name), *flags, *extra]  # fmt: skip
    p = subprocess.run(cmd, cwd=w, env=ENV, capture_output=True, text=True, errors="replace", timeout=580)
    assert p.returncode == 0, p.stderr[-6000:]
    return [dict(np.load(f)) for f in sorted(w.glob(f"{name}_*.npz"))]


def test_direct_batches_give_megatrons_labels_with_two_data_parallel_groups(work):
    w, flags = work
    ranks = _probe(w, flags, "dp2")
    assert len(ranks) == 2 and all(int(r["dp"]) == 2 and bool(r["auto"]) for r in ranks)
    assert ranks[0]["ids"].tolist() == [0, 2] and ranks[1]["ids"].tolist() == [1, 3]
    for r in ranks:
        assert r["before"].shape == (2, 4)  # T = 3 steps: 4 reference losses
        assert np.array_equal(r["after"], r["before"])
        assert np.array_equal(r["labels"], np.diff(r["before"], axis=1))
        assert np.array_equal(r["rows_after"], r["rows_before"])
        assert np.all(r["labels"] != 0)
    assert not np.array_equal(ranks[0]["before"], ranks[1]["before"])  # each group its own trajectories


def test_tensor_parallel_keeps_megatrons_batches(work):
    w, flags = work
    ranks = _probe(w, flags, "tp2", "--tensor-model-parallel-size", "2")
    assert len(ranks) == 2 and all(int(r["dp"]) == 1 and not bool(r["auto"]) for r in ranks)
    assert np.array_equal(ranks[0]["after"], ranks[0]["before"])
    assert np.array_equal(ranks[0]["after"], ranks[1]["after"])
    dp2 = [dict(np.load(f)) for f in sorted(w.glob("dp2_*.npz"))] or _probe(w, flags, "dp2")
    one = np.empty((4, 4))
    for r in dp2:
        one[r["ids"]] = r["before"]
    assert np.allclose(ranks[0]["before"], one, rtol=0, atol=1e-5)  # TP=2 splits matmuls
