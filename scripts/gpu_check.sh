#!/usr/bin/env bash
# One end-to-end check of the CUDA/NCCL path on a machine with one GPU (a few minutes):
#   1. synthetic corpus -> tools/train_tokenizer.py -> tools/preprocess_data.py (indexed dataset)
#   2. pretrain_gpt_gm.py under torchrun (NCCL, CUDA, no CPU shim): stage 0 on Megatron's order, saved
#      at its boundary; synthetic scores -> tools/select_data.py --scores-from; stage 1 on that
#      --gm-selection, loaded from stage 0's checkpoint
#   3. tools/collect_oracle.py under torchrun from stage 1's checkpoint: a handful of trajectories
#   4. iteration time, oracle seconds per trajectory, label mean/std, the GPU's name
#
#   bash scripts/gpu_check.sh          # needs CUDA; fails if torch sees no GPU
#   bash scripts/gpu_check.sh --cost   # the same steps at a 300M-parameter GPT (sequence 2048): measured
#                                      # utilisation of a pretraining step, a probe step and the reference
#                                      # pass, against the cost model's assumptions (pipeline/estimate.py)
#   bash scripts/gpu_check.sh --cpu    # the same steps, smaller, on the CPU shim (gloo): debug it anywhere
#
# Logs and summary.json go to ${OUT:-/tmp/gpu_check} (at most 8 files); data and checkpoints to
# ${GM_CHECK_WORK:-a new /tmp/gpu_check_work.* folder}. Python: $GM_CHECK_PYTHON, else .venv/bin/python,
# else python3. If megatron-core (or faiss) does not import and .whl/ holds wheels, they are installed
# into the work folder first (the device machine has no megatron-core). Exit code 0 only if every
# check passed.
# Seen on one H200 (torch 2.11+cu130, NCCL 2.28.9, megatron-core 0.19.2 from .whl/): passed in 167 s;
# ~95 ms an iteration (4x512 layers, 32x512 tokens, bf16), 0.32 s an oracle trajectory (T=5).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode=gpu
scale=check
for a in "$@"; do
    case "$a" in
        --cpu) mode=cpu ;;
        --cost) scale=cost ;;
        -h | --help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "error: unknown argument $a (see --help)" >&2; exit 2 ;;
    esac
done

