#!/usr/bin/env bash
# Quickstart on the bundled data: set up, train a tokenizer, preprocess the 20k pool into a Megatron
# indexed dataset and report what was written. Outputs go to runs/quickstart (override with OUT=...).
# POOL / REF point at other jsonl files; DATA at another folder holding the bundled files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
DATA="${DATA:-$root/../shared/data}"
POOL="${POOL:-$DATA/pool_20k.jsonl.gz}"
OUT="${OUT:-$root/runs/quickstart}"
VOCAB="${VOCAB:-8192}"
if [ ! -f "$POOL" ]; then
  echo "error: $POOL: pool not found; set DATA=<folder with pool_20k.jsonl.gz> or POOL=<your .jsonl[.gz]>" >&2
  exit 2
fi
py="$root/.venv/bin/python"
export PYTHONWARNINGS=ignore
mkdir -p "$OUT"
if [ ! -f "$OUT/tokenizer.model" ]; then
  "$py" tools/train_tokenizer.py --input "$POOL" --model-prefix "$OUT/tokenizer" --vocab-size "$VOCAB" --max-docs 20000
fi
if [ ! -f "$OUT/pool_text_document.gm.json" ]; then
  "$py" tools/preprocess_data.py --input "$POOL" --output-prefix "$OUT/pool" \
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
