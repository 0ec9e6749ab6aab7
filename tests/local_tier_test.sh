#!/usr/bin/env bash
# The local tier on real hosts: h1..h3 made by launch/cluster.sh, each with a private node-local
# directory at /mnt/distckpt-local that no other host can see; `cluster.sh kill HOST` ends every
# process of HOST and wipes that directory (its memory is lost with it). The demo trainer saves
# a local step every step (each rank file copied to the next host) and a persistent step every 5.
# - 3 hosts x 2 ranks to step 7, h2 lost: resumed on h1+h3 with 4 ranks and with 3 ranks from
#   local step 7 (not the persistent 5), reading no file of the persistent root;
# - the same with ZeRO-1 (the optimizer state sharded flat over the ranks), and with
#   asynchronous saves;
# - a corrupted local copy: its checksums fail, the other copy is used;
# - h2 and h3 lost (a host and its partner): falls back to persistent step 5, saying why;
# - 2 hosts grown to 3 from the local tier; `distckpt ls` and `inspect` of a host's local step;
# every final state (step 10) equal bit for bit to a run never stopped (`distckpt diff`).
# Skips (exit 77, with the reason) where network namespaces cannot be made.
# usage: local_tier_test.sh TRAIN DISTCKPT CLUSTER_SH
set -euo pipefail
train=$1; cli=$2; cluster=$3
base=${DISTCKPT_CLUSTER_LOCAL_BASE:-/tmp/distckpt-cluster-local}
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/local_tier.XXXXXX")
source "$(dirname "$0")/cluster_up.sh"
cluster_up 3
fail=0
local_root=/mnt/distckpt-local/ck
tier=(--local-root "$local_root" --local-every 1 --persist-every 5 --save-every 5
  --collective-timeout 30)
np_of() { echo $(( $(echo "$1" | tr ',' '\n' | cut -d: -f2 | paste -sd+) )); }
on() { timeout 300 "$cluster" mpirun --oversubscribe --host "$1" -np "$(np_of "$1")" "${@:2}"; }

# The reference: never stopped, one host, steps 1-10.
for zero in "" "--zero 1"; do
  name=ref${zero:+-zero}
  timeout 300 mpirun --oversubscribe -np 4 "$train" --ckpt-dir "$tmp/$name" --steps 10 \
    --save-every 10 $zero >/dev/null
done

# first LAYOUT CKPT [ARGS...]: trains on LAYOUT to step 7 with the local tier.
first() {
  local layout=$1 ckpt=$2
  shift 2
  for h in h1 h2 h3; do "$cluster" kill $h; done  # fresh node-local directories
  on "$layout" "$train" --ckpt-dir "$ckpt" --steps 7 "${tier[@]}" "$@" >"$tmp/first.out"
}

# resume LABEL LAYOUT CKPT EXPECT REF [ARGS...]: resumes on LAYOUT to step 10; the output must
# say EXPECT (a grep pattern) and the final state must equal REF's.
resume() {
  local label=$1 layout=$2 ckpt=$3 expect=$4 ref=$5
  shift 5
  if ! on "$layout" "$train" --ckpt-dir "$ckpt" --steps 10 "${tier[@]}" --resume "$@" \
    >"$tmp/out" 2>&1; then
    echo "FAIL $label: the resume failed"; cat "$tmp/out"; fail=1; return
  fi
  if ! grep -q "$expect" "$tmp/out"; then
    echo "FAIL $label: expected '$expect'"; cat "$tmp/out"; fail=1; return
  fi
  if ! "$cli" diff "$tmp/$ref/step-00000010" "$ckpt/step-00000010" --exclude rank_state/ \
    >"$tmp/diff" 2>&1; then
    echo "FAIL $label: the final state differs from a run never stopped"; cat "$tmp/diff"; fail=1
    return
  fi
  echo "ok   $label: $(grep '^resume:' "$tmp/out" | head -1)"
}