out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
rm -f "$out"/*.log "$out/summary.json"
work="${GM_CHECK_WORK:-$(mktemp -d /tmp/gpu_check_work.XXXXXX)}"
mkdir -p "$work"
if [[ -n "${GM_CHECK_PYTHON:-}" ]]; then
    py="$GM_CHECK_PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
    py="$root/.venv/bin/python"
else
    py=python3
fi
export PYTHONPATH="$root" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore HF_HUB_OFFLINE=1
if [[ "$mode" == cpu ]]; then
    export CUDA_VISIBLE_DEVICES=""
fi
cd "$work"

t_all=$SECONDS
log() { echo "[gpu_check $((SECONDS - t_all))s] $*"; }
step() {  # step NAME LOG CMD...: run CMD, output appended to $out/LOG.log, its tail shown if it fails
    local name=$1 file="$out/$2.log" t0=$SECONDS
    shift 2
    log "$name ..."
    echo "+ $*" >>"$file"
    if ! "$@" >>"$file" 2>&1; then
        log "$name FAILED, last lines of $file:"
        tail -n 60 "$file"
        exit 1
    fi
    log "$name done in $((SECONDS - t0))s"
}

# -- environment (wheels from .whl/ where megatron-core or faiss are missing) -------------------------
if ! "$py" -c "import megatron.core, faiss" >/dev/null 2>&1; then
    shopt -s nullglob
    wheels=("$root"/.whl/*.whl)
    shopt -u nullglob
    if ((${#wheels[@]} == 0)); then
        echo "error: megatron-core or faiss does not import with $py and $root/.whl/ holds no wheels" >&2
        exit 2
    fi
    step wheels wheels "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$work/site" "${wheels[@]}"
    export PYTHONPATH="$work/site:$PYTHONPATH"
fi
{
    echo "mode: $mode  python: $py  work: $work"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    else
        echo "nvidia-smi: not found"
    fi
    "$py" - "$mode" <<'EOF'
import sys
import torch
import megatron.core
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, megatron-core {megatron.core.__version__}, cuda available {cuda}")
if cuda:
    print(f"device {torch.cuda.get_device_name(0)}, nccl {'.'.join(map(str, torch.cuda.nccl.version()))}")
if sys.argv[1] == "gpu" and not cuda:
    sys.exit("error: torch sees no CUDA device (run with --cpu for the CPU shim)")
EOF
} 2>&1 | tee "$out/env.log"

# -- sizes --------------------------------------------------------------------------------------------
if [[ "$mode" == gpu && "$scale" == cost ]]; then
    # 24 x 1024 (about 300M parameters), sequence 2048: big enough that a step is not all launch overhead
    docs=6000 vocab=4096 layers=24 hidden=1024 heads=16 seq=2048 mbs=4 gbs=32 s0=12 s1=12
    traj=6 T=5 ref_samples=32 ref_mbs=8 workers=8 log_int=1 eval_iters=1
fi
if [[ "$mode" == gpu && "$scale" == check ]]; then
    docs=6000 vocab=4096 layers=4 hidden=512 heads=8 seq=512 mbs=8 gbs=32 s0=20 s1=20
    traj=8 T=5 ref_samples=32 ref_mbs=16 workers=4 log_int=2 eval_iters=2
fi
if [[ "$mode" == gpu ]]; then
    # megatron-core from pip: no Transformer Engine, no Apex, so Megatron's local layers and torch
    # kernels; NCCL named explicitly (it is Megatron's default)
    backend=(--distributed-backend nccl --transformer-impl local --no-persist-layer-norm
        --no-gradient-accumulation-fusion --no-masked-softmax-fusion --no-rope-fusion
        --no-bias-gelu-fusion --no-bias-dropout-fusion --bf16)
else
    docs=400 vocab=512 layers=2 hidden=64 heads=4 seq=64 mbs=2 gbs=4 s0=4 s1=4
    traj=4 T=3 ref_samples=6 ref_mbs=3 workers=2 log_int=1 eval_iters=1
    backend=(--bf16)  # pretrain_gpt_gm.py and collect_oracle.py add the CPU flags themselves
fi
total=$((s0 + s1))
stage_iters="$s0,$total"

# -- 1. corpus, tokenizer, indexed dataset -----------------------------------------------------------
"$py" - "$docs" <<'EOF'
import json
import random
import sys

n = int(sys.argv[1])
rng = random.Random(0)
syl = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
words = sorted({"".join(rng.choice(syl) for _ in range(rng.randint(1, 3))) for _ in range(6000)})
common = words[:60]
topics = [rng.sample(words, 300) for _ in range(16)]


def doc(r: random.Random) -> str:
    vocab = topics[r.randrange(len(topics))]
    out = []
    for i in range(r.randint(60, 300)):
        w = r.choice(common) if r.random() < 0.3 else vocab[min(int(r.paretovariate(1.2)) - 1, 299)]
        out.append(w.capitalize() if i % 12 == 0 else w)
    return " ".join(out) + "."


with open("pool.jsonl", "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"doc{i}", "text": doc(rng)}) + "\n")
ref = random.Random(1)
with open("ref.jsonl", "w") as f:
    for _ in range(64):
        f.write(json.dumps({"text": doc(ref)}) + "\n")
EOF
step tokenizer data "$py" "$root/tools/train_tokenizer.py" --input pool.jsonl --json-keys text \
    --vocab-size "$vocab" --model-type bpe --model-prefix tok --overwrite
step preprocess data "$py" "$root/tools/preprocess_data.py" --input pool.jsonl --output-prefix pool \
    --json-keys text --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model tok.model \
    --append-eod --workers "$workers" --overwrite

torchrun=("$py" -m torch.distributed.run --standalone --nproc-per-node 1)
model=(--num-layers "$layers" --hidden-size "$hidden" --num-attention-heads "$heads"
    --ffn-hidden-size $((4 * hidden)) --seq-length "$seq" --max-position-embeddings "$seq"
    --data-path pool_text_document --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model tok.model
    --seed 1234 "${backend[@]}")
train=(--micro-batch-size "$mbs" --global-batch-size "$gbs" --train-iters "$total"
    --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-decay-iters "$total" --lr-warmup-iters 4
    --weight-decay 0.1 --clip-grad 1.0 --split "98,2,0" --data-cache-path cache --num-workers 2
    --eval-interval "$s0" --eval-iters "$eval_iters" --log-interval "$log_int" --save ck
    --save-interval 1000 --exit-signal-handler --gm-stage-iters "$stage_iters")
export NCCL_DEBUG=VERSION  # one line with NCCL's version: proof that NCCL was initialized

# -- 2. stage 0, selection, stage 1 ------------------------------------------------------------------
step pretrain_stage0 pretrain_stage0 "${torchrun[@]}" "$root/pretrain_gpt_gm.py" "${model[@]}" "${train[@]}" --gm-stage 0
"$py" - <<'EOF'
import numpy as np

from megatron_gm.data.indexed import load_dataset_info
from megatron_gm.selection.score_store import write_scores

info = load_dataset_info("pool_text_document")
rng = np.random.default_rng(0)
h = rng.standard_normal((info.num_docs, 16)).astype(np.float32)
h /= np.linalg.norm(h, axis=1, keepdims=True)
s = rng.standard_normal(info.num_docs).astype(np.float32)
write_scores("scores", h, s, alpha=0.8, tau=1.4, dataset_fingerprint=info.fingerprint,
             model_hash="gpu_check", shard_size=1000, stage=1)  # fmt: skip
EOF
step select select "$py" "$root/tools/select_data.py" --scores-from scores --gm-select-method group \
    --gm-select-ratio 0.5 --gm-num-clusters 8 --gm-stage 1 --output sel1 --threads 4 --no-progress
step pretrain_stage1 pretrain_stage1 "${torchrun[@]}" "$root/pretrain_gpt_gm.py" "${model[@]}" "${train[@]}" \
    --load ck --gm-stage 1 --gm-selection sel1

# -- 3. oracle from stage 1's checkpoint -------------------------------------------------------------
step oracle oracle "${torchrun[@]}" "$root/tools/collect_oracle.py" "${model[@]}" --micro-batch-size 1 \
    --load ck --gm-stage 1 --gm-oracle-trajectories "$traj" --gm-oracle-T "$T" \
    --gm-oracle-ref-data ref.jsonl --gm-oracle-ref-samples "$ref_samples" \
    --gm-oracle-ref-micro-batch-size "$ref_mbs" --gm-oracle-shard-size 4 --gm-oracle-output oracle \
    --gm-oracle-time-train-steps 3 --no-gm-oracle-progress

# -- 4. numbers and checks ---------------------------------------------------------------------------
"$py" - "$out" "$mode" "$s0" "$total" "$((traj * T))" "$((SECONDS - t_all))" "$layers" "$hidden" "$seq" "$gbs" "$ref_samples" <<'EOF'
import json
import math
import re
import statistics
import sys
from pathlib import Path

out, mode, s0, total, n_labels, wall, layers, hidden, seq, gbs, ref_samples = (
    Path(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:])
)
problems = []
PEAK = 989e12  # H100/H200 SXM dense bf16 FLOP/s: the cost model's unit (pipeline/estimate.py)


def iterations(name):
    text = (out / f"{name}.log").read_text(errors="replace")
    rows = re.findall(r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([0-9.]+).*?"
                      r"lm loss: ([0-9.E+-]+)", text)  # fmt: skip
    if mode == "gpu" and "CPU shim on" in text:
        problems.append(f"{name}: the CPU shim was on")
    if mode == "gpu" and "NCCL version" not in text:
        problems.append(f"{name}: no 'NCCL version' line (NCCL_DEBUG=VERSION): NCCL not initialized?")
    return text, [(int(i), float(ms), float(loss)) for i, ms, loss in rows]


summary = {"mode": mode}
for name, lo, hi in (("pretrain_stage0", 0, s0), ("pretrain_stage1", s0, total)):
    text, rows = iterations(name)
    its = [r[0] for r in rows]
    if not rows or its[-1] != hi:
        problems.append(f"{name}: logged iterations {its}, expected up to {hi}")
    if any(not math.isfinite(r[2]) for r in rows):
        problems.append(f"{name}: non-finite loss")
    steady = [r[1] for r in rows if r[0] > lo + 2] or [r[1] for r in rows]  # skip warm-up
    summary[name] = {
        "iterations": its[-1] if its else None, "iteration_ms_median": statistics.median(steady) if steady else None,
        "first_loss": rows[0][2] if rows else None, "last_loss": rows[-1][2] if rows else None,
    }  # fmt: skip
    m = re.search(r"validation loss at iteration \d+ \| lm loss value: ([0-9.E+-]+)", text)
    summary[name]["validation_loss"] = float(m.group(1)) if m else None
    m = re.search(r"memory \(MB\) \| allocated: ([0-9.]+) \| max allocated: ([0-9.]+)", text)
    if m:
        summary[name]["max_allocated_mb"] = float(m.group(2))
s0_first, s1_last = summary["pretrain_stage0"]["first_loss"], summary["pretrain_stage1"]["last_loss"]
if s0_first is not None and s1_last is not None and not s1_last < s0_first:
    problems.append(f"loss did not go down: {s0_first} -> {s1_last}")
text = (out / "oracle.log").read_text(errors="replace")
m = re.search(r"oracle summary: (\{.*\})", text)
if not m:
    problems.append("oracle: no summary line")
else:
    o = json.loads(m.group(1))
    lab = o.get("labels") or {}
    summary["oracle"] = {
        "trajectories": o["trajectories"], "T": o["T"], "seconds": o["seconds"],
        "seconds_per_trajectory": o["seconds"] / max(o["trajectories"], 1),
        "probe_train_step_s": o.get("probe_train_step_s"), "reference_loss_s": o.get("reference_loss_s"),
        "pretrain_step_s": o.get("pretrain_step_s"), "base_ref_loss": o.get("base_ref_loss"),
        "reference_samples": o.get("reference_samples"), "reference_tokens": o.get("reference_tokens"),
        "labels": lab,
    }  # fmt: skip
    if not o.get("complete"):
        problems.append("oracle: store not complete")
    if lab.get("count") != n_labels:
        problems.append(f"oracle: {lab.get('count')} labels, expected {n_labels}")
    if not all(math.isfinite(lab.get(k, float("nan"))) for k in ("mean", "std")) or not lab.get("std", 0) > 0:
        problems.append(f"oracle: labels not finite or constant: {lab}")
    if mode == "gpu" and "CPU shim on" in text:
        problems.append("oracle: the CPU shim was on")
# utilisation: FLOPs per token 6N + 12 L h s (training; forward only: a third), N from Megatron's own count
m = re.search(r"number of parameters on \(tensor, [^)]*\) model parallel rank \([^)]*\): (\d+)",
              (out / "pretrain_stage0.log").read_text(errors="replace"))  # fmt: skip
if m and mode == "gpu":
    n = int(m.group(1))
    per_token = 6 * n + 12 * layers * hidden * seq
    util = {"parameters": n, "peak_flops": PEAK}
    it_ms = summary["pretrain_stage1"]["iteration_ms_median"]
    if it_ms:
        util["pretrain_step"] = per_token * gbs * seq / (it_ms / 1e3) / PEAK
    o = summary.get("oracle", {})
    if o.get("probe_train_step_s"):  # one sample of seq tokens, padded: the whole sequence is computed
        util["probe_step"] = per_token * seq / o["probe_train_step_s"] / PEAK
    if o.get("reference_loss_s") and o.get("reference_samples"):  # the samples it really built (<= asked)
        util["reference_pass"] = per_token / 3 * o["reference_samples"] * seq / o["reference_loss_s"] / PEAK
    util["assumed_by_cost_model"] = {"pretrain_step": 0.35, "probe_step": 0.30, "reference_pass": 0.40}
    summary["utilisation"] = util
env = (out / "env.log").read_text(errors="replace").splitlines()
summary["env"] = env
summary["wall_s"] = wall
summary["problems"] = problems
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
print("gpu_check:", "PASSED" if not problems else "FAILED: " + "; ".join(problems))
sys.exit(1 if problems else 0)
EOF
