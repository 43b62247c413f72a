"""benchmarks/cost_calibration.py on a synthetic run folder: rates and start-ups from the phases' logs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from megatron_gm.errors import GMError
from megatron_gm.pipeline.presets import preset

ROOT = Path(__file__).resolve().parents[3]


def _calibration():
    spec = importlib.util.spec_from_file_location(
        "cost_calibration", ROOT / "benchmarks" / "cost_calibration.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path: Path) -> Path:
    """The `test` preset (1 layer, hidden 32, seq 64, vocab 8192: 272,800 parameters) with two phases done."""
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    cfg = preset("test")
    cfg.data_path = str(tmp_path / "missing_pool")  # no sidecar: the bundled pool's numbers are assumed
    (run / "config.json").write_text(cfg.to_json())
    state = {"stage0.pretrain": {"status": "done", "seconds": 10.0, "cpu_seconds": 5.0},
             "stage0.oracle": {"status": "done", "seconds": 9.0}}  # fmt: skip
    (run / "state.json").write_text(json.dumps({"phases": state}))
    line = " [2026-11-30 00:18:14.695377] iteration {:>8}/      16 | consumed samples: 2 | elapsed time per iteration (ms): {} |"
    (run / "logs" / "stage0.pretrain.log").write_text(
        "\n".join(line.format(n, ms) for n, ms in ((1, 400.0), (4, 100.0), (8, 200.0))) + "\n"
    )
    summary = {"trajectories": 16, "T": 3, "seconds": 5.0, "reference_loss_s": 0.02}
    (run / "logs" / "stage0.oracle.log").write_text("noise\noracle summary: " + json.dumps(summary) + "\n")
    return run


def test_rates_and_start_ups_from_the_logs(tmp_path):
    cal = _calibration()
    rates, startup, rows = cal.fit([_run(tmp_path)])
    # forward FLOPs a token: 2 x 272,800 + 4 x 1 x 64 x 32 = 553,792; training 3x = 1,661,376
    # pretrain: 8 iterations x 2 x 64 tokens trained, (8 // 8 + 1) x 1 x 2 x 64 evaluated; its iterations
    # took 0.4 + 3 x 0.1 + 4 x 0.2 = 1.5 s of the 10 s wall, on one thread
    assert rates["pretrain"] == pytest.approx((1024 * 1661376 + 256 * 553792) / 1.5)
    assert startup["pretrain"] == pytest.approx(8.5)
    # oracle: 16 x 3 = 48 steps of 64 tokens; 49 reference passes of 4 x 64 tokens (no reference file:
    # packed windows) at 0.02 s = 0.98 s, so the steps took 5.0 - 0.98 = 4.02 s; start-up 9 - 5 = 4 s
    assert rates["probe"] == pytest.approx(48 * 64 * 1661376 / 4.02)
    assert rates["ref"] == pytest.approx(49 * 256 * 553792 / 0.98)
    assert startup["oracle"] == pytest.approx(4.0)
    assert [r["phase"] for r in rows] == ["stage0.pretrain", "stage0.oracle"]


def test_the_table_compares_with_the_wall_time(tmp_path):
    cal = _calibration()
    run = _run(tmp_path)
    rates, startup, _ = cal.fit([run], only=r"^stage0\.pretrain$")
    hw = cal.est.Hardware("fitted", {**cal.est.CPU_TYPED.rates, **rates}, 1e30,
                          {**cal.est.CPU_TYPED.startup_s, **startup}, per_thread=True)  # fmt: skip
    rows = {r["phase"]: r for r in cal.table(run, hw, {"stage0.pretrain"})}
    assert rows["stage0.pretrain"]["ratio"] == pytest.approx(1.0) and rows["stage0.pretrain"]["within"]
    assert rows["stage0.pretrain"]["cpu_share"] == pytest.approx(0.5)
    assert not rows["stage0.oracle"]["fitted"] and rows["stage0.oracle"]["measured_s"] == 9.0


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(GMError, match="not a finished pipeline run"):
        _calibration().load_run(tmp_path)
