"""tools/select_data.py under real mpirun (and srun) on precomputed scores: same artifact bytes for 1-4 ranks."""

import functools
import subprocess
import sys

import numpy as np
import pytest

from megatron_gm.data.selection import load_selection
from tests.select_helpers import ROOT, TOOL, error_line, reference_selection, run_tool, synthetic_scores

pytestmark = [pytest.mark.slow, pytest.mark.mpi, pytest.mark.timeout(300)]

K = 8


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi") / "scores"
    h, s = synthetic_scores(folder)
    return folder, h, s


def select(scores_dir, out, method, ranks, *extra):
    proc = run_tool(
        "--scores-from",
        scores_dir,
        "--gm-num-clusters",
        K,
        "--gm-select-method",
        method,
        "--gm-stage",
        2,
        "--output",
        out,
        "--no-progress",
        *extra,
        ranks=ranks,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("select_data: docs 3000, scored 0")
    return (out / "documents.npy").read_bytes(), (out / "manifest.json").read_bytes()


@pytest.mark.parametrize(
    "method,ranks",
    [("group", (1, 2, 4)), ("quota", (1, 3)), ("individual", (1, 3)), ("random", (1, 2))],
)
def test_same_bytes_for_any_number_of_ranks(scores, tmp_path, method, ranks):
    folder, h, s = scores
    outs = [select(folder, tmp_path / f"sel{n}", method, n) for n in ranks]
    assert all(o == outs[0] for o in outs[1:])
    docs, manifest = load_selection(tmp_path / f"sel{ranks[0]}", dataset_fingerprint="f00d", num_docs=3000)
    want = reference_selection(h, s, method=method, k=K, stage=2)  # the tool ran --gm-stage 2
    np.testing.assert_array_equal(docs, want)
    assert manifest.stage == 2 and manifest.iteration == 50 and manifest.seed == 1234
    assert manifest.config["method"] == method and manifest.config["num_clusters"] == K
    assert manifest.config["ratio"] == 0.5 and manifest.config["num_selected"] == docs.size
    assert (manifest.config["alpha"], manifest.config["tau"]) == (pytest.approx(0.8), pytest.approx(1.4))
    assert manifest.inputs["influence_model"] == "model0" and manifest.inputs["scores"]


def test_seed_and_ratio_reach_the_selection(scores, tmp_path):
    folder, h, s = scores
    base = select(folder, tmp_path / "a", "group", 2)[0]
    assert select(folder, tmp_path / "b", "group", 2, "--seed", 7)[0] != base
    docs, _ = load_selection(tmp_path / "b")
    np.testing.assert_array_equal(docs, reference_selection(h, s, method="group", k=K, seed=7, stage=2))
    select(folder, tmp_path / "c", "group", 2, "--gm-select-ratio", 0.25)
    docs, _ = load_selection(tmp_path / "c")
    np.testing.assert_array_equal(docs, reference_selection(h, s, method="group", k=K, ratio=0.25, stage=2))


@pytest.mark.slurm
def test_srun_with_pmix_gives_the_same_bytes(scores, tmp_path):
    """Under a real (single-host) Slurm: srun --mpi=pmix -n 2 equals one plain process; without an MPI
    plugin the tasks refuse with one clear line instead of each acting as rank 0."""
    from tests.slurm_cluster import SlurmCluster, slurm_available

    if reason := slurm_available():
        pytest.skip(reason)
    folder, _, _ = scores
    plain = select(folder, tmp_path / "plain", "group", None)
    tool = [sys.executable, str(TOOL), "--scores-from", folder, "--gm-num-clusters", K, "--gm-stage", 2,
            "--no-progress"]  # fmt: skip
    with SlurmCluster(tmp_path / "slurm", nodes=1, cpus=2) as cluster:
        env = {**cluster.env, "PYTHONPATH": str(ROOT)}
        run = functools.partial(
            subprocess.run, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
        )
        proc = run(["srun", "--mpi=pmix", "-n", "2", *map(str, tool), "--output", str(tmp_path / "srun")])
        assert proc.returncode == 0, proc.stderr + cluster.logs()
        proc = run(["srun", "--mpi=none", "-n", "2", *map(str, tool), "--output", str(tmp_path / "none")])
    assert (tmp_path / "srun" / "documents.npy").read_bytes() == plain[0]
    assert (tmp_path / "srun" / "manifest.json").read_bytes() == plain[1]
    assert proc.returncode != 0 and "without an MPI plugin; use srun --mpi=pmix" in error_line(proc)
    assert not (tmp_path / "none").exists()
