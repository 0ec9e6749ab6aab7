#!/usr/bin/env bash
# Save/load throughput at 1, 2 and 4 ranks next to plain write+fsync/read, in one run.
# usage: bench/run.sh [GiB] [reps]   (results: bench/results/save_load.csv)
source "$(dirname "$0")/../launch/common.sh"
setup
build
GIB=${1:-1}; REPS=${2:-3}
mkdir -p "$DISTCKPT_ROOT/bench/results"
CSV=$DISTCKPT_ROOT/bench/results/save_load.csv
rm -f "$CSV" "$DISTCKPT_ROOT/bench/results/export.csv"
say "save/load benchmark: ${GIB} GiB state, median of $REPS, $(env -u OMP_NUM_THREADS nproc) cores, $(date -u +%F)"
for np in 1 2 4; do
  mpirun --oversubscribe -np $np "$BUILD_DIR/bench/save_load_bench" --gib "$GIB" --reps "$REPS" \
    --dir "${BENCH_DIR:-/tmp/distckpt-bench}" --csv "$CSV"
done
say "export benchmark: ${EXPORT_GIB:-4} GiB state, no tensor over 256 MiB"
"$BUILD_DIR/bench/export_bench" --gib "${EXPORT_GIB:-4}" --cli "$BUILD_DIR/distckpt" \
  --dir "${BENCH_DIR:-/tmp/distckpt-bench}-export" --csv "$DISTCKPT_ROOT/bench/results/export.csv"
say "asynchronous save: time blocked vs a synchronous save, step time with a save running"
for np in 1 4; do
  mpirun --oversubscribe -np $np "$BUILD_DIR/bench/async_bench" --gib "$GIB" \
    --dir "${BENCH_DIR:-/tmp/distckpt-bench}-async"
done
echo "CSV: $CSV"
