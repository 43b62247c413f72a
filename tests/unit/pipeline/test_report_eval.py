"""The run report puts the reference-set and LAMBADA losses (tools/evaluate.py outputs) beside the pool
validation loss, group vs its random twin, and draws them across stages."""

from __future__ import annotations

import json

import pytest

from megatron_gm.errors import GMError
from megatron_gm.pipeline.plan import build_plan
from megatron_gm.pipeline.presets import preset
from megatron_gm.pipeline.report import curves, evaluate_run, write_report
from megatron_gm.pipeline.run import open_run

VALID = (
    " validation loss at iteration {i} on validation set | lm loss value: {loss:E} | lm loss PPL: 3.9E+03 | "
)


def _eval(path, it, ref, lam, acc):
    """A file as tools/evaluate.py writes it (megatron_gm/evaluate.py ``run``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"iteration": it - 4, "reference": {"loss": ref + 1, "samples": 8, "tokens": 100}},
            {"iteration": it, "reference": {"loss": ref, "samples": 8, "tokens": 100},
             "prompts": {"loss": lam, "example_loss": lam, "accuracy": acc, "examples": 5, "target_tokens": 9}}]  # fmt: skip
    path.write_text(json.dumps({"load": "x", "seq_length": 64, "results": rows}))


def test_report_holds_the_reference_comparison_and_a_png(tmp_path):
    cfg = preset("test")
    cfg.random_twin = True
    cfg.stages = 3
    phases = build_plan(cfg, tmp_path)
    st = open_run(tmp_path, cfg)
    logs = tmp_path / "logs"
    (logs / "stage0.pretrain.log").write_text(VALID.format(i=8, loss=6.9))
    (logs / "stage1.pretrain.log").write_text(VALID.format(i=16, loss=6.5))
    (logs / "random.stage1.pretrain.log").write_text(VALID.format(i=16, loss=6.6))
    ev = tmp_path / "eval"
    _eval(ev / "stage0.pretrain.json", 8, 7.25, 8.5, 0.0)
    _eval(ev / "stage1.pretrain.json", 16, 6.75, 8.0, 0.125)
    _eval(ev / "random.stage1.pretrain.json", 16, 7.0, 8.25, 0.0)
    _eval(ev / "stage2.pretrain.json", 24, 6.5, 7.75, 0.25)
    text = write_report(tmp_path, phases, st)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["eval"]["1"]["main"] == {"iteration": 16, "ref_loss": 6.75, "lambada_loss": 8.0,
                                        "lambada_accuracy": 0.125}  # fmt: skip
    assert rep["eval"]["1"]["random"]["ref_loss"] == 7.0 and "random" not in rep["eval"]["2"]
    lines = text.splitlines()
    head = lines.index("stage  reference loss (group / random)   LAMBADA eval loss (group / random)   "
                       "LAMBADA acc (group / random)")  # fmt: skip
    assert lines[head + 1].split() == ["0", "7.2500", "/", "-", "8.5000", "/", "-", "0.0000", "/", "-"]
    assert lines[head + 2].split() == [
        "1",
        "6.7500",
        "/",
        "7.0000",
        "8.0000",
        "/",
        "8.2500",
        "0.1250",
        "/",
        "0.0000",
    ]
    assert lines[head + 3].split() == ["2", "6.5000", "/", "-", "7.7500", "/", "-", "0.2500", "/", "-"]
    assert lines[head + 2].index("8.0000") == lines[head].index("LAMBADA eval")  # columns line up
    # the curves: stage 0 is shared, so both branches start from it
    c = curves(rep)
    assert c["reference loss"] == {"main": [(0, 7.25), (1, 6.75), (2, 6.5)], "random": [(0, 7.25), (1, 7.0)]}
    assert c["pool validation loss"]["random"] == [(0, 6.9), (1, 6.6)]
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert f"curves across stages: {tmp_path / 'report.png'}" in text


def test_evaluate_run_needs_a_finished_run_and_the_files(tmp_path):
    with pytest.raises(GMError, match="report.json: not found"):
        evaluate_run(tmp_path, "ref.jsonl", None)
    (tmp_path / "report.json").write_text(json.dumps({"phases": []}))
    with pytest.raises(GMError, match="missing.jsonl: not found"):
        evaluate_run(tmp_path, str(tmp_path / "missing.jsonl"), None)
