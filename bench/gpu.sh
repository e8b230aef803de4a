#!/usr/bin/env bash
# The GPU run in one command; prints a markdown table (see bench/gpu.py for every row).
#
#   bash bench/gpu.sh                                 # GPU machine: 2,000 12-MP + 2,000 web JPEGs
#   COUNT=8 DEVICE=cpu MODEL=tiny bash bench/gpu.sh   # the same steps on the CPU, in seconds
#   bash bench/gpu.sh --cpu                           # the same as the line above
#
# Prep on a bare machine with the repository copied and a CUDA torch + torchvision installed:
#   pip install -e .
# Nothing is downloaded: the model is ViT-B-16 with random weights (the real shape). The generated
# images (about 7.5 GB for 2,000 12-MP JPEGs) stay in $WORKDIR for a second run. The whole script is
# held to LIMIT seconds (default 480: 8 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--cpu" ]]; then
  shift
  DEVICE=${DEVICE:-cpu} COUNT=${COUNT:-8} MODEL=${MODEL:-tiny}
  BATCHES=${BATCHES:-4,8,16} SECONDS_PER=${SECONDS_PER:-0.5} LARGE_SIZE=${LARGE_SIZE:-1600x1200}
fi
DEVICE=${DEVICE:-cuda}
COUNT=${COUNT:-2000}
MODEL=${MODEL:-vit-b-16}
BATCHES=${BATCHES:-64,128,256}
SECONDS_PER=${SECONDS_PER:-4}
WORKDIR=${WORKDIR:-${TMPDIR:-/tmp}/rtagx-bench-gpu}
LARGE_SIZE=${LARGE_SIZE:-4000x3000}
LIMIT=${LIMIT:-480}
PYTHON=${PYTHON:-python3}
echo "bench/gpu.sh: device $DEVICE, $COUNT images per set, model $MODEL, workdir $WORKDIR; $(nproc) cores; $(uptime)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout "$LIMIT" "$PYTHON" bench/gpu.py --device "$DEVICE" --count "$COUNT" --model "$MODEL" \
  --batches "$BATCHES" --seconds "$SECONDS_PER" --workdir "$WORKDIR" --large-size "$LARGE_SIZE" "$@"
