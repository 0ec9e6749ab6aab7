#!/usr/bin/env bash
# Side by side in one run: distckpt, PyTorch DCP (gloo, FileSystemWriter with fsync, 1 thread and
# default threads), torch.save/torch.load (one process) and the raw storage limit, on the same
# state (float32 tensors of 64 MiB), at several sizes and rank counts. Writes
# bench/results/compare.csv, compare.md and compare.png.
# usage: bench/compare.sh [sizes in GiB, comma-separated] [ranks, comma-separated] [reps]
source "$(dirname "$0")/../launch/common.sh"
setup
build
"$PYTHON" -c 'import matplotlib' 2>/dev/null || pip_install matplotlib
SIZES=${1:-0.25,1}; RANKS=${2:-1,2,4}; REPS=${3:-3}
OUT=$DISTCKPT_ROOT/bench/results
mkdir -p "$OUT"; rm -f "$OUT/compare-distckpt.csv" "$OUT/compare-torch.jsonl"
say "comparison: sizes ${SIZES} GiB, ranks ${RANKS}, median of ${REPS}, $(date -u +%F)"
for gib in ${SIZES//,/ }; do
  for np in ${RANKS//,/ }; do
    echo "-- ${gib} GiB on ${np} rank(s)"
    mpirun --oversubscribe -np "$np" "$BUILD_DIR/bench/save_load_bench" --gib "$gib" --reps "$REPS" \
      --dir "${BENCH_DIR:-/tmp/distckpt-bench}" --csv "$OUT/compare-distckpt.csv" | sed 's/^/   /'
    mpirun --oversubscribe -np "$np" -x MASTER_PORT=$((29500 + np)) "$PYTHON" \
      "$DISTCKPT_ROOT/bench/dcp_worker.py" --gib "$gib" --reps "$REPS" \
      --dir "${BENCH_DIR:-/tmp/distckpt-bench}-dcp" >>"$OUT/compare-torch.jsonl"
  done
done
"$PYTHON" "$DISTCKPT_ROOT/bench/report.py" "$OUT"
