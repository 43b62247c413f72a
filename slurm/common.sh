# shellcheck shell=bash
# Shared by the sbatch scripts in slurm/: environment, MASTER_ADDR, launchers, preemption handling and
# the pipeline state file. Sourced, never run. Every setting is an environment variable with a default:
#
#   GM_ROOT          repository root (default: the submit directory)
#   GM_PYTHON        python with megatron-gm installed (default: $GM_ROOT/.venv/bin/python)
#   GM_TOOL          the phase's entry point (each script has its default)
#   GM_THREADS       CPU threads per process (default: --cpus-per-task, or 1)
#   NPROC_PER_NODE   torchrun workers per node (default: GPUs on the node, or 1)
#   GM_MASTER_ADDR   rendezvous address (default: the first node's address, from scontrol)
#   GM_MASTER_PORT   rendezvous port (default: derived from the job id)
#   GM_MPI_LAUNCH    srun (default: one task per rank, --mpi=$GM_SRUN_MPI) or mpirun
#   GM_SRUN_MPI      srun's MPI plugin (default: pmix; pmi2 for MPICH)
#   GM_STATE, GM_PHASE      pipeline state file and phase name (set by tools/run_pipeline.py)
#   GM_COMPLETE_MARKER      a file whose presence means the phase's artifact is already complete
#   GM_CKPT_DIR, GM_INIT_CKPT, GM_EXPECT_ITER   pretraining: own and previous checkpoints, stage end
#
# Time limit: sbatch --signal=B:USR1@N sends SIGUSR1 to this shell N seconds before the time limit;
# the handler asks the phase to save (SIGTERM to the job's steps), waits for it, then requeues the job
# (--requeue). SIGTERM to this shell (scancel, preemption) does the same without requeueing. A requeued
# or resubmitted job resumes its phase.

gm_log() { printf '[gm %s] %s\n' "$(date +%T)" "$*" >&2; }

gm_init() {
  GM_ROOT="${GM_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
  GM_PYTHON="${GM_PYTHON:-$GM_ROOT/.venv/bin/python}"
  GM_THREADS="${GM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
  NPROC_PER_NODE="${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"
  GM_PHASE="${GM_PHASE:-${SLURM_JOB_NAME:-phase}}"
  GM_CHILD=""
  export GM_ROOT GM_PYTHON GM_THREADS NPROC_PER_NODE GM_PHASE
  export OMP_NUM_THREADS="$GM_THREADS" PYTHONPATH="$GM_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
  export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
  if [ ! -x "$GM_PYTHON" ]; then
    gm_log "error: $GM_PYTHON is not an executable python; set GM_PYTHON or run scripts/setup.sh"
    exit 2
  fi
  cd "$GM_ROOT" || exit 2
  trap 'gm_on_signal USR1' USR1
  trap 'gm_on_signal TERM' TERM
}

# The first node's address. Node names need not resolve (NodeAddr may differ from the name), so ask
# Slurm for the address it reaches the node at, then resolve that if it is a name.
gm_master_addr() {
  local node addr ip
  node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
  addr="$(scontrol show node "$node" 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)"
  addr="${addr:-$node}"
  if ! [[ "$addr" =~ ^[0-9.]+$ || "$addr" == *:* ]]; then
    ip="$(getent ahostsv4 "$addr" 2>/dev/null | awk 'NR == 1 { print $1 }')"
    addr="${ip:-$addr}"
  fi
  printf '%s\n' "$addr"
}

gm_rendezvous() {
  MASTER_ADDR="${GM_MASTER_ADDR:-$(gm_master_addr)}"
  MASTER_PORT="${GM_MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
  export MASTER_ADDR MASTER_PORT
  gm_log "$GM_PHASE: job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}, master $MASTER_ADDR:$MASTER_PORT"
}

gm_state() {  # gm_state begin|done|failed|interrupted [rc]
  [ -n "${GM_STATE:-}" ] || return 0
  "$GM_PYTHON" -m megatron_gm.pipeline.state --file "$GM_STATE" "$1" "$GM_PHASE" \
    --job-id "${SLURM_JOB_ID:-}" --rc "${2:-0}" || gm_log "warning: could not update $GM_STATE"
}

# Start of a phase: a complete artifact (the job died after writing it) needs no rerun; nor does a
# pretraining stage whose checkpoint is already at the stage's end.
gm_begin() {
  local done_already=""
  if [ -n "${GM_COMPLETE_MARKER:-}" ] && [ -e "$GM_COMPLETE_MARKER" ]; then
    done_already="$GM_COMPLETE_MARKER exists"
  elif [ -n "${GM_EXPECT_ITER:-}" ] &&
    [ "$(cat "$GM_CKPT_DIR/latest_checkpointed_iteration.txt" 2>/dev/null)" = "$GM_EXPECT_ITER" ]; then
    done_already="$GM_CKPT_DIR is at iteration $GM_EXPECT_ITER"
  fi
  if [ -n "$done_already" ]; then
    gm_log "$GM_PHASE: $done_already: the artifact is complete"
    gm_state begin
    gm_state "done"
    exit 0
  fi
  gm_state begin
}

