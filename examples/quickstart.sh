#!/usr/bin/env bash
# Quickstart on the bundled data: set up, train a tokenizer, preprocess the 20k pool into a Megatron
# indexed dataset, then run the whole Group-MATES loop with the tiny preset (tools/run_pipeline.py):
#   stage 0 on random data -> oracle -> influence model -> selection -> stage 1 on the selection ->
#   a second round -> stage 2, plus twin stages on random selections of the same size, and a report.
# About 8 minutes on 2 idle CPU cores (embedding the pool with MiniLM, ~3 min, is paid once and reused
# by the second round). The report (runs/quickstart/loop/report.txt, report.png) compares group vs its
# random twin on the reference set and LAMBADA's evaluation half beside the pool-validation loss.
# Outputs go to runs/quickstart (override with OUT=...); rerunning
# continues where it stopped. POOL / REF point at other jsonl files; DATA at another folder holding the
# bundled files; PRESET picks sizes. Arguments go to tools/run_pipeline.py, e.g.
#   bash examples/quickstart.sh --dry-run            # the plan and a FLOPs/time estimate, nothing run
#   bash examples/quickstart.sh --mode slurm --wait  # the same loop as sbatch jobs (slurm/*.sbatch); on one
#                                                    # machine start Slurm first: bash scripts/local_slurm.sh up
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
DATA="${DATA:-$root/../shared/data}"
POOL="${POOL:-$DATA/pool_20k.jsonl.gz}"
REF="${REF:-$DATA/ref_wikitext103_valid.jsonl.gz}"
OUT="${OUT:-$root/runs/quickstart}"
VOCAB="${VOCAB:-8192}"
PRESET="${PRESET:-tiny}"
if [ ! -f "$POOL" ]; then
  echo "error: $POOL: pool not found; set DATA=<folder with pool_20k.jsonl.gz> or POOL=<your .jsonl[.gz]>" >&2
  exit 2
fi
if [ ! -f "$REF" ]; then
  echo "error: $REF: reference set not found; set DATA=<folder with the bundled files> or REF=<your .jsonl[.gz]>" >&2
  exit 2
fi
py="$root/.venv/bin/python"
export PYTHONWARNINGS=ignore
if [[ " $* " == *" --mode slurm "* && " $* " != *" --dry-run "* ]]; then
  # the local single-host Slurm (scripts/local_slurm.sh up), when no other is configured
  if [ -z "${SLURM_CONF:-}" ] && [ -f "$root/runs/local_slurm/ready" ]; then
    export SLURM_CONF="$root/runs/local_slurm/slurm.conf"
    echo "[quickstart] using the local Slurm: SLURM_CONF=$SLURM_CONF"
  fi
  # before any work: without a controller the chain would fail after preprocessing
  PYTHONPATH="$root" "$py" -c 'import sys
from megatron_gm.errors import GMError
from megatron_gm.pipeline.slurm import check_controller
try:
    print("[quickstart] Slurm:", check_controller())
except GMError as e:
    sys.exit(f"error: {e}")'
fi
mkdir -p "$OUT"
timed() {  # timed NAME CMD...: run CMD, print its wall time
  local t0=$SECONDS
  "${@:2}"
  echo "[quickstart] $1: $((SECONDS - t0)) s"
}
if [ ! -f "$OUT/tokenizer.model" ]; then
  timed tokenizer "$py" tools/train_tokenizer.py --input "$POOL" --model-prefix "$OUT/tokenizer" \
    --vocab-size "$VOCAB" --max-docs 20000
fi
if [ ! -f "$OUT/pool_text_document.gm.json" ]; then
  timed preprocess "$py" tools/preprocess_data.py --input "$POOL" --output-prefix "$OUT/pool" \
    --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model "$OUT/tokenizer.model" --append-eod --workers 2
fi
"$py" - "$OUT/pool_text_document" <<'PY'
import sys
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron_gm.data.indexed import load_dataset_info
info = load_dataset_info(sys.argv[1])
ds = IndexedDataset(sys.argv[1])
lens = ds.sequence_lengths
print(f"dataset {info.prefix}: {info.num_docs} documents, {info.num_tokens} tokens "
      f"(median {int(sorted(lens)[len(lens) // 2])} tokens/doc), fingerprint {info.fingerprint}")
PY
timed loop "$py" tools/run_pipeline.py --preset "$PRESET" --out "$OUT/loop" --data-path "$OUT/pool_text_document" \
  --tokenizer-model "$OUT/tokenizer.model" --ref "$REF" "$@"
case " $* " in
  *" --dry-run "*) exit 0 ;;
  *" --mode slurm "*) [[ " $* " == *" --wait "* ]] || exit 0 ;;  # submitted only: report once it is done
esac
# what selection aims at: group vs its random twin on the reference set and the LAMBADA evaluation half
# (tools/evaluate.py on every stage's checkpoint) beside the pool-validation loss, plus a PNG of the curves
LAMBADA="${LAMBADA:-$DATA/lambada_eval.jsonl.gz}"
prompts=()
[ -f "$LAMBADA" ] && prompts=(--prompts "$LAMBADA")
timed report "$py" -m megatron_gm.pipeline.report --run "$OUT/loop" --ref "$REF" "${prompts[@]}"
echo "[quickstart] report: $OUT/loop/report.txt, curves: $OUT/loop/report.png"
