#!/usr/bin/env bash
# Scale, side by side in one run (bench/results/scale.{csv,md,png}, scale-mix.csv, scale.log):
# 1. The tensor-count sweep: N float32 tensors of 16 elements, replicated, on 4 ranks: distckpt
#    (save, coordination time of the first and of a repeated save, load, bytes on disk) and
#    PyTorch DCP (save, repeated save, load, bytes on disk) up to DCP_MAX_TENSORS (default
#    100000; DCP takes minutes per 100k tensors here).
# 2. Bytes on disk over tensor bytes for 12000 tensors of 768 floats and 300 tensors of 1 MiB.
# 3. The realistic mix (bench/transformer_shapes.py: a GPT-2-small-sized transformer with its
#    AdamW state, 592 tensors, 1.49 GB) on 1, 2 and 4 ranks: distckpt save, whole-state load and
#    1/N load against plain write+fsync and read of the same bytes, interleaved round by round;
#    DCP save and whole-state load on the same shapes.
# Every tool's loaded tensors are compared with what it saved.
# usage: bench/scale.sh [tensor counts, comma-separated] [ranks for the mix] [rounds]
source "$(dirname "$0")/../launch/common.sh"
setup
build
"$PYTHON" -c 'import matplotlib' 2>/dev/null || pip_install matplotlib
COUNTS=${1:-1000,10000,100000,1000000}; MIX_RANKS=${2:-1,2,4}; ROUNDS=${3:-3}
DCP_MAX=${DCP_MAX_TENSORS:-100000}
OUT=$DISTCKPT_ROOT/bench/results
B=${BENCH_DIR:-/tmp/distckpt-scale}
mkdir -p "$OUT" "$B"
rm -f "$OUT/scale.csv" "$OUT/scale-mix.csv" "$OUT/scale-dcp.jsonl" "$OUT/scale-disk.csv"
say "scale: tensor counts ${COUNTS} on 4 ranks; mix on ${MIX_RANKS} rank(s), ${ROUNDS} rounds; $(date -u +%F)"
for n in ${COUNTS//,/ }; do
  echo "-- ${n} tensors"
  mpirun --oversubscribe -np 4 "$BUILD_DIR/bench/scale_bench" --tensors "$n" --dir "$B/ours" \
    --csv "$OUT/scale.csv" | sed 's/^/   /'
  if [ "$n" -le "$DCP_MAX" ]; then
    mpirun --oversubscribe -np 4 "$PYTHON" "$DISTCKPT_ROOT/bench/dcp_scale.py" --tensors "$n" \
      --dir "$B/dcp" 2>/dev/null | tee -a "$OUT/scale-dcp.jsonl" | sed 's/^/   /'
  else
    echo "   DCP: skipped above ${DCP_MAX} tensors (DCP_MAX_TENSORS)"
  fi
done
echo "-- bytes on disk: 12000 tensors of 768 floats; 300 tensors of 1 MiB"
for shape in 12000:768 300:262144; do
  mpirun --oversubscribe -np 4 "$BUILD_DIR/bench/scale_bench" --tensors "${shape%:*}" \
    --elems "${shape#*:}" --dir "$B/ours" --csv "$OUT/scale-disk.csv" | sed 's/^/   /'
done
"$PYTHON" "$DISTCKPT_ROOT/bench/transformer_shapes.py" >"$B/shapes.json"
for np in ${MIX_RANKS//,/ }; do
  echo "-- the realistic mix on ${np} rank(s)"
  mpirun --oversubscribe -np "$np" "$BUILD_DIR/bench/mix_bench" --shapes "$B/shapes.json" \
    --rounds "$ROUNDS" --dir "$B/mix" --csv "$OUT/scale-mix.csv" | sed 's/^/   /'
  mpirun --oversubscribe -np "$np" "$PYTHON" "$DISTCKPT_ROOT/bench/dcp_scale.py" \
    --shapes "$B/shapes.json" --dir "$B/dcp" 2>/dev/null | tee -a "$OUT/scale-dcp.jsonl" |
    sed 's/^/   /'
done
rm -rf "$B"
"$PYTHON" "$DISTCKPT_ROOT/bench/report_scale.py" "$OUT"
