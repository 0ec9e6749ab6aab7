#!/usr/bin/env bash
# A run stopped at a checkpoint and resumed, on the same or another number of ranks, or on one
# process without mpirun, prints the same loss at every later step as a run never stopped, and
# ends in the same state bit for bit (`distckpt diff` of the final checkpoints exits 0; the
# per-rank RNG states, one row per rank, are compared where the rank counts are the same).
set -euo pipefail
train=$1; cli=$2; mpirun=$3
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/resume.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { local np=$1; shift; "$mpirun" -np "$np" --oversubscribe "$train" "$@"; }
fail=0
# same_state LABEL REF_DIR DIR RANK_COUNTS_EQUAL: the final states equal, bit for bit.
same_state() {
  local exclude=()
  [ "$4" = yes ] || exclude=(--exclude rank_state/)
  if "$cli" diff "$2" "$3" "${exclude[@]}" >"$tmp/state-diff" 2>&1; then
    echo "ok   $1: final state bit-identical"
  else
    echo "FAIL $1: final state differs"; cat "$tmp/state-diff"; fail=1
  fi
}
for opt in sgd adam adamw; do
  run 4 --ckpt-dir "$tmp/ref-$opt" --steps 12 --save-every 12 --optimizer $opt | grep '^step' >"$tmp/ref"
  run 4 --ckpt-dir "$tmp/ck-$opt" --steps 6 --save-every 3 --optimizer $opt | grep '^step' >"$tmp/first"
  diff <(head -6 "$tmp/ref") "$tmp/first" >/dev/null || { echo "FAIL $opt: first half differs"; fail=1; }
  tail -6 "$tmp/ref" >"$tmp/want"
  for m in 4 2 3 1 plain; do
    rm -rf "$tmp/ck-$opt-$m"; cp -r "$tmp/ck-$opt" "$tmp/ck-$opt-$m"
    if [ "$m" = plain ]; then
      "$train" --ckpt-dir "$tmp/ck-$opt-$m" --steps 12 --save-every 3 --resume --optimizer $opt >"$tmp/out"
    else
      run $m --ckpt-dir "$tmp/ck-$opt-$m" --steps 12 --save-every 3 --resume --optimizer $opt >"$tmp/out"
    fi
    grep -q '^resumed from .*step-00000006' "$tmp/out" || { echo "FAIL $opt 4->$m: did not resume"; fail=1; }
    if diff <(grep '^step' "$tmp/out") "$tmp/want" >"$tmp/diff"; then
      echo "ok   $opt: saved on 4 ranks, resumed on $m: steps 7-12 identical"
    else
      echo "FAIL $opt: saved on 4 ranks, resumed on $m:"; cat "$tmp/diff"; fail=1
    fi
    same_state "$opt 4->$m" "$tmp/ref-$opt/step-00000012" "$tmp/ck-$opt-$m/step-00000012" \
      "$([ "$m" = 4 ] && echo yes || echo no)"
  done
done
# Asynchronous saves: the same losses, and a resume from a background-saved checkpoint is exact.
run 2 --ckpt-dir "$tmp/async" --steps 6 --save-every 3 --async | grep '^step' >"$tmp/async1"
run 4 --ckpt-dir "$tmp/ref-async" --steps 12 --save-every 12 | grep '^step' >"$tmp/ref"
run 3 --ckpt-dir "$tmp/async" --steps 12 --save-every 12 --resume >"$tmp/async2"
if diff "$tmp/async1" <(head -6 "$tmp/ref") >/dev/null && grep -q 'resumed from .*step-00000006' "$tmp/async2" &&
   diff <(grep '^step' "$tmp/async2") <(tail -6 "$tmp/ref") >/dev/null; then
  echo "ok   --async: saved in the background on 2 ranks, resumed on 3: identical"
else
  echo "FAIL --async"; fail=1
fi
same_state "--async 2->3" "$tmp/ref-async/step-00000012" "$tmp/async/step-00000012" no
exit $fail
