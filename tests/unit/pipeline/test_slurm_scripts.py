"""The shell scripts of the loop: ``bash -n`` and shellcheck (warnings are errors), and the sbatch headers."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SBATCH = sorted((ROOT / "slurm").glob("*.sbatch"))
SCRIPTS = [*SBATCH, ROOT / "slurm" / "common.sh", ROOT / "examples" / "quickstart.sh"]
PHASES = {"pretrain_stage", "collect_oracle", "train_influence", "bootstrap", "select_data"}


def test_one_sbatch_script_per_phase():
    assert {p.stem for p in SBATCH} == PHASES


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (scripts/setup.sh)")
def test_shellcheck_clean():
    r = subprocess.run(
        ["shellcheck", "-x", "--severity=style", *[str(p.relative_to(ROOT)) for p in SCRIPTS]],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.name)
def test_sbatch_headers_requeue_and_signal(script):
    text = script.read_text()
    header = re.findall(r"^#SBATCH (\S+)", text, flags=re.M)
    assert "--requeue" in header
    assert any(h.startswith("--signal=B:USR1@") for h in header)
    assert "set -euo pipefail" in text
    assert 'source "$GM_ROOT/slurm/common.sh"' in text
    # no site paths: nothing absolute except the interpreter line
    body = "\n".join(line for line in text.splitlines()[1:] if not line.startswith("#"))
    assert not re.search(r"(?<![\w$}])/(?:home|scratch|lustre|gpfs|work|data|opt|usr)/", body)
