#!/usr/bin/env bash
# Several machines for real: hosts h1..h3 made by launch/cluster.sh (network namespaces on a
# bridge, each with its own hostname), ranks launched into them by mpirun through an rsh agent,
# TCP between hosts and shared memory within one, one file system for all.
# - the ranks see distinct hosts;
# - the coordinator suite on 3 hosts x 1 rank and 2 hosts x 2 ranks (read-once loading on by
#   default across hosts, bytes read summed over ranks 1.0x the checkpoint);
# - the trainer saved on 2 hosts x 2 ranks, with and without ZeRO-1, resumed on 3 hosts x 1 rank
#   and on 1 host x 2 ranks: every later loss identical to a run never stopped.
# Skips (exit 77, with the reason) where network namespaces cannot be made.
# - a rank on host h2 stopped (SIGSTOP) in the middle of a save: the ranks on h1 and h3 name
#   rank 1 and host h2 and end the job within the collective deadline; the older checkpoint
#   stays the latest and a resume on the surviving hosts is exact.
# usage: multinode_test.sh TRAIN COORDINATOR_TEST CLUSTER_SH KILL_SHIM
set -euo pipefail
train=$1; coordinator=$2; cluster=$3; shim=$4
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/multinode.XXXXXX")
set +e
"$cluster" up 3 >"$tmp/up.log" 2>&1
rc=$?
set -e
if [ $rc -eq 77 ]; then
  echo "SKIP: $(cat "$tmp/up.log")"; rm -rf "$tmp"; exit 77
fi
[ $rc -eq 0 ] || { cat "$tmp/up.log"; exit 1; }
trap '"$cluster" down; rm -rf "$tmp"' EXIT
on() { timeout 300 "$cluster" mpirun --oversubscribe "$@"; }
fail=0

hosts=$(on --host h1:2,h2:2 -np 4 hostname | sort | tr '\n' ' ')
if [ "$hosts" = "h1 h1 h2 h2 " ]; then
  echo "ok   ranks on 2 hosts: $hosts"
else
  echo "FAIL ranks should run on h1 h1 h2 h2, ran on: $hosts"; fail=1
fi

for layout in h1:1,h2:1,h3:1 h1:2,h2:2; do
  np=$(( $(echo "$layout" | tr ',' '\n' | cut -d: -f2 | paste -sd+) ))
  if on --host "$layout" -np "$np" "$coordinator" >"$tmp/coord.log" 2>&1; then
    echo "ok   coordinator suite on $layout ($np ranks)"
  else
    echo "FAIL coordinator suite on $layout"; tail -30 "$tmp/coord.log"; fail=1
  fi
done

run_ref() { timeout 300 mpirun --oversubscribe -np 4 "$train" "$@"; }
for zero in "" "--zero 1"; do
  name=${zero:+zero1}; name=${name:-plain}
  run_ref --ckpt-dir "$tmp/ref-$name" --steps 12 --save-every 0 $zero | grep '^step' >"$tmp/ref"
  on --host h1:2,h2:2 -np 4 "$train" --ckpt-dir "$tmp/ck-$name" --steps 6 --save-every 3 $zero |
    grep '^step' >"$tmp/first"
  diff <(head -6 "$tmp/ref") "$tmp/first" >/dev/null ||
    { echo "FAIL $name: the first half on 2 hosts differs"; fail=1; }
  for layout in h1:1,h2:1,h3:1 h1:2; do
    np=$(( $(echo "$layout" | tr ',' '\n' | cut -d: -f2 | paste -sd+) ))
    rm -rf "$tmp/ck-$name-$np"; cp -r "$tmp/ck-$name" "$tmp/ck-$name-$np"
    on --host "$layout" -np "$np" "$train" --ckpt-dir "$tmp/ck-$name-$np" --steps 12 \
      --save-every 3 --resume $zero >"$tmp/out"
    if grep -q '^resumed from .*step-00000006' "$tmp/out" &&
       diff <(grep '^step' "$tmp/out") <(tail -6 "$tmp/ref") >/dev/null; then
      echo "ok   $name: saved on 2 hosts x 2 ranks, resumed on $layout: steps 7-12 identical"
    else
      echo "FAIL $name: resumed on $layout"; cat "$tmp/out"; fail=1
    fi
  done
done

# A stalled rank on another host.
timeout 300 mpirun --oversubscribe -np 4 "$train" --ckpt-dir "$tmp/ref-stop" --steps 6 \
  --save-every 0 | grep '^step' >"$tmp/ref"
start=$(date +%s.%N)
set +e
on --host h1:1,h2:1,h3:1 -np 3 -x LD_PRELOAD="$shim" -x KILL_RANK=1 -x KILL_SIGNAL=STOP \
  -x KILL_PATH_PART=.tmp-step-00000004 -x KILL_AFTER_BYTES=4096 "$train" --ckpt-dir "$tmp/stop" \
  --steps 6 --save-every 2 --collective-timeout 5 >"$tmp/stop.out" 2>&1
rc=$?
set -e
took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
named=$(grep -c 'rank 1 (host h2) did not arrive' "$tmp/stop.out" || true)
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$named" -ge 2 ] && awk -v t="$took" 'BEGIN {exit !(t < 60)}'; then
  echo "ok   rank 1 stopped on h2 mid-save: the ranks on h1 and h3 named it and its host; the job ended ${took} s after start (deadline 5 s)"
else
  echo "FAIL stopped rank on h2: exit $rc after ${took} s, named by $named rank(s)"; cat "$tmp/stop.out"; fail=1
fi
on --host h1:1,h3:1 -np 2 "$train" --ckpt-dir "$tmp/stop" --steps 6 --save-every 2 --resume >"$tmp/out"
if grep -q '^resumed from .*step-00000002' "$tmp/out" &&
   diff <(grep '^step' "$tmp/out") <(tail -4 "$tmp/ref") >/dev/null; then
  echo "ok   resumed on the surviving hosts h1 and h3 from step 2: steps 3-6 identical"
else
  echo "FAIL resume on h1 and h3 after the stall"; cat "$tmp/out"; fail=1
fi
exit $fail
