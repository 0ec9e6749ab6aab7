#!/usr/bin/env bash
# Device staging on a machine without a GPU: staging_bench behind the fake device at each size
# and budget, interleaved with the same state as plain CPU tensors (no staging) as the reference,
# so that the noisy disk affects both alike, and PyTorch DCP's dcp.save/dcp.load of the same
# state on the CPU (bench/staging_dcp.py). Results: bench/results/staging_cpu.csv and
# bench/results/staging_dcp_cpu.csv.
# usage: bench/staging.sh [BUILD_DIR] [SIZES_GIB] [BUDGETS_MIB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build} sizes=${2:-1,4} budgets=${3:-64,256} rounds=${4:-2}
out=bench/results/staging_cpu.csv dcp=bench/results/staging_dcp_cpu.csv
rm -f "$out" "$dcp"
for round in $(seq "$rounds"); do
  for gib in ${sizes//,/ }; do
    "$build/bench/staging_bench" --device cpu --gib "$gib" --dir /tmp/distckpt-staging --csv "$out"
    python3 bench/staging_dcp.py --device cpu --gib "$gib" --dir /tmp/distckpt-staging-dcp \
      --csv "$dcp" 2>&1 | { grep -v -e UserWarning -e 'return func' || true; }
    for mib in ${budgets//,/ }; do
      "$build/bench/staging_bench" --device fake --gib "$gib" --budget-mib "$mib" \
        --dir /tmp/distckpt-staging --csv "$out"
    done
  done
done
rm -rf /tmp/distckpt-staging /tmp/distckpt-staging-dcp
