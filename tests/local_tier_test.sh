#!/usr/bin/env bash
# The local tier on real hosts: h1..h3 made by launch/cluster.sh, each with a private node-local
# directory at /mnt/distckpt-local that no other host can see; `cluster.sh kill HOST` ends every
# process of HOST and wipes that directory (its memory is lost with it). The demo trainer saves
# a local step every step (each rank file copied to the next host) and a persistent step every 5.
# - 3 hosts x 2 ranks to step 7, h2 lost: resumed on h1+h3 with 4 ranks and with 3 ranks from
#   local step 7 (not the persistent 5), reading no file of the persistent root;
# - the same with ZeRO-1 (the optimizer state sharded flat over the ranks), and with
#   asynchronous saves;
# - corrupted local copies: their checksums fail (each found by the rank of its host that
#   verifies it), the other copies are used;
# - h2 and h3 lost (a host and its partner): falls back to persistent step 5, saying why;
# - 2 hosts grown to 3 from the local tier; `distckpt ls` and `inspect` of a host's local step;
# - a rank that cannot open its own file to send it (EIO) and a full disk (ENOSPC) under the copy
#   a rank receives, both on h2 in step 4 (through the LD_PRELOAD shim): every rank ends with the same
#   error naming rank, host and file, no host keeps a step 4, and local step 3 resumes;
# every final state (step 10) equal bit for bit to a run never stopped (`distckpt diff`).
# Skips (exit 77, with the reason) where network namespaces cannot be made.
# usage: local_tier_test.sh TRAIN DISTCKPT CLUSTER_SH KILL_SHIM
set -euo pipefail
train=$1; cli=$2; cluster=$3; shim=$4
# A sanitized build needs its runtime loaded before the shim (launch/sanitize.sh says which).
preload=${DISTCKPT_PRELOAD_FIRST:+$DISTCKPT_PRELOAD_FIRST:}$shim
base=${DISTCKPT_CLUSTER_LOCAL_BASE:-/tmp/distckpt-cluster-local}
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/local_tier.XXXXXX")
source "$(dirname "$0")/cluster_up.sh"
source "$(dirname "$0")/mpi_session.sh"
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
# say EXPECT (a grep pattern) and the final state must equal REF's. Its output goes to
# $scratch/out (a case running beside others sets its own scratch).
scratch=$tmp
resume() {
  local label=$1 layout=$2 ckpt=$3 expect=$4 ref=$5
  shift 5
  if ! on "$layout" "$train" --ckpt-dir "$ckpt" --steps 10 "${tier[@]}" --resume "$@" \
    >"$scratch/out" 2>&1; then
    echo "FAIL $label: the resume failed"; cat "$scratch/out"; fail=1; return
  fi
  if ! grep -q "$expect" "$scratch/out"; then
    echo "FAIL $label: expected '$expect'"; cat "$scratch/out"; fail=1; return
  fi
  if ! "$cli" diff "$tmp/$ref/step-00000010" "$ckpt/step-00000010" --exclude rank_state/ \
    >"$scratch/diff" 2>&1; then
    echo "FAIL $label: the final state differs from a run never stopped"; cat "$scratch/diff"
    fail=1; return
  fi
  echo "ok   $label: $(grep '^resume:' "$scratch/out" | head -1)"
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

# A flipped byte in h3's own copies of rank 4's and rank 5's files: h1's copies (h3's partner)
# are used. h3's two ranks share its files' verifying, one of them each.
first h1:2,h2:2,h3:2 "$tmp/ck-bad"
"$cluster" kill h2
for victim in "$base"/h3/ck/step-00000007/rank-0000[45].h5; do
  size=$(stat -c %s "$victim")
  printf '\xff' | dd of="$victim" bs=1 seek=$((size - 100)) conv=notrunc status=none
done
resume "corrupted local copies on h3" h1:2,h3:2 "$tmp/ck-bad" \
  'rank-00004.h5 on h3 fails its checksums.*rank-00005.h5 on h3 fails .*local step 7 ' ref

# A host and its partner lost: h2's files were copied only to h3.
first h1:2,h2:2,h3:2 "$tmp/ck-two"
"$cluster" kill h2
"$cluster" kill h3
resume "h2 and h3 lost" h1:2 "$tmp/ck-two" \
  '^resume: persistent step 5: .*no surviving copy of rank-0000[23].h5' ref

# Growing: saved on 2 hosts, resumed on 3 (h3 starts empty).
first h1:2,h2:2 "$tmp/ck-grow"
resume "grown from 2 hosts to 3" h1:2,h2:2,h3:2 "$tmp/ck-grow" '^resume: local step 7 ' ref

# io_fault NAME LABEL SAYS SHIM_ENV...: steps 1-3 on 3 hosts x 2 ranks with local root
# /mnt/distckpt-local/NAME, then steps 4-7 with the shim armed on rank 2 (on h2). The job must
# fail in step 4 with one error on every rank, naming rank 2, h2, the file the shim struck and
# SAYS (the errno's text); no host may hold a step 4; the resume continues from local step 3.
# The two cases run side by side in their own local roots and report in order.
io_fault() {
  local name=$1 label=$2 says=$3 envs=() rc
  shift 3
  for e in "$@"; do envs+=(-x "$e"); done
  scratch=$tmp/$name.d
  mkdir -p "$scratch"
  tier=(--local-root "/mnt/distckpt-local/$name" --local-every 1 --persist-every 5 --save-every 5
    --collective-timeout 30)
  local ck=$tmp/ck-$name mark=$scratch/mark out=$scratch/fault.out
  on h1:2,h2:2,h3:2 "$train" --ckpt-dir "$ck" --steps 3 "${tier[@]}" >/dev/null ||
    { echo "FAIL $label: steps 1-3"; return 1; }
  set +e
  on h1:2,h2:2,h3:2 -x LD_PRELOAD="$preload" -x KILL_RANK=2 -x KILL_SIGNAL=FAIL \
    -x KILL_MARK="$mark" "${envs[@]}" "$train" --ckpt-dir "$ck" --steps 7 "${tier[@]}" --resume \
    >"$out" 2>&1
  rc=$?
  set -e
  local file errors
  file=$(basename "$(cut -d' ' -f2- "$mark" 2>/dev/null || true)")
  errors=$(grep '^distckpt-train: rank [0-5]: ' "$out" | sed 's/^distckpt-train: rank [0-5]: //' ||
    true)
  if [ ! -e "$mark" ]; then
    echo "FAIL $label: the fault never struck (exit $rc)"; cat "$out"; return 1
  elif [ $rc -eq 0 ] || [ $rc -eq 124 ] || [ "$(echo "$errors" | wc -l)" -ne 6 ] ||
       [ "$(echo "$errors" | sort -u | wc -l)" -ne 1 ] ||
       ! echo "$errors" | grep -q "rank 2 (host h2)" || ! echo "$errors" | grep -qF "$file" ||
       ! echo "$errors" | grep -q "$says" || ls "$base"/h*/"$name" | grep -q '^step-00000004$'; then
    echo "FAIL $label: exit $rc, struck at '$(cat "$mark")'; expected one error on all 6 ranks" \
      "naming rank 2 (host h2), $file and '$says', and no step 4 on any host"
    cat "$out"; ls "$base"/h*/"$name"; return 1
  fi
  echo "ok   $label: every rank said: $(echo "$errors" | head -1)"
  resume "$label, then resumed" h1:2,h2:2,h3:2 "$ck" '^resume: local step 3 ' ref
  return $fail
}
{
  own_mpi_session
  io_fault eio "rank 2 cannot open its own file of local step 4 to send it (h2)" \
    "Input/output error" KILL_ON_OPEN=read 'KILL_PATH_PART=*/.tmp-step-00000004-*/*rank-00002.h5*'
} >"$tmp/eio.report" &
{
  own_mpi_session
  io_fault nospc "h2's disk full under the copy of rank 0's file it receives" \
    "No space left on device" KILL_ERRNO=ENOSPC KILL_AFTER_BYTES=4096 \
    'KILL_PATH_PART=*/.tmp-step-00000004-*/*rank-00000.h5*'
} >"$tmp/nospc.report" &
wait -n || fail=1
wait -n || fail=1
cat "$tmp"/eio.report "$tmp"/nospc.report

exit $fail
