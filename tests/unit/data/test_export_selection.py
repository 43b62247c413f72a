"""tools/export_selection.py: a selection as its own indexed dataset, trained on by Megatron without install()."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_gm.data.export import main as export_main
from megatron_gm.data.indexed import load_dataset_info
from megatron_gm.data.preprocess import main as preprocess_main
from megatron_gm.data.selection import save_selection
from megatron_gm.data.train_tokenizer import main as train_main
from megatron_gm.manifest import Manifest
from tests.fixtures import make_corpus, write_jsonl

ROOT = Path(__file__).resolve().parents[3]
SELECTED = sorted([0, 3, 4, 10, 57, 58, 59, 120, 121, 250] + list(range(130, 240)))  # 120 of 300

# A user's own pretraining script: Megatron's pretrain() with pretrain_gpt.py's pieces, the CPU shim
# (this machine has no GPU) and no megatron_gm.install().
USER_SCRIPT = """
import sys
from megatron_gm.megatron import cpu_shim

cpu_shim.activate()
sys.argv, _ = cpu_shim.with_cpu_flags(sys.argv)
from megatron.core.enums import ModelType
from megatron.training import pretrain, training
from megatron.training.argument_utils import pretrain_cfg_container_from_args
from megatron.training.arguments import parse_and_validate_args
from megatron_gm.megatron import gpt

if __name__ == "__main__":
    args = parse_and_validate_args()
    config = pretrain_cfg_container_from_args(args, gpt.model_config(args))
    pretrain(config, gpt.train_valid_test_datasets_provider, ModelType.encoder_or_decoder, gpt.forward_step,
             get_embedding_ranks=gpt.get_embedding_ranks)
    print("UNPATCHED", training.build_pretraining_data_loader.__module__,
          "megatron_gm.megatron.loader" in sys.modules, flush=True)
"""


def _pp(inp, prefix, model):
    args = [
        "--input",
        str(inp),
        "--output-prefix",
        str(prefix),
        "--tokenizer-type",
        "GPTSentencePieceTokenizer",
    ]
    return preprocess_main(args + ["--tokenizer-model", str(model), "--append-eod"])


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    corpus = make_corpus(d / "pool.jsonl", n_docs=300, seed=5)
    assert train_main(["--input", str(corpus), "--model-prefix", str(d / "tok"), "--vocab-size", "400"]) == 0
    assert _pp(corpus, d / "pool", d / "tok.model") == 0
    info = load_dataset_info(d / "pool_text_document")
    sel = d / "sel"
    save_selection(
        sel, np.array(SELECTED), Manifest("selection", info.fingerprint, stage=1, iteration=4, seed=7)
    )
    return d, corpus, info, sel


def test_export_is_byte_identical_to_preprocessing_the_selected_documents(pool, capsys):
    d, corpus, info, sel = pool
    out = d / "stage1_text_document"
    assert export_main(["--data-path", str(d / "pool_text_document"), "--selection", str(sel)]
                       + ["--output-prefix", str(out)]) == 0  # fmt: skip
    assert "120 documents" in capsys.readouterr().out
    lines = corpus.read_text().splitlines()
    write_jsonl(d / "chosen.jsonl", [json.loads(lines[i]) for i in SELECTED])
    assert _pp(d / "chosen.jsonl", d / "chosen", d / "tok.model") == 0
    for ext in (".bin", ".idx"):
        assert Path(f"{out}{ext}").read_bytes() == (d / f"chosen_text_document{ext}").read_bytes(), ext
    exported = load_dataset_info(out)
    assert exported.ids == [f"doc{i}" for i in SELECTED] and exported.num_docs == 120
    assert exported.fingerprint == load_dataset_info(d / "chosen_text_document").fingerprint
    record = json.loads(Path(f"{out}.selection.json").read_text())
    assert record["source_fingerprint"] == info.fingerprint and record["fingerprint"] == exported.fingerprint
    assert record["selection"] == str(sel) and record["selection_manifest"]["stage"] == 1
    assert record["selection_digest"] == Manifest.load(sel / "manifest.json").digest()


def test_export_refuses_another_pool_and_existing_output(pool, tmp_path, capsys):
    d, corpus, info, sel = pool
    other = tmp_path / "other"
    save_selection(other, np.array([1, 2]), Manifest("selection", "0123456789abcdef", stage=1))
    args = ["--data-path", str(d / "pool_text_document"), "--output-prefix", str(tmp_path / "x")]
    assert export_main(args + ["--selection", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0123456789abcdef" in err
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(".tmp*"))
    assert export_main(args + ["--selection", str(sel)]) == 0
    before = (tmp_path / "x.bin").read_bytes()
    assert export_main(args + ["--selection", str(sel)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "x.bin").read_bytes() == before


@pytest.mark.megatron
@pytest.mark.slow
def test_megatron_trains_on_the_export_without_install(pool, tmp_path):
    d, _, _, sel = pool
    out = tmp_path / "exported_text_document"
    assert export_main(["--data-path", str(d / "pool_text_document"), "--selection", str(sel)]
                       + ["--output-prefix", str(out)]) == 0  # fmt: skip
    script = tmp_path / "my_pretrain_gpt.py"
    script.write_text(USER_SCRIPT)
    # the pip wheel ships the compiled dataset helpers but no Makefile: a source checkout's `make` would
    # find nothing to do, so stand in for it (Megatron's own code runs unpatched)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/make").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin/make").chmod(0o755)
    flags = [
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "64", "--max-position-embeddings", "64",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "3",
        "--lr", "1e-3", "--lr-warmup-iters", "1", "--seed", "1234",
        "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(d / "tok.model"),
        "--data-path", str(out), "--split", "98,1,1", "--data-cache-path", str(tmp_path / "cache"),
        "--eval-iters", "0", "--eval-interval", "1000", "--log-interval", "1", "--num-workers", "0",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", str(script)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    }
    p = subprocess.run(cmd + flags, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-5000:]
    losses = [float(v) for v in re.findall(r"iteration\s+\d+/\s*3 \|.*?lm loss: ([0-9.E+-]+)", log)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), log[-3000:]
    assert "UNPATCHED megatron.training.datasets.data_samplers False" in p.stdout
    assert str(out) in log  # Megatron's own dataset builder read the export
