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
# - live export gathered from 3 hosts; async saves across 2 hosts;
# - no hang: rank 1 on host h2 stopped (SIGSTOP) in the middle of a save, of an async save and of
#   a load; the link of h2 cut during a save; h2 killed whole (every process in it) during a save.
#   Each job ends within a stated bound of the moment of the fault, naming rank 1 and host h2 (the
#   collective deadline) or host h2 (Open MPI's launcher, which sees a lost host first); the
#   older checkpoint stays the latest and a resume on the surviving hosts h1 and h3 is exact.
# usage: multinode_test.sh TRAIN COORDINATOR_TEST CLUSTER_SH KILL_SHIM EXPORT_TEST ASYNC_TEST
set -euo pipefail
train=$1; coordinator=$2; cluster=$3; shim=$4; export_test=$5; async_test=$6
# A sanitized build needs its runtime loaded before the shim (launch/sanitize.sh says which).
preload=${DISTCKPT_PRELOAD_FIRST:+$DISTCKPT_PRELOAD_FIRST:}$shim
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/multinode.XXXXXX")
source "$(dirname "$0")/cluster_up.sh"
source "$(dirname "$0")/mpi_session.sh"
cluster_up 3
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

for t in "$export_test h1:1,h2:1,h3:1 3" "$async_test h1:1,h2:1 2"; do
  set -- $t
  if on --host "$2" -np "$3" "$1" >"$tmp/gtest.log" 2>&1; then
    echo "ok   $(basename "$1") on $2"
  else
    echo "FAIL $(basename "$1") on $2"; tail -30 "$tmp/gtest.log"; fail=1
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

# Faults on host h2 (rank 1 of h1:1,h2:1,h3:1), struck through the LD_PRELOAD shim.
timeout 300 mpirun --oversubscribe -np 4 "$train" --ckpt-dir "$tmp/ref-fault" --steps 6 \
  --save-every 0 | grep '^step' >"$tmp/ref-fault.steps"

# resume_survivors DIR LABEL: a resume on h1 and h3 starts from step 2 and matches the reference.
resume_survivors() {
  local out=$1.resume.out
  on --host h1:1,h3:1 -np 2 "$train" --ckpt-dir "$1" --steps 6 --save-every 2 --resume >"$out"
  if grep -q '^resumed from .*step-00000002' "$out" &&
     diff <(grep '^step' "$out") <(tail -4 "$tmp/ref-fault.steps") >/dev/null; then
    echo "ok   $2: resumed on the surviving hosts h1 and h3 from step 2, steps 3-6 identical"
  else
    echo "FAIL $2: resume on h1 and h3"; cat "$out"; fail=1
  fi
}

# strike DIR LABEL ACTION PATTERN BOUND SHIM_ENV... -- TRAIN_ARGS...: runs the trainer on three
# hosts with the shim armed on rank 1, in checkpoint directory DIR; when the shim strikes, runs
# ACTION (a cluster.sh command, or "-"); the job must fail within BOUND seconds of the strike
# with PATTERN in its output (left in DIR.strike.out).
strike() {
  local dir=$1 label=$2 action=$3 pattern=$4 bound=$5 envs=() rc took
  shift 5
  while [ "$1" != -- ]; do envs+=(-x "$1"); shift; done
  shift
  local mark=$dir.mark out=$dir.strike.out
  rm -f "$mark"
  set +e
  on --host h1:1,h2:1,h3:1 -np 3 -x LD_PRELOAD="$preload" -x KILL_RANK=1 -x KILL_MARK="$mark" \
    "${envs[@]}" "$train" --ckpt-dir "$dir" "$@" >"$out" 2>&1 &
  local job=$!
  for _ in $(seq 1200); do [ -e "$mark" ] || ! kill -0 $job 2>/dev/null && break; sleep 0.1; done
  local struck
  struck=$(date +%s.%N)
  [ "$action" = - ] || "$cluster" $action
  wait $job
  rc=$?
  set -e
  took=$(awk -v a="$struck" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  if [ ! -e "$mark" ]; then
    echo "FAIL $label: the fault never struck (exit $rc)"; cat "$out"; fail=1
  elif [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "$pattern" "$out" &&
       awk -v t="$took" -v b="$bound" 'BEGIN {exit !(t < b)}'; then
    echo "ok   $label: the job ended ${took} s after the fault (bound ${bound} s), saying: $(grep -m1 -o "$pattern" "$out")"
  else
    echo "FAIL $label: exit $rc after ${took} s (bound ${bound} s), expected '$pattern'"
    cat "$out"; fail=1
  fi
}

named='rank 1 (host h2) did not arrive'
deadline=5
# stop_case DIR KIND: rank 1 on h2 stopped mid-save, mid-async save or mid-load, then a resume on
# the survivors. The three cases run side by side (mostly waiting for the deadline), each in its
# own directory, and report in order; the load case starts from a step 2 committed on 3 hosts.
stop_case() {
  local dir=$1 kind=$2
  if [ "$kind" = load ]; then
    on --host h1:1,h2:1,h3:1 -np 3 "$train" --ckpt-dir "$dir" --steps 2 --save-every 2 >/dev/null ||
      { echo "FAIL the run that commits step 2 for the load case"; return 1; }
    strike "$dir" "rank 1 on h2 stopped mid-load (deadline ${deadline} s)" - "$named" 15 \
      KILL_SIGNAL=STOP KILL_ON_OPEN=1 KILL_PATH_PART=step-00000002/ -- \
      --steps 6 --save-every 2 --resume --collective-timeout $deadline
  else
    local async=; [ "$kind" = asyncsave ] && async=--async
    strike "$dir" "rank 1 on h2 stopped mid-${kind/async/async } (deadline ${deadline} s)" - \
      "$named" 15 KILL_SIGNAL=STOP KILL_PATH_PART=.tmp-step-00000004 KILL_AFTER_BYTES=4096 -- \
      --steps 6 --save-every 2 --collective-timeout $deadline $async
  fi
  [ "$(grep -c "$named" "$dir.strike.out")" -ge 2 ] ||
    { echo "FAIL the ranks on h1 and h3 should both name rank 1 (host h2)"; fail=1; }
  resume_survivors "$dir" "after the stop mid-${kind/async/async }"
  return $fail
}
for kind in save asyncsave load; do
  { own_mpi_session; stop_case "$tmp/stop-$kind" $kind; } >"$tmp/stop-$kind.report" &
done
for kind in save asyncsave load; do
  wait -n || fail=1
done
cat "$tmp"/stop-{save,asyncsave,load}.report

# The link cut while rank 1 pauses in its write: Open MPI's launcher notices the silent host by
# TCP keepalive (cluster.sh sets it to a few seconds) and ends the job before the deadline.
strike "$tmp/link" "link of h2 cut mid-save" "link h2 down" "on node h2" 20 \
  KILL_SIGNAL=PAUSE KILL_PAUSE_SECONDS=60 KILL_PATH_PART=.tmp-step-00000004 -- \
  --steps 6 --save-every 2 --collective-timeout 30
"$cluster" link h2 up
"$cluster" kill h2
resume_survivors "$tmp/link" "after the cut link"

strike "$tmp/hostkill" "host h2 killed mid-save" "kill h2" "connection to h2 closed" 15 \
  KILL_SIGNAL=HANG KILL_PATH_PART=.tmp-step-00000004 -- \
  --steps 6 --save-every 2 --collective-timeout $deadline
resume_survivors "$tmp/hostkill" "after h2 died"
exit $fail
