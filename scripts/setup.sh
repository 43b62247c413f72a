#!/usr/bin/env bash
# Set up megatron-gm on a fresh Debian machine (run as root, or with sudo available).
# Creates .venv (Python >= 3.12) with pinned packages and installs the Debian packages for a
# real MPI (Open MPI) and Slurm (slurmctld, slurmd, slurm-client, munge). Idempotent: a second
# run checks a stamp and returns in seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
apt_pkgs=(openmpi-bin libopenmpi-dev slurmd slurmctld slurm-client munge shellcheck)
deepspeed_pin="deepspeed==0.19.8"

log() { printf '[setup] %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------------
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python >= 3.12 --------------------------------------------------------------------------
find_python() {
  local c
  for c in "${GM_PYTHON:-}" python3.13 python3.12 \
           "$(pyenv root 2>/dev/null)/versions/3.12.1/bin/python3" \
           "$(pyenv root 2>/dev/null)/versions/3.13.0/bin/python3"; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

stamp="$venv/.gm-setup-stamp"
want="$(cat requirements.txt setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "environment up to date ($venv)"
  exit 0
fi

py="$(find_python)" || { echo "setup: no Python >= 3.12 found; install one (pyenv install 3.12) or set GM_PYTHON" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv with $("$py" --version)"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip setuptools wheel
log "installing pinned Python packages (first run: about a minute)"
"${pip[@]}" install -r requirements.txt
# DeepSpeed without its compiled ops, against the torch above.
DS_BUILD_OPS=0 "${pip[@]}" install --no-build-isolation "$deepspeed_pin" "$(grep '^torch==' requirements.txt)"
"${pip[@]}" install --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
log "done: $("$venv/bin/python" -c 'import torch, megatron.core, megatron_gm; print("torch", torch.__version__, "megatron-core", megatron.core.__version__)')"
