#!/usr/bin/env bash
# Stop sweep: one rank of three is stopped (SIGSTOP) at points spread over a save, an
# asynchronous save, a load and a parallel safetensors export, rank 0 among the victims (rank 0
# also in the middle of its commit); then killed (SIGKILL) during a load. Each time the job must
# end within the collective deadline plus a few seconds, name the stopped rank on every
# surviving rank, and leave the previous checkpoint committed and verifying with nothing of the
# interrupted step committed (or, past the commit point, committed whole).
# The points are file calls (open, pread, pwrite, fsync, rename) counted by tests/kill_shim.c on
# the victim: one run counts them, the sweep strikes before the first, middle and last ones.
set -uo pipefail
train=$1; cli=$2; mpirun=$3
shim=${DISTCKPT_KILL_SHIM:?the kill shim (tests/kill_shim.c) is built by CMake}
preload=${DISTCKPT_PRELOAD_FIRST:+$DISTCKPT_PRELOAD_FIRST:}$shim
source "$(dirname "$0")/mpi_session.sh"
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/stop.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$tmp"' EXIT
deadline=3  # seconds; the verdict adds a grace of 2 s and up to 3 s for every rank to print it
slack=10    # seconds allowed from the stop to the end of the job beyond the deadline
host=$(hostname)
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

# Step 2 committed by 3 ranks with Adam: the checkpoint every case starts from.
timeout -k 10 120 "$mpirun" -np 3 --oversubscribe "$train" --ckpt-dir "$tmp/base" --steps 2 \
  --save-every 2 --optimizer adam >/dev/null 2>&1 || { echo "FAIL the base run"; exit 1; }

# job KIND DIR: the command line of one phase, writing into DIR (a copy of the base).
job() {
  local kind=$1 dir=$2
  local train_args=(--optimizer adam --collective-timeout "${timeout_now:-$deadline}")
  case $kind in
    save) echo "$train" --ckpt-dir "$dir" --steps 4 --save-every 2 --resume "${train_args[@]}" ;;
    async) echo "$train" --ckpt-dir "$dir" --steps 4 --save-every 2 --resume --async "${train_args[@]}" ;;
    load) echo "$train" --ckpt-dir "$dir" --steps 3 --save-every 0 --resume "${train_args[@]}" ;;
    export) echo "$cli" export "$dir/step-00000002" "$dir/out.safetensors" --format safetensors \
      --collective-timeout "${timeout_now:-$deadline}" ;;
  esac
}

# The paths whose calls are counted: the step being written, or the step being read.
part_of() {
  case $1 in
    save | async) echo ".tmp-step-00000004" ;;
    load) echo "step-00000002/" ;;
    export) echo "$2/" ;;  # reading the checkpoint and writing the output
  esac
}

# launch KIND VICTIM DIR ENV...: runs the phase on 3 ranks with the shim armed on VICTIM.
launch() {
  local kind=$1 victim=$2 dir=$3; shift 3
  rm -rf "$dir"; cp -a "$tmp/base" "$dir"
  # shellcheck disable=SC2046
  timeout -k 5 120 "$mpirun" -np 3 --oversubscribe -x LD_PRELOAD="$preload" -x KILL_RANK="$victim" \
    -x KILL_PATH_PART="$(part_of "$kind" "$dir")" "$@" $(job "$kind" "$dir")
}

# count KIND VICTIM: how many armed file calls the victim makes in an undisturbed run.
count() {
  local dir=$tmp/count-$1-$2
  # Undisturbed: a generous deadline, so that a machine busy with other work cannot end it.
  timeout_now=120 launch "$1" "$2" "$dir" -x KILL_AT_CALL=0 -x KILL_COUNT_FILE="$dir.calls" >"$dir.out" 2>&1 ||
    { echo "FAIL undisturbed $1 run"; cat "$dir.out"; return 1; }
  cat "$dir.calls"
}

