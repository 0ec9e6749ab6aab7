#!/usr/bin/env bash
# Faults with the real trainer and the real OS: a rank killed by SIGKILL mid-write, a file-size
# limit (EFBIG) during a save, a damaged newest checkpoint at resume, and retention.
set -uo pipefail
train=$1; cli=$2; mpirun=$3
shim=${DISTCKPT_KILL_SHIM:?the kill shim (tests/kill_shim.c) is built by CMake}
# A sanitized build needs its runtime loaded before the shim (launch/sanitize.sh says which).
preload=${DISTCKPT_PRELOAD_FIRST:+$DISTCKPT_PRELOAD_FIRST:}$shim
source "$(dirname "$0")/mpi_session.sh"
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/fault.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
run() { local np=$1; shift; timeout -k 10 120 "$mpirun" -np "$np" --oversubscribe "$train" "$@"; }
# run_with NP MPIRUN-OPTIONS... -- TRAINER-ARGS: mpirun options before the program.
run_with() { local np=$1; shift; timeout -k 10 120 "$mpirun" -np "$np" --oversubscribe "$@"; }

"$mpirun" -np 2 --oversubscribe "$train" --ckpt-dir "$tmp/ref" --steps 6 --save-every 0 | grep '^step' >"$tmp/ref.txt"

# 1. Rank 1 of 3 dies by SIGKILL after 4 KiB of tensor data of the step-4 checkpoint (the shim
#    wraps pwrite from outside the trainer).
run_with 3 -x LD_PRELOAD="$preload" -x KILL_RANK=1 -x KILL_PATH_PART=.tmp-step-00000004 \
  -x KILL_AFTER_BYTES=4096 -x KILL_MARK="$tmp/k.mark" "$train" --ckpt-dir "$tmp/k" --steps 6 \
  --save-every 2 >"$tmp/k.out" 2>&1
rc=$?
check "the shim struck rank 1" "[ -e '$tmp/k.mark' ]"
check "a rank killed mid-save ends the job (exit $rc), no hang" "[ $rc -ne 0 ] && [ $rc -ne 124 ]"
"$cli" ls "$tmp/k" >"$tmp/ls"; cat "$tmp/ls"
check "the half-written step 4 is not listed as committed" "! grep -Eq '^4 .* yes ' '$tmp/ls'"
check "the previous checkpoint (step 2) is committed and verifies" "'$cli' verify '$tmp/k/step-00000002' >/dev/null"
check "latest is still step 2" "[ \"\$('$cli' latest '$tmp/k')\" = '$tmp/k/step-00000002' ]"
run 2 --ckpt-dir "$tmp/k" --steps 6 --save-every 2 --resume >"$tmp/k2.out" 2>&1
check "resume from step 2 on 2 ranks continues the uninterrupted run exactly" \
  "diff <(grep '^step' '$tmp/k2.out') <(tail -4 '$tmp/ref.txt') >/dev/null"
check "the next save removed the leftover" "! ls -a '$tmp/k' | grep -q '^.tmp-'"

# 1c. Rank 1's storage stalls: blocked forever inside pwrite, then inside fsync, of step 4.
#     Both cases run beside 1b (all three mostly wait for the deadline) and report after it.
stall_case() {
  local mode=$1 start rc took
  start=$(date +%s.%N)
  run_with 3 -x LD_PRELOAD="$preload" -x KILL_RANK=1 -x KILL_SIGNAL=$mode \
    -x KILL_PATH_PART=.tmp-step-00000004 -x KILL_AFTER_BYTES=4096 -x KILL_MARK="$tmp/h-$mode.mark" \
    "$train" --ckpt-dir "$tmp/h-$mode" --steps 6 --save-every 2 --collective-timeout 5 \
    >"$tmp/h-$mode.out" 2>&1
  rc=$?
  check "the shim stalled rank 1 ($mode)" "[ -e '$tmp/h-$mode.mark' ]"
  took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  check "storage stalled in $(echo ${mode#HANG} | tr -d _ | tr A-Z a-z | sed 's/^$/pwrite/') on rank 1: the job ends after ${took} s (exit $rc), naming it" \
    "[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q 'rank 1 (host $(hostname)) did not arrive' '$tmp/h-$mode.out' && awk -v t=$took 'BEGIN {exit !(t < 40)}'"
  check "  and step 2 is still the latest" "[ \"\$('$cli' latest '$tmp/h-$mode')\" = '$tmp/h-$mode/step-00000002' ]"
}
for mode in HANG HANG_FSYNC; do
  { own_mpi_session; stall_case $mode; } >"$tmp/h-$mode.report" &
done

# 1b. Rank 1 of 3 stops (SIGSTOP) in the middle of writing step 4: with a 5 s collective
#     deadline, the other ranks name it and its host and end the job instead of waiting forever.
start=$(date +%s.%N)
run_with 3 -x LD_PRELOAD="$preload" -x KILL_RANK=1 -x KILL_SIGNAL=STOP \
  -x KILL_PATH_PART=.tmp-step-00000004 -x KILL_AFTER_BYTES=4096 -x KILL_MARK="$tmp/s.mark" \
  "$train" --ckpt-dir "$tmp/s" --steps 6 --save-every 2 --collective-timeout 5 >"$tmp/s.out" 2>&1
