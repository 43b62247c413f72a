"""A run folder: its saved config (a rerun must match it), its state file, its logs, and the phase env."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from megatron_gm.errors import GMError
from megatron_gm.fs import atomic_write_text
from megatron_gm.pipeline.config import PipelineConfig
from megatron_gm.pipeline.plan import Phase
from megatron_gm.pipeline.state import RunState

ROOT = Path(__file__).resolve().parents[2]  # the repository root (tools/, slurm/, pretrain_gpt_gm.py)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def open_run(out: str | os.PathLike, cfg: PipelineConfig) -> RunState:
    """Create ``out`` (config.json, state.json, logs/) or check that it belongs to this config."""
    out = Path(out)
    saved = out / "config.json"
    if saved.exists():
        try:
            old = PipelineConfig.from_dict(json.loads(saved.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise GMError(f"{saved}: unreadable ({e}); delete the run folder or choose another --out") from e
        diff = _diff(old.identity(), cfg.identity())
        if diff:
            raise GMError(
                f"{out}: was started with another config ({'; '.join(diff[:3])}); "
                "rerun with the same --preset/--set, or choose another --out"
            )
    elif out.exists() and any(p for p in out.iterdir() if p.name not in ("logs",)):
        raise GMError(f"{out}: exists and is not a pipeline run (no config.json); choose another --out")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, cfg.to_json())
    return RunState(out / "state.json")


def python_exe() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def phase_env(phase: Phase, state: RunState, python: str) -> dict[str, str]:
    """The variables every phase gets, locally and in the sbatch scripts (slurm/common.sh reads them)."""
    env = {
        "GM_ROOT": str(ROOT),
        "GM_PYTHON": python,
        "GM_STATE": str(state.path),
        "GM_PHASE": phase.name,
        "GM_TOOL": str(ROOT / phase.tool),
        "GM_THREADS": str(phase.threads),
        "GM_COMPLETE_MARKER": phase.complete_marker,
        "GM_CKPT_DIR": "",
        "GM_INIT_CKPT": "",
        "GM_EXPECT_ITER": "",
        "NPROC_PER_NODE": str(phase.procs_per_node),
        "OMP_NUM_THREADS": str(phase.threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    env.update(phase.env)
    return env
