#!/usr/bin/env bash
# Elastic resume matrix: train on N ranks, checkpoint, resume on M ranks, for N, M in
# {1,2,3,4,6}, with and without ZeRO-1 (and across the two), plus one plain process without
# mpirun. The resumed run's final checkpoint must equal the uninterrupted run's tensor by tensor,
# bit for bit (`distckpt diff` exit 0; the README promises it: the trainer's reduction order does
# not depend on the rank count). The per-rank RNG states (rank_state/, one row per rank) are
# compared only where the run was saved and resumed on the reference's 2 ranks. Then a 4 -> 3
# resume mid-epoch must see every sample of the epoch exactly once.
set -euo pipefail
train=$1; cli=$2; mpirun=$3
# train_batch runs many trainer jobs in one launch, each on a communicator of its own ranks
# (tests/train_batch.cc): the same job as distckpt-train without a process start per job.
batch=${DISTCKPT_TRAIN_BATCH:?the train_batch program (tests/train_batch.cc)}
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/matrix.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { local np=$1; shift; if [ "$np" = plain ]; then "$train" "$@"; else "$mpirun" -np "$np" --oversubscribe "$train" "$@"; fi; }
# run_jobs FILE: every line "NP OUTPUT ARGS..." in one launch of 6 ranks.
run_jobs() { "$mpirun" -np 6 --oversubscribe "$batch" "$1" || true; }
common=(--steps 6 --optimizer adam --collective-timeout 120)
run 2 --ckpt-dir "$tmp/ref" "${common[@]}" --save-every 6 >/dev/null
fail=0; exact=0
: >"$tmp/saves"
for zs in 0 1; do
  for n in 1 2 3 4 6; do
    echo "$n $tmp/n$n-z$zs.out --ckpt-dir $tmp/n$n-z$zs ${common[*]} --steps 3 --save-every 3 --zero $zs" >>"$tmp/saves"
  done
done
run_jobs "$tmp/saves"
# Every case's final checkpoint, compared with the reference's in one `distckpt diff` per kind
# (a process start costs more than a small diff).
same=(); elastic=(); cases=(); kinds=()
: >"$tmp/resumes"
for zs in 0 1; do
  for n in 1 2 3 4 6; do
    for m in 1 2 3 4 6 plain; do
      for zr in $zs $((1 - zs)); do
        # Across ZeRO modes only for M = 3, to keep the matrix inside CI's time.
        [ "$zr" != "$zs" ] && [ "$m" != 3 ] && continue
        r=$tmp/saved-on-$n-zero-$zs-resumed-on-$m-zero-$zr
        cp -r "$tmp/n$n-z$zs" "$r"
        args=(--ckpt-dir "$r" "${common[@]}" --save-every 6 --resume --zero $zr)
        if [ "$m" = plain ]; then
          run plain "${args[@]}" >"$r.out" 2>&1 || true  # without mpirun: its own process
        else
          echo "$m $r.out ${args[*]}" >>"$tmp/resumes"
        fi
        cases+=("$r")
        if [ "$n" = 2 ] && [ "$m" = 2 ]; then kinds+=(same); else kinds+=(elastic); fi
      done
    done
  done
done
run_jobs "$tmp/resumes"
for i in "${!cases[@]}"; do
  r=${cases[$i]}
  if [ ! -d "$r/step-00000006" ]; then
    echo "FAIL $(basename "$r"): no final checkpoint"; tail -3 "$r.out"; fail=1
  elif [ "${kinds[$i]}" = same ]; then same+=("$r/step-00000006")
  else elastic+=("$r/step-00000006"); fi
done
# judge DIFF_OUTPUT: one line per case, "exact NAME" or "FAIL NAME" with the differences.
judge() {
  awk '/^== / {split($4, p, "/"); name = p[length(p) - 1]; next}
       /^EQUAL:/ {print "exact " name; next}
       /^DIFFERENT:/ {print "FAIL " name ": " $0; next}
       {print "     " $0}' "$1"
}
"$cli" diff "$tmp/ref/step-00000006" "${same[@]}" >"$tmp/same.diff" 2>&1 || true
"$cli" diff "$tmp/ref/step-00000006" "${elastic[@]}" --exclude rank_state/ >"$tmp/elastic.diff" 2>&1 || true
judge "$tmp/same.diff" >"$tmp/judged"; judge "$tmp/elastic.diff" >>"$tmp/judged"
grep -v '^exact' "$tmp/judged" || true
exact=$(grep -c "^exact" "$tmp/judged" || true)
grep -q '^FAIL' "$tmp/judged" && fail=1
[ "$exact" -eq ${#cases[@]} ] || { echo "FAIL only $exact of ${#cases[@]} cases bit-identical"; fail=1; }
echo "resume matrix: $exact final states bit-identical, failures: $fail"

# Every sample of the epoch exactly once across a 4 -> 3 resume (960 samples, 10 steps/epoch).
run 4 --ckpt-dir "$tmp/samples" --steps 4 --save-every 4 --log-samples "$tmp/log" >/dev/null
run 3 --ckpt-dir "$tmp/samples" --steps 10 --save-every 0 --resume --log-samples "$tmp/log" >/dev/null
if python3 - "$tmp" <<'PY'
import collections, glob, sys
counts = collections.Counter(int(l) for f in glob.glob(sys.argv[1] + "/log.rank*") for l in open(f))
missing = [i for i in range(960) if counts[i] != 1]
print(f"samples seen: {sum(counts.values())}, distinct: {len(counts)}, not exactly once: {len(missing)}")
sys.exit(1 if missing or sum(counts.values()) != 960 else 0)
PY
then echo "ok   4 -> 3 resume mid-epoch saw every sample exactly once"; else echo "FAIL sample count"; fail=1; fi
exit $fail