# strike KIND VICTIM SIGNAL CALL: one case; prints its checks.
strike() {
  local kind=$1 victim=$2 signal=$3 call=$4
  local name=$kind-$victim-$signal-$call dir=$tmp/$kind-$victim-$signal-$call
  local rc end try
  for try in 1 2; do
    launch "$kind" "$victim" "$dir" -x KILL_AT_CALL="$call" -x KILL_SIGNAL="$signal" \
      -x KILL_MARK="$dir.mark" >"$dir.out" 2>&1
    rc=$?
    end=$(date +%s.%N)
    # A run that ended before the strike point (on a loaded machine a rank can be late by more
    # than the short deadline before the victim gets there) says nothing: run it once more.
    [ -e "$dir.mark" ] && break
    if [ $try = 1 ]; then
      echo "     $kind: rank $victim, call $call: the run ended before the strike (exit $rc); again"
    fi
  done
  local verb=stopped; [ "$signal" = KILL ] && verb=killed
  if [ ! -e "$dir.mark" ]; then
    echo "FAIL $kind: rank $victim $verb before file call $call: the shim never struck"; return
  fi
  # The call, with the path below the case's directory: "rename .tmp-step-00000004-x".
  local at
  at=$(sed "s|$dir/||" "$dir.mark")
  local what="$kind: rank $victim $verb before file call $call ($at)"
  local took
  took=$(awk -v a="$(date +%s.%N -r "$dir.mark")" -v b="$end" 'BEGIN {printf "%.1f", b - a}')
  check "$what: the job ends ${took} s after the stop (exit $rc)" \
    "[ $rc -ne 0 ] && [ $rc -ne 124 ] && awk -v t=$took 'BEGIN {exit !(t < $deadline + $slack)}'"
  if [ "$signal" = STOP ]; then
    # Every verdict printed names the victim alone; the two other ranks both print one.
    local named
    named=$(grep -o 'rank [0-9]* (host [^)]*): rank [0-9]* (host [^)]*) did not arrive' "$dir.out" |
      sed 's/.*: rank \([0-9]*\) (host \([^)]*\)).*/\1 \2/' | sort -u | tr '\n' ' ')
    check "  every surviving rank names rank $victim (host $host): named '$named'" \
      "[ \"$named\" = '$victim $host ' ] && [ \$(grep -c 'did not arrive' '$dir.out') -ge 2 ]"
  else
    check "  mpirun names the killed rank" "grep -q 'rank $victim with PID' '$dir.out'"
  fi
  check "  step 2 is still committed and verifies" "'$cli' verify '$dir/step-00000002' >/dev/null 2>&1"
  case $kind in
    save | async)
      check "  step 4 is absent, or committed whole" \
        "[ ! -e '$dir/step-00000004' ] || '$cli' verify '$dir/step-00000004' >/dev/null 2>&1"
      check "  latest is step 2 or a whole step 4" \
        "'$cli' verify \"\$('$cli' latest '$dir')\" >/dev/null 2>&1" ;;
    load) check "  nothing new was written" "[ \"\$(ls '$dir')\" = step-00000002 ]" ;;
    export)
      check "  no partial export is left under the final name" \
        "[ ! -e '$dir/out.safetensors' ] || python3 -c 'import sys; from safetensors.numpy import load_file; load_file(sys.argv[1])' '$dir/out.safetensors'" ;;
  esac
}

# Where each (phase, victim) is struck: "first", "middle", "last" and "before-last" file call.
sweep=(
  "save 0 STOP first middle before-last last"  # rank 0's last calls are its commit
  "save 1 STOP middle last"
  "async 0 STOP middle last"
  "async 2 STOP first middle"
  "load 0 STOP first last"
  "load 1 STOP middle last"
  "export 0 STOP first last"
  "export 2 STOP middle last"
  "load 1 KILL first middle"
)
# The undisturbed runs that count each victim's calls, side by side (they are short).
declare -A counted
for line in "${sweep[@]}"; do
  read -r kind victim _ <<<"$line"
  [ -e "$tmp/calls-$kind-$victim" ] && continue
  { own_mpi_session; count "$kind" "$victim"; } >"$tmp/calls-$kind-$victim" &
done
wait
cases=()
for line in "${sweep[@]}"; do
  read -r kind victim signal points <<<"$line"
  key="$kind $victim"
  if [ -z "${counted[$key]:-}" ]; then
    counted[$key]=$(cat "$tmp/calls-$kind-$victim")
    [[ ${counted[$key]} =~ ^[0-9]+$ ]] || { echo "${counted[$key]}"; fail=1; continue; }
    echo "     $kind: rank $victim makes ${counted[$key]} file calls on its files"
  fi
  n=${counted[$key]}
  for point in $points; do
    case $point in
      first) call=1 ;; middle) call=$(((n + 1) / 2)) ;; before-last) call=$((n - 1)) ;; last) call=$n ;;
    esac
    cases+=("$kind $victim $signal $call")
  done
done

# Several cases at once, a new one starting as soon as one ends: most of a case is waiting for
# the deadline (a stopped rank holds no core, and the waiting ones poll gently). The reports are
# printed in order at the end.
at_once=${STOP_SWEEP_AT_ONCE:-6}
running=0
for ((j = 0; j < ${#cases[@]}; ++j)); do
  if [ $running -ge "$at_once" ]; then wait -n; running=$((running - 1)); fi
  # shellcheck disable=SC2086
  { own_mpi_session; strike ${cases[j]}; } >"$tmp/r$j" &
  running=$((running + 1))
done
wait
for ((j = 0; j < ${#cases[@]}; ++j)); do cat "$tmp/r$j"; done
grep -q '^FAIL' "$tmp"/r* && fail=1
exit $fail
