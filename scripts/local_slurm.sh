#!/usr/bin/env bash
# A single-host Slurm to try the sbatch path on one machine: bash scripts/local_slurm.sh up|down|status
#   up      start slurmctld + slurmd (2 node names on this host, auth/none) under $GM_SLURM_DIR
#           (default runs/local_slurm) and print the SLURM_CONF line to export
#   status  whether it answers (scontrol ping, sinfo)
#   down    cancel its jobs and stop its daemons (by the PIDs it started)
# Built on the tests' fixture (tests/slurm_cluster.py); needs root and Debian's slurm-wlm (scripts/setup.sh).
# A keeper process holds the daemons: it stops them on `down`, and they stop if it dies.
#   bash scripts/local_slurm.sh up && export SLURM_CONF=$PWD/runs/local_slurm/slurm.conf
#   bash examples/quickstart.sh --mode slurm --wait
#   bash scripts/local_slurm.sh down
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$(mkdir -p "${GM_SLURM_DIR:-$root/runs/local_slurm}" && cd "${GM_SLURM_DIR:-$root/runs/local_slurm}" && pwd)"
py="${GM_SLURM_PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
pidfile="$dir/keeper.pid"
conf="$dir/slurm.conf"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-}" in
  up)
    if running; then
      echo "local Slurm already up (keeper $(cat "$pidfile")); export SLURM_CONF=$conf"
      exit 0
    fi
    rm -f "$dir/ready" "$dir/failed"
    # the keeper: starts the fixture's cluster, writes ready, waits for SIGTERM, then stops it
    PYTHONPATH="$root" setsid "$py" - "$dir" >"$dir/keeper.log" 2>&1 <<'PY' &
import signal, sys, traceback
from pathlib import Path
from tests.slurm_cluster import SlurmCluster, slurm_available

d = Path(sys.argv[1])
why = slurm_available()
if why:
    (d / "failed").write_text(why + "\n")
    sys.exit(1)
cluster = SlurmCluster(d, nodes=2, cpus=4, name="gmlocal")
try:
    cluster.start()
except Exception as e:
    (d / "failed").write_text(str(e).splitlines()[0] + f" (logs: {d}/log)\n")
    traceback.print_exc()
    sys.exit(1)
stop = lambda *_: (cluster.stop(), sys.exit(0))
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
(d / "ready").write_text("up\n")
while True:
    signal.pause()
PY
    echo $! >"$pidfile"
    for _ in $(seq 1 600); do
      [ -f "$dir/ready" ] && break
      if [ -f "$dir/failed" ] || ! running; then
        echo "error: local Slurm did not start: $(cat "$dir/failed" 2>/dev/null || tail -n 1 "$dir/keeper.log")" >&2
        rm -f "$pidfile"
        exit 2
      fi
      sleep 0.1
    done
    [ -f "$dir/ready" ] || { echo "error: local Slurm did not start in 60 s; see $dir/keeper.log" >&2; exit 2; }
    echo "local Slurm up (keeper $(cat "$pidfile")); export SLURM_CONF=$conf"
    ;;
  down)
    if ! running; then
      echo "local Slurm is not running"
      rm -f "$pidfile" "$dir/ready"
      exit 0
    fi
    pid="$(cat "$pidfile")"
    kill -TERM "$pid"
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "error: keeper $pid did not stop in 60 s; see $dir/keeper.log" >&2
      exit 2
    fi
    rm -f "$pidfile" "$dir/ready"
    echo "local Slurm down"
    ;;
  status)
    if ! running; then
      echo "local Slurm is not running (start it: bash scripts/local_slurm.sh up)"
      exit 3
    fi
    SLURM_CONF="$conf" scontrol ping | head -n 1
    SLURM_CONF="$conf" sinfo -h -N -o "%N %t"
    echo "export SLURM_CONF=$conf"
    ;;
  *)
    echo "usage: bash scripts/local_slurm.sh up|down|status" >&2
    exit 2
    ;;
esac
