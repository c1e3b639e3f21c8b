#!/usr/bin/env bash
# Everything to measure on a CUDA GPU, in one go, into one results file:
#   1. the training step vs transformers in bf16 (benchmarks/train_step_vs_hf.py --device cuda --dtype bf16)
#   2. the scaling table and figure on the GPU (benchmarks/scaling.py --device cuda)
#   3. the `small` preset's training (python -m xlnet_ref.train --preset small), its tokens/s and losses
#
#   bash benchmarks/gpu.sh                 # on a machine with a CUDA GPU; writes results/gpu_<date>.txt
#   bash benchmarks/gpu.sh --dry-run       # anywhere: the same three entry points at tiny sizes on the CPU
#
# Then copy the device name, date and numbers from the results file into benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi

STAMP=$(date -u +%Y-%m-%dT%H%MZ)
mkdir -p results
if [[ $DRY == 1 ]]; then
  OUT=$(mktemp -d)
  RESULTS=$OUT/gpu_dry_run_$STAMP.txt
else
  OUT=results/gpu_$STAMP
  RESULTS=results/gpu_$STAMP.txt
  if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: torch.cuda.is_available() is False here; use --dry-run to check the script on a CPU" >&2
    exit 2
  fi
fi
mkdir -p "$OUT"

{
  echo "# benchmarks/gpu.sh $* — $(date -u '+%Y-%m-%d %H:%M UTC') — git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  $PY -c "import torch; print('torch', torch.__version__, '| device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU (dry run)')"
  if [[ $DRY == 0 ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
  echo "uptime: $(uptime)"

  echo; echo "## 1. training step vs transformers"
  if [[ $DRY == 1 ]]; then
    $PY benchmarks/train_step_vs_hf.py --device cpu --dtype fp32 --batch 2 --seq-len 16 --num-predict 3 --d-model 32 \
        --n-layer 1 --n-head 2 --d-inner 64 --mem-len 16 --vocab-size 100 --pairs 1 --warmup 0
  else
    $PY benchmarks/train_step_vs_hf.py --device cuda --dtype bf16
    $PY benchmarks/train_step_vs_hf.py --device cuda --dtype fp32
  fi

  echo; echo "## 2. scaling with seq_len and memory length"
  if [[ $DRY == 1 ]]; then
    $PY benchmarks/scaling.py --dry-run --out "$OUT/scaling.json" --figure "$OUT/scaling.png"
  else
    $PY benchmarks/scaling.py --device cuda --batch 8 --d-model 256 --n-layer 4 --d-inner 1024 --vocab-size 32000 \
        --out "$OUT/scaling_cuda.json" --figure figures/scaling_cuda.png
  fi

  echo; echo "## 3. the small preset's training"
  if [[ $DRY == 1 ]]; then
    $PY -m xlnet_ref.train --preset tiny --steps 2 --warmup-steps 1 --batch-size 4 --seq-len 40 --eval-every 0 \
        --device cpu --out "$OUT/run" --no-progress
  else
    $PY -m xlnet_ref.train --preset small --out "$OUT/run_small" --no-progress
    $PY - "$OUT/run_small" <<'EOF'
import json, statistics, sys
rows = json.load(open(sys.argv[1] + "/history.json"))
train = [r for r in rows if r["kind"] == "train"]
print(f"small preset: {len(train)} steps, median tokens/s {statistics.median(r['tokens_per_s'] for r in train[10:]):,.0f}, "
      f"last train loss {train[-1]['loss']:.3f}, evals: " + ", ".join(
      f"step {r['step']} PLM {r['eval_plm_loss']:.3f} / l2r {r['eval_l2r_loss']:.3f}" for r in rows if r["kind"] == "eval"))
EOF
  fi
} 2>&1 | tee "$RESULTS"
echo "results: $RESULTS"