rc=$?
check "the shim stopped rank 1" "[ -e '$tmp/s.mark' ]"
took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
grep 'did not arrive' "$tmp/s.out" | head -n 2
echo "     the job ended ${took} s after it started (the stop came at the step-4 save)"
check "a stopped rank ends the job (exit $rc), no hang" "[ $rc -ne 0 ] && [ $rc -ne 124 ]"
check "within the deadline plus launch and training time (under 40 s)" "awk -v t=$took 'BEGIN {exit !(t < 40)}'"
check "the waiting ranks name rank 1 and its host" \
  "grep -q 'rank 1 (host $(hostname)) did not arrive at the next collective step' '$tmp/s.out'"
check "the previous checkpoint (step 2) is still the latest and verifies" \
  "[ \"\$('$cli' latest '$tmp/s')\" = '$tmp/s/step-00000002' ] && '$cli' verify '$tmp/s/step-00000002' >/dev/null"
run 2 --ckpt-dir "$tmp/s" --steps 6 --save-every 2 --resume >"$tmp/s2.out" 2>&1
check "resume on 2 ranks after the stopped rank continues exactly" \
  "diff <(grep '^step' '$tmp/s2.out') <(tail -4 '$tmp/ref.txt') >/dev/null"

wait
cat "$tmp/h-HANG.report" "$tmp/h-HANG_FSYNC.report"
grep -q '^FAIL' "$tmp"/h-*.report && fail=1

# 2. A file-size limit hits during the step-4 save: EFBIG on every writing rank.
run 2 --ckpt-dir "$tmp/f" --steps 2 --save-every 2 >/dev/null 2>&1
# The limit applies to the ranks only (mpirun itself must stay able to write its session files).
timeout -k 10 120 "$mpirun" -np 2 --oversubscribe bash -c 'ulimit -f 16; exec "$0" "$@"' "$train" \
  --ckpt-dir "$tmp/f" --steps 4 --save-every 2 --resume >"$tmp/f.out" 2>&1
rc=$?
grep 'distckpt-train: rank' "$tmp/f.out" | head -n 2
check "a save over the file-size limit fails (exit $rc)" "[ $rc -ne 0 ] && [ $rc -ne 124 ]"
check "every rank reports the same error naming the file" \
  "[ \$(grep 'distckpt-train: rank' '$tmp/f.out' | sed 's/^distckpt-train: rank [0-9]*: //' | sort -u | wc -l) -eq 1 ] && grep -q 'File too large' '$tmp/f.out' && grep -q 'rank-0000[01].h5' '$tmp/f.out'"
check "nothing was committed and step 2 still verifies" \
  "[ ! -d '$tmp/f/step-00000004' ] && '$cli' verify '$tmp/f/step-00000002' >/dev/null"

# 3. The newest checkpoint is damaged: resume falls back to the one before and says so.
run 2 --ckpt-dir "$tmp/d" --steps 4 --save-every 2 >/dev/null 2>&1
file=$(ls "$tmp/d/step-00000004"/rank-*.h5 | head -n 1)
offset=$("$cli" inspect "$tmp/d/step-00000004" --json | python3 -c '
import json, sys
m = json.load(sys.stdin)
s = next(s for t in m["tensors"] for s in t["shards"] if s["file"] == sys.argv[1] and s["flat_count"] > 64)
print(s["byte_offset"] + 17)' "$(basename "$file")")
python3 -c "
f = open('$file', 'r+b'); f.seek($offset); b = f.read(1); f.seek($offset); f.write(bytes([b[0] ^ 1]))"
run 2 --ckpt-dir "$tmp/d" --steps 6 --save-every 0 --resume >"$tmp/d.out" 2>&1
check "resume skips the damaged step 4, says so, and resumes from step 2" \
  "grep -q 'step-00000004 is damaged' '$tmp/d.out' && grep -q 'resumed from .*step-00000002' '$tmp/d.out'"
check "and continues the run exactly" "diff <(grep '^step' '$tmp/d.out') <(tail -4 '$tmp/ref.txt') >/dev/null"
check "distckpt latest --verified names step 2" \
  "[ \"\$('$cli' latest '$tmp/d' --verified 2>/dev/null)\" = '$tmp/d/step-00000002' ]"

# 4. Retention in the trainer, then gc from the command line.
run 2 --ckpt-dir "$tmp/r" --steps 10 --save-every 1 --keep-last 3 >/dev/null 2>&1
check "--keep-last 3 keeps the three newest" "[ \"\$(ls '$tmp/r' | tr '\n' ' ')\" = 'step-00000008 step-00000009 step-00000010 ' ]"
mkdir -p "$tmp/r/.tmp-step-00000011-00000000"
"$cli" gc "$tmp/r" --keep-last 1 >/dev/null
check "gc --keep-last 1 removes leftovers and older checkpoints" "[ \"\$(ls -A '$tmp/r' | tr '\n' ' ')\" = 'step-00000010 ' ]"
exit $fail
