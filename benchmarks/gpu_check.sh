#!/usr/bin/env bash
# GPU readiness check: train a ~124M-parameter GPT (GPT-2 small's size: 12 layers, d_model 768, 12 heads, context
# 1024, tied vocabulary of 50,304) for a few hundred steps with bf16 autocast, flash SDPA and torch.compile, on one GPU
# and then (with 2+ GPUs) on all of them with DDP and FSDP2 over NCCL; print tokens/s and MFU against the GPU's
# datasheet bf16 peak (plinth.runlog.GPU_PEAKS; a GPU not listed is measured with a GEMM instead).
#
#   benchmarks/gpu_check.sh                      # STEPS=300 by default; OUT=/tmp/plinth-gpu-check
#   STEPS=50 benchmarks/gpu_check.sh             # shorter
#   DEVICE=cpu MODEL=test ARCH= VOCAB=512 STEPS=3 BATCH=2 PRECISION=fp32 COMPILE=off benchmarks/gpu_check.sh
#                                                # smoke run of this script's path on a CPU (no figures)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-/tmp/plinth-gpu-check}"
STEPS="${STEPS:-300}"
BATCH="${BATCH:-16}"            # sequences of 1024 tokens per GPU per step
MODEL="${MODEL:-base}"         # the base preset (12 layers, d_model 768) with 12 KV heads and tied embeddings:
ARCH="${ARCH---arch.n_kv_head 12 --arch.tie_embeddings true}"  # 85M in the blocks + 38.6M embedding = 124M
VOCAB="${VOCAB:-50304}"
DEVICE="${DEVICE:-cuda}"
PRECISION="${PRECISION:-bf16}"
COMPILE="${COMPILE:-on}"

if [ "$DEVICE" = "cuda" ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi -L || true
  NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
  if [ "$NGPU" -lt 1 ]; then echo "gpu_check: no GPU visible to torch; nothing measured" >&2; exit 1; fi
else
  NGPU=1
fi

mkdir -p "$OUT"
[ -f "$OUT/prepared/report.json" ] || "$PY" -m plinth data prepare builtin:sotu --out "$OUT/prepared" \
  --no-progress > "$OUT/data.log"
[ -f "$OUT/tokenizer.json" ] || "$PY" -m plinth tokenizer train "$OUT/prepared" --out "$OUT/tokenizer.json" \
  --vocab_size "$VOCAB" >> "$OUT/data.log"
[ -f "$OUT/shards/train/manifest.json" ] || "$PY" -m plinth data tokenize "$OUT/prepared" \
  --tokenizer "$OUT/tokenizer.json" --out "$OUT/shards" --no-progress >> "$OUT/data.log"

run() {  # run NAME NPROC STRATEGY
  local name="$1" nproc="$2" strategy="$3"
  rm -rf "$OUT/$name"
  # shellcheck disable=SC2086  # ARCH is a list of options
  "$PY" -m plinth pretrain --model "$MODEL" $ARCH \
    --data.shards "$OUT/shards" --data.tokenizer "$OUT/tokenizer.json" --run.out_dir "$OUT/$name" \
    --optim.batch_size $((BATCH * nproc)) --optim.lr 6e-4 --optim.warmup_steps 30 --run.max_steps "$STEPS" \
    --run.eval_every 0 --run.eval_batches 4 --run.ckpt_every 0 --run.log_every 10 --no-run.progress \
    --system.device "$DEVICE" --system.precision "$PRECISION" --system.compile "$COMPILE" \
    --nproc "$nproc" --strategy "$strategy" > "$OUT/$name.log"
  "$PY" - "$OUT/$name" "$name" <<'EOF'
import json, statistics, sys
run, name = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
s = json.load(open(f"{run}/summary.json"))
late = [r for r in rows if "tok_per_s" in r][len(rows) // 3:] or [r for r in rows if "tok_per_s" in r]
tps, mfu = statistics.median(r["tok_per_s"] for r in late), statistics.median(r.get("mfu", 0) for r in late)
comm = statistics.median(r["comm_share"] for r in late) if "comm_share" in late[-1] else None
print(f"| {name} | {s['parameters'] / 1e6:.1f}M | {s['world_size']} | {tps:,.0f} | {mfu:.1%} | "
      f"{'-' if comm is None else f'{comm:.1%}'} | {s['peak_source']} |")
EOF
}

echo
echo "| run | parameters | processes | tokens/s (median, last 2/3) | MFU | comm share | peak |"
echo "|---|---:|---:|---:|---:|---:|---|"
run one-gpu 1 ddp
if [ "$NGPU" -gt 1 ]; then
  run "ddp-$NGPU" "$NGPU" ddp
  run "fsdp-$NGPU" "$NGPU" fsdp
fi