# Run a command in the background so that the signal traps fire at once, and wait for it.
gm_run() {
  local rc=0
  "$@" &
  GM_CHILD=$!
  wait "$GM_CHILD" || rc=$?
  GM_CHILD=""
  return "$rc"
}

gm_finish() {  # gm_finish RC: record the outcome and exit with it
  local got
  if [ "$1" -eq 0 ] && [ -n "${GM_EXPECT_ITER:-}" ]; then
    # Megatron exits 0 after an early stop (signal, --exit-duration-in-mins): not the stage's end
    got="$(cat "$GM_CKPT_DIR/latest_checkpointed_iteration.txt" 2>/dev/null || echo none)"
    if [ "$got" != "$GM_EXPECT_ITER" ]; then
      gm_log "$GM_PHASE: stopped at checkpoint iteration $got, before the stage's end ($GM_EXPECT_ITER)"
      gm_state interrupted 75
      exit 75
    fi
  fi
  if [ "$1" -eq 0 ]; then
    gm_state "done"
    gm_log "$GM_PHASE: done"
  else
    gm_state failed "$1"
    gm_log "$GM_PHASE: failed with exit code $1"
  fi
  exit "$1"
}

# SIGTERM goes to the job's steps, not to srun: srun answers SIGTERM by killing its step at once, while
# the tasks themselves save first (torchrun forwards it to its workers; Megatron's --exit-signal-handler
# checkpoints; the other tools finish the shard at hand). On scancel or preemption Slurm signals srun
# too, so the phase may die before saving: it then resumes from its last checkpoint or shard marker.
gm_on_signal() {
  trap '' USR1 TERM
  gm_log "$GM_PHASE: SIG$1: asking the phase to save and stop"
  if [ -n "$GM_CHILD" ] && kill -0 "$GM_CHILD" 2>/dev/null; then
    if [ -n "${SLURM_JOB_ID:-}" ]; then
      scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || kill -TERM "$GM_CHILD" 2>/dev/null || true
    else
      kill -TERM "$GM_CHILD" 2>/dev/null || true
    fi
    wait "$GM_CHILD" 2>/dev/null || true
  fi
  gm_state interrupted 143
  if [ "$1" = USR1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    gm_log "$GM_PHASE: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" || gm_log "warning: requeue failed; resubmit with tools/run_pipeline.py"
  fi
  exit 143
}

# torchrun on every node (srun: one task per node); each torchrun starts NPROC_PER_NODE workers.
gm_torchrun() {
  gm_rendezvous
  # shellcheck disable=SC2016  # expanded by the per-node shell, where SLURM_NODEID is set
  gm_run srun --kill-on-bad-exit=1 --nodes="${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node=1 \
    --ntasks="${SLURM_JOB_NUM_NODES:-1}" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
    bash -c 'exec "$GM_PYTHON" -m megatron_gm.megatron.launch --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" \
      --nproc-per-node "$NPROC_PER_NODE" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" "$@"' \
    gm-torchrun "$@"
}

# One process per MPI rank: srun (one task per rank) or mpirun inside the allocation.
gm_mpi() {
  local n="${SLURM_NTASKS:-1}"
  gm_log "$GM_PHASE: job ${SLURM_JOB_ID:-?}: $n MPI rank(s) via ${GM_MPI_LAUNCH:-srun} on ${SLURM_JOB_NODELIST:-?}"
  case "${GM_MPI_LAUNCH:-srun}" in
    srun)
      gm_run srun --kill-on-bad-exit=1 --mpi="${GM_SRUN_MPI:-pmix}" --ntasks="$n" \
        --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "$GM_PYTHON" "$@"
      ;;
    mpirun)
      local root_flags=()
      [ "$(id -u)" -ne 0 ] || root_flags=(--allow-run-as-root)
      gm_run mpirun "${root_flags[@]}" --oversubscribe -n "$n" "$GM_PYTHON" "$@"
      ;;
    *)
      gm_log "error: GM_MPI_LAUNCH=$GM_MPI_LAUNCH; use srun or mpirun"
      return 2
      ;;
  esac
}

# One process (a tool that is neither distributed nor MPI), as one Slurm task.
gm_single() {
  gm_log "$GM_PHASE: job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}"
  gm_run srun --kill-on-bad-exit=1 --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "$GM_PYTHON" "$@"
}