# keep / put: the node-local directories of the survivors, saved and put back between resumes.
keep() { rm -rf "$tmp/keep"; mkdir -p "$tmp/keep"; cp -a "$base"/. "$tmp/keep/"; }
put() { for h in h1 h2 h3; do rm -rf "${base:?}/$h"; cp -a "$tmp/keep/$h" "$base/$h"; done; }
fresh_copy() { rm -rf "$2"; cp -r "$1" "$2"; }

first h1:2,h2:2,h3:2 "$tmp/ck"
# What h1 holds: its own ranks' files and the copies of h3's (the host before it).
"$cli" ls "$base/h1/ck" >"$tmp/ls"
"$cli" inspect "$base/h1/ck/step-00000007" >"$tmp/inspect"
if grep -Eq '^7 .* yes +[0-9-]+ [0-9:]+ +local x2 ' "$tmp/ls" &&
   grep -q 'local tier: rank-00000.h5 on h1, h2' "$tmp/inspect" &&
   grep -q 'local tier: rank-00004.h5 on h3, h1' "$tmp/inspect" &&
   [ "$(ls "$base/h1/ck/step-00000007" | grep -c '^rank-')" = 4 ]; then
  echo "ok   ls and inspect of h1's local step 7: 2 copies of each file, h1 holds 4 of 6 files"
else
  echo "FAIL ls/inspect of a local step"; cat "$tmp/ls" "$tmp/inspect"; fail=1
fi
"$cluster" kill h2
keep
for layout in h1:2,h3:2 h1:2,h3:1; do
  put
  fresh_copy "$tmp/ck" "$tmp/ck-$layout"
  resume "h2 lost, resumed on $layout" "$layout" "$tmp/ck-$layout" \
    '^resume: local step 7 ' ref
  reads=$(grep 'of the persistent root opened for reading' "$tmp/out" || true)
  if [ -z "$reads" ] || echo "$reads" | grep -qv ': 0 file(s)'; then
    echo "FAIL h2 lost, $layout: the persistent root was read"; echo "$reads"; fail=1
  fi
done

first h1:2,h2:2,h3:2 "$tmp/ck-zero" --zero 1
"$cluster" kill h2
resume "ZeRO-1, h2 lost, resumed on h1:2,h3:2" h1:2,h3:2 "$tmp/ck-zero" \
  '^resume: local step 7 ' ref-zero --zero 1

# Asynchronous saves: the local steps written and copied in the background.
first h1:2,h2:2,h3:2 "$tmp/ck-async" --async
"$cluster" kill h2
resume "async saves, h2 lost, resumed on h1:2,h3:2" h1:2,h3:2 "$tmp/ck-async" \
  '^resume: local step 7 ' ref

# A flipped byte in h3's own copy of rank 4's file: h1's copy (h3's partner) is used.
first h1:2,h2:2,h3:2 "$tmp/ck-bad"
"$cluster" kill h2
victim="$base/h3/ck/step-00000007/rank-00004.h5"
size=$(stat -c %s "$victim")
printf '\xff' | dd of="$victim" bs=1 seek=$((size - 100)) conv=notrunc status=none
resume "a corrupted local copy on h3" h1:2,h3:2 "$tmp/ck-bad" \
  'rank-00004.h5 on h3 fails its checksums.*local step 7 ' ref

# A host and its partner lost: h2's files were copied only to h3.
first h1:2,h2:2,h3:2 "$tmp/ck-two"
"$cluster" kill h2
"$cluster" kill h3
resume "h2 and h3 lost" h1:2 "$tmp/ck-two" \
  '^resume: persistent step 5: .*no surviving copy of rank-0000[23].h5' ref

# Growing: saved on 2 hosts, resumed on 3 (h3 starts empty).
first h1:2,h2:2 "$tmp/ck-grow"
resume "grown from 2 hosts to 3" h1:2,h2:2,h3:2 "$tmp/ck-grow" '^resume: local step 7 ' ref

exit $fail
