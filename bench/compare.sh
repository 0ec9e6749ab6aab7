#!/usr/bin/env bash
# Side by side in one run, the tools interleaved round by round (median of the rounds): distckpt, PyTorch DCP (gloo, FileSystemWriter with fsync, 1 thread and
# default threads), torch.save/torch.load (one process) and the raw storage limit, on the same
# state (float32 tensors of 64 MiB), at several sizes and rank counts. Writes
# bench/results/compare.csv, compare.md and compare.png.
# Then, at the largest size: a load re-sharded from 4 ranks onto 2 (distckpt and DCP), and the
# export of that checkpoint to one .pt (distckpt export against dcp_to_torch_save), with time
# and peak resident memory. Combinations that would not fit in memory are skipped and said so.
# usage: bench/compare.sh [sizes in GiB, comma-separated] [ranks, comma-separated] [reps]
source "$(dirname "$0")/../launch/common.sh"
setup
build
"$PYTHON" -c 'import matplotlib' 2>/dev/null || pip_install matplotlib
SIZES=${1:-0.25,1}; RANKS=${2:-1,2,4}; REPS=${3:-3}
OUT=$DISTCKPT_ROOT/bench/results
mkdir -p "$OUT"
# PARTS=reshard re-runs only the re-shard/export part and keeps the main part's results.
PARTS=${PARTS:-main,reshard}
if [[ $PARTS == *main* ]]; then
  rm -f "$OUT/compare-distckpt.csv" "$OUT/compare-torch.jsonl" "$OUT/compare-reshard.csv"
else
  rm -f "$OUT/compare-reshard.csv"
  grep -v -E '"op": "(re-sharded load|export to one .pt)"' "$OUT/compare-torch.jsonl" \
    >"$OUT/compare-torch.tmp" || true
  mv "$OUT/compare-torch.tmp" "$OUT/compare-torch.jsonl"
fi
B=${BENCH_DIR:-/tmp/distckpt-bench}
mem_gib=$(awk '/MemAvailable/ {print int($2 / 1048576)}' /proc/meminfo)
# fits GiB RANKS [STATES_PER_RANK]: the main runs hold the state, a staging copy and a slice per
# rank (2 + 1/N states); the re-shard runs at most 1.1 (saving on 4) or 2.1 (loading on 2).
fits() {
  awk -v g="$1" -v n="$2" -v f="${3:-0}" -v m="$mem_gib" \
    'BEGIN {if (f == 0) f = 2 + 1 / n; exit !(g * n * f < 0.85 * m)}'
}
say "comparison: sizes ${SIZES} GiB, ranks ${RANKS}, median of ${REPS}, $(date -u +%F)"
for gib in ${SIZES//,/ }; do
  [[ $PARTS == *main* ]] || break
  for np in ${RANKS//,/ }; do
    if ! fits "$gib" "$np"; then
      echo "-- ${gib} GiB on ${np} rank(s): skipped, needs about $(awk -v g="$gib" -v n="$np" \
        'BEGIN {printf "%.0f", g * n * (2 + 1 / n)}') GiB of memory, over 85% of the ${mem_gib} GiB available"
      continue
    fi
    echo "-- ${gib} GiB on ${np} rank(s)"
    # Rounds interleave the tools (and alternate which goes first): this disk's speed drifts
    # by several times within minutes, so a tool's reps must not all fall in one stretch.
    for round in $(seq 1 "$REPS"); do
      ours() {
        mpirun --oversubscribe -np "$np" "$BUILD_DIR/bench/save_load_bench" --gib "$gib" --reps 1 \
          --round "$round" --dir "$B" --csv "$OUT/compare-distckpt.csv" | sed 's/^/   /'
      }
      theirs() {
        mpirun --oversubscribe -np "$np" -x MASTER_PORT=$((29500 + np)) "$PYTHON" \
          "$DISTCKPT_ROOT/bench/dcp_worker.py" --gib "$gib" --reps 1 \
          --dir "$B-dcp" >>"$OUT/compare-torch.jsonl"
      }
      if [ $((round % 2)) = 1 ]; then ours; theirs; else theirs; ours; fi
    done
  done
done
gib=${RESHARD_GIB:-${SIZES##*,}}
if fits "$gib" 4 1.1 && fits "$gib" 2 2.1; then
  echo "-- ${gib} GiB saved on 4 ranks, loaded on 2; exported to one .pt"
  mpirun --oversubscribe -np 4 "$BUILD_DIR/bench/save_load_bench" --gib "$gib" \
    --save-only "$B-reshard/distckpt" | sed 's/^/   /'
  mpirun --oversubscribe -np 4 -x MASTER_PORT=29511 "$PYTHON" "$DISTCKPT_ROOT/bench/dcp_worker.py" \
    --gib "$gib" --save-only "$B-reshard/dcp"
  mpirun --oversubscribe -np 2 "$BUILD_DIR/bench/save_load_bench" --gib "$gib" --reps "$REPS" \
    --load-only "$B-reshard/distckpt" --csv "$OUT/compare-reshard.csv" | sed 's/^/   /'
  mpirun --oversubscribe -np 2 -x MASTER_PORT=29512 "$PYTHON" "$DISTCKPT_ROOT/bench/dcp_worker.py" \
    --gib "$gib" --reps "$REPS" --load-only "$B-reshard/dcp" >>"$OUT/compare-torch.jsonl"
  "$PYTHON" "$DISTCKPT_ROOT/bench/export_compare.py" "$BUILD_DIR/distckpt" "$B-reshard/distckpt" \
    "$B-reshard/dcp" "$B-reshard/export" >>"$OUT/compare-torch.jsonl"
  rm -rf "$B-reshard"
else
  echo "-- re-sharded load and export at ${gib} GiB: skipped, not enough memory for 4 ranks"
fi
"$PYTHON" "$DISTCKPT_ROOT/bench/report.py" "$OUT"
