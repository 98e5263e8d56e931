#!/usr/bin/env bash
# The lead's GPU measurement, one script of under 5 minutes on an H100: token extraction throughput at ViT-S/16 to
# H/14 shapes with each speed-up on and off (bf16 autocast, fused attention, channels-last, torch.compile at
# ViT-B/16, loader workers, pinned copies) and the online protocol from JPEG files with the CPU and the device feed,
# then the head bank's cost next to the backbone at fp32 and TF32 head matmuls (bench/head_bank.py), then the
# attention diagnostic's cost against a plain forward (bench/attention_cost.py).
# Needs python3 with torch, timm, torchvision, numpy and pillow (the device image has them; no Ray, no install):
# the repository goes on PYTHONPATH. JSON and logs go to $OUT (the device tool's folder), else bench/out.
#
#   bash bench/gpu_check.sh           # on the GPU machine
#   bash bench/gpu_check.sh --smoke   # anywhere, CPU, about a minute: every path runs, nothing measured
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-bench/out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
status=0

if [[ "${1:-}" == "--smoke" ]]; then
    "$PY" bench/extract_throughput.py --smoke --out "$OUT/extract_throughput-smoke.json" || status=1
    if [[ -f bench/head_bank.py ]]; then  # it writes bench/out/head_bank-cpu.json: keep a real run's file
        saved=bench/out/head_bank-cpu.json
        [[ -f $saved ]] && cp -p "$saved" "$saved.keep"
        "$PY" bench/head_bank.py --shapes tiny --lrs 2 --seeds 1 --reps 1 --classes 10 || status=1
        if [[ -f $saved.keep ]]; then mv "$saved.keep" "$saved"; else rm -f "$saved"; fi
    fi
    "$PY" bench/attention_cost.py --backbone demo-mae-tiny --batch-size 4 --reps 1 \
        --out "$OUT/attention_cost-smoke.json" || status=1
    exit $status
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu.txt"

# About 2.5 minutes: 4 shapes x (model variants + extract_tokens from tensors and JPEGs) + one compile.
timeout 240 "$PY" bench/extract_throughput.py --device cuda --compile vitb16 \
    --out "$OUT/extract_throughput-cuda.json" 2>&1 | tee "$OUT/extract_throughput.log" || status=1

# About a minute: per-aggregator head step and the 210-head cls+mean bank next to the ViT-B/16 forward.
if [[ -f bench/head_bank.py ]]; then
    timeout 120 "$PY" bench/head_bank.py --device cuda --batch-size 256 2>&1 | tee "$OUT/head_bank.log" || status=1
    if [[ "$(realpath "$OUT")" != "$(realpath bench/out)" ]]; then cp bench/out/head_bank-cuda.json "$OUT/" || status=1; fi
fi

# Seconds: the attention diagnostic's pass against a plain ViT-B/16 forward (target <= 2x).
timeout 60 "$PY" bench/attention_cost.py --device cuda --batch-size 64 --out "$OUT/attention_cost-cuda.json" \
    2>&1 | tee "$OUT/attention_cost.log" || status=1
exit $status
