#!/usr/bin/env bash
# The Python side-by-side: distckpt's Python package and torch.distributed.checkpoint saving and
# loading the same state in the same mpirun job (bench/python_bench.py), at several rank
# counts, on the transformer mix and on 64 MiB tensors. Writes bench/results/python_dcp.jsonl
# and prints a Markdown table of medians.
# usage: bench/python_bench.sh [ranks, comma-separated] [reps]
source "$(dirname "$0")/../launch/common.sh"
setup
build
RANKS=${1:-1,2,4}; REPS=${2:-3}
OUT=$DISTCKPT_ROOT/bench/results/python_dcp.jsonl
WORK=${BENCH_DIR:-/tmp/distckpt-python-bench}
mkdir -p "$WORK" "$(dirname "$OUT")"
: >"$OUT"
export PYTHONPATH=$BUILD_DIR/python OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  OMP_NUM_THREADS=1
for state in transformer 64mib; do
  for np in ${RANKS//,/ }; do
    say "$state on $np rank(s)"
    mpirun -np "$np" --oversubscribe "$PYTHON" "$DISTCKPT_ROOT/bench/python_bench.py" "$state" \
      "$WORK" "$REPS" | tee -a "$OUT"
  done
done
rm -rf "$WORK"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
key = {(r["state"], r["ranks"], r["op"], r["tool"]): r for r in rows}
print("| state | ranks | op | distckpt GB/s | DCP GB/s | distckpt / DCP |")
print("|---|---|---|---|---|---|")
for (state, ranks, op, tool), r in sorted(key.items()):
    if tool != "distckpt":
        continue
    d = key[(state, ranks, op, "dcp")]
    print(f"| {state} | {ranks} | {op} | {r['gbps']:.2f} | {d['gbps']:.2f} | "
          f"{d['seconds'] / r['seconds']:.2f}x |")
PY
