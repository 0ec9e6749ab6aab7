#!/usr/bin/env bash
# The local tier against the persistent root on 3 hosts x 1 rank (launch/cluster.sh), with GPT-2
# small and its AdamW state (bench/transformer_shapes.py) on every rank: the time a save blocks
# training, then the time to resume on the 2 survivors after host h3 is lost. Node-local roots
# on tmpfs (/dev/shm), the persistent root on this machine's disk. Appends to
# bench/results/local_tier.log. usage: bench/local_tier.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}; rounds=${2:-3}
export DISTCKPT_CLUSTER_LOCAL_BASE=/dev/shm/distckpt-bench-local
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cluster=$here/launch/cluster.sh
work=$(mktemp -d /tmp/local_tier_bench.XXXXXX)
trap '"$cluster" down; rm -rf "$work" "$DISTCKPT_CLUSTER_LOCAL_BASE"' EXIT
"$cluster" up 3 >/dev/null
python3 "$here/bench/transformer_shapes.py" >"$work/shapes.json"
args=(--shapes "$work/shapes.json" --dir "$work/persistent" --local /mnt/distckpt-local/bench)
log=$here/bench/results/local_tier.log
{
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc --all) cores; bench/local_tier.sh $rounds"
  "$cluster" mpirun --oversubscribe --host h1:1,h2:1,h3:1 -np 3 "$build/bench/local_tier_bench" \
    save "${args[@]}" --rounds "$rounds"
  "$cluster" kill h3
  "$cluster" mpirun --oversubscribe --host h1:1,h2:1 -np 2 "$build/bench/local_tier_bench" \
    resume "${args[@]}" --rounds "$rounds"
} | tee -a "$log"
