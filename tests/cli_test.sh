#!/usr/bin/env bash
# distckpt ls / inspect / verify on a real training run, then on a damaged copy.
set -euo pipefail
train=$1; cli=$2; mpirun=$3
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/cli.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$tmp"' EXIT
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; exit 1; fi; }

"$mpirun" -np 3 --oversubscribe "$train" --ckpt-dir "$tmp/ck" --steps 6 --save-every 3 >/dev/null
mkdir -p "$tmp/ck/.tmp-step-00000009-0000beef"
"$cli" ls "$tmp/ck" >"$tmp/ls"
cat "$tmp/ls"
check "ls lists both committed checkpoints" "grep -Eq '^3 .* 3 +yes' '$tmp/ls' && grep -Eq '^6 .* 3 +yes' '$tmp/ls'"
check "ls shows the leftover as uncommitted" "grep -Eq '^9 .* no ' '$tmp/ls'"
check "ls shows when each was saved" "grep -Eq '^6 .* yes +20[0-9]{2}-[0-9]{2}-[0-9]{2} [0-9:]{8} +1 ' '$tmp/ls'"
"$cli" inspect "$tmp/ck/step-00000006" >"$tmp/inspect"
check "inspect shows tensors with dtype and shape" "grep -q 'model_state_dict/fc2.weight  float32 \[64, 64\] replicated' '$tmp/inspect'"
"$cli" inspect "$tmp/ck/step-00000006" --json >"$tmp/json"
listed=$(grep -cE '^  [^ ]+  [a-z0-9]+ \[' "$tmp/inspect")
check "inspect lists every tensor of the header's count ($listed)" \
  "[ $listed -gt 0 ] && grep -q \"in $listed tensor(s)\" '$tmp/inspect'"
check "inspect --json is valid JSON with the same tensors" \
  "python3 -c 'import json,sys; m=json.load(open(\"$tmp/json\")); assert m[\"step\"]==6 and len(m[\"tensors\"])==$listed' "
check "verify passes on a good checkpoint" "'$cli' verify '$tmp/ck/step-00000006' >/dev/null"

# Flip one byte inside fc1.weight's data, wherever it was written.
read -r file offset < <(python3 - "$tmp/json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
t = next(t for t in m["tensors"] if t["path"] == "model_state_dict/fc1.weight")
s = t["shards"][0]
print(s["file"], s["byte_offset"] + 10)
PY
)
python3 - "$tmp/ck/step-00000006/$file" "$offset" <<'PY'
import sys
path, off = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x40]))
PY
if "$cli" verify "$tmp/ck/step-00000006" 2>"$tmp/verify"; then echo "FAIL verify missed a flipped byte"; exit 1; fi
cat "$tmp/verify"
check "verify names tensor, file and offset" \
  "grep -q 'model_state_dict/fc1.weight' '$tmp/verify' && grep -q '$file' '$tmp/verify' && grep -q 'checksum mismatch' '$tmp/verify'"
out=$("$mpirun" -np 2 --oversubscribe "$train" --ckpt-dir "$tmp/ck" --steps 9 --resume 2>&1 || true)
check "resume names the damaged checkpoint and falls back to step 3" \
  "grep -q 'step-00000006 is damaged.*checksum mismatch' <<<\"\$out\" && grep -q 'resumed from .*step-00000003' <<<\"\$out\""

# Command-line mistakes: one line naming the argument on stderr, exit code 2, no crash.
bad() {  # bad PATTERN PROGRAM ARGS...
  local pattern=$1; shift
  set +e; "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?; set -e
  local lines; lines=$(wc -l <"$tmp/err")
  if [ $rc -eq 2 ] && [ "$lines" -eq 1 ] && grep -q -- "$pattern" "$tmp/err"; then
    echo "ok   exit 2 and one line naming '$pattern': ${*:2}"
  else
    echo "FAIL ${*:2}: exit $rc, $lines line(s) on stderr:"; cat "$tmp/err"; exit 1
  fi
}
ck=$tmp/ck/step-00000003
"$cli" export "$ck" "$tmp/in.pt" >/dev/null
bad "subcommand" "$cli"
bad "frobnicate" "$cli" frobnicate "$tmp/ck"
bad "\-\-step" "$cli" import "$tmp/in.pt" "$tmp/imp" --step abc
bad "\-\-step" "$cli" import "$tmp/in.pt" "$tmp/imp" --step -1
bad "\-\-step" "$cli" import "$tmp/in.pt" "$tmp/imp" --step 100000000
bad "\-\-step" "$cli" import "$tmp/in.pt" "$tmp/imp" --step
bad "missing.pt" "$cli" import "$tmp/missing.pt" "$tmp/imp"
bad "\-\-jsn" "$cli" inspect "$ck" --jsn
bad "\-\-keep-last" "$cli" gc "$tmp/ck" --keep-last x
bad "\-\-keep-last" "$cli" gc "$tmp/ck" --keep-last -3
bad "/nonexistent" "$cli" ls /nonexistent
bad "nope" "$cli" verify "$tmp/nope"
bad "OUT" "$cli" export "$ck"
bad "\-\-steps" "$train" --ckpt-dir "$tmp/t" --steps abc
bad "\-\-steps" "$train" --ckpt-dir "$tmp/t" --steps -5
bad "\-\-zero" "$train" --ckpt-dir "$tmp/t" --zero 2
bad "\-\-optimizer" "$train" --ckpt-dir "$tmp/t" --optimizer lamb
bad "\-\-ckpt-dir" "$train" --steps 3
bad "\-\-bogus" "$train" --ckpt-dir "$tmp/t" --bogus
bad "cannot name a tag" "$cli" tag "$ck" ".hidden"
bad "\-\-tag" "$cli" latest "$tmp/ck" --tag

# Tags: a name for a checkpoint, found by name, shown by ls, kept by gc unless told otherwise.
"$cli" tag "$ck" best >/dev/null
check "latest --tag prints the checkpoint the tag names" \
  "[ \"\$('$cli' latest '$tmp/ck' --tag best)\" = '$ck' ]"
"$cli" ls "$tmp/ck" >"$tmp/ls-tags"
check "ls shows the tag" "grep -Eq '^3 .* best +$ck\$' '$tmp/ls-tags' && grep -Eq '^6 .* - +$tmp/ck/step-00000006\$' '$tmp/ls-tags'"
set +e; "$cli" latest "$tmp/ck" --tag nope 2>"$tmp/err"; rc=$?; set -e
check "an unknown tag: exit 1 naming it" "[ $rc -eq 1 ] && grep -q \"no tag 'nope'\" '$tmp/err'"
"$cli" gc "$tmp/ck" --keep-last 1 >/dev/null
check "gc keeps a tagged checkpoint" "[ -d '$ck' ]"
"$cli" gc "$tmp/ck" --keep-last 1 --drop-tagged >/dev/null
check "gc --drop-tagged removes it and its tag" "[ ! -d '$ck' ] && [ ! -e '$tmp/ck/tags/best' ]"
# gc says what it left: a checkpoint a load holds (a shared flock on its directory) is left for a
# later run (exit 0); where nothing can be removed (a read-only mount) each directory is named
# with its error (exit 1) and stays.
"$train" --ckpt-dir "$tmp/gc" --steps 3 --save-every 1 >/dev/null
python3 -c 'import fcntl, os, sys, time
fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), fcntl.LOCK_SH); open(sys.argv[2], "w"); time.sleep(60)' \
  "$tmp/gc/step-00000001" "$tmp/held" >/dev/null 2>&1 &
holder=$!
for _ in $(seq 100); do [ -e "$tmp/held" ] && break; sleep 0.1; done
set +e; "$cli" gc "$tmp/gc" --keep-last 1 >"$tmp/gc.out" 2>&1; rc=$?; set -e
kill $holder; wait $holder 2>/dev/null || true
check "gc leaves a checkpoint a load holds, says so, exit 0" \
  "[ $rc -eq 0 ] && grep -qx 'in use, left for later: $tmp/gc/step-00000001' '$tmp/gc.out' &&
   grep -qx 'removed $tmp/gc/step-00000002' '$tmp/gc.out' &&
   grep -qx '1 removed, 1 in use, 0 could not be removed' '$tmp/gc.out' && [ -d '$tmp/gc/step-00000001' ]"
if unshare --mount true 2>/dev/null; then
  set +e
  unshare --mount bash -c "mount --make-rprivate / && mount --bind '$tmp/gc' '$tmp/gc' &&
    mount -o remount,bind,ro '$tmp/gc' && exec '$cli' gc '$tmp/gc' --keep-last 1" >"$tmp/gc.out" 2>&1
  rc=$?; set -e
  check "gc on a read-only mount: exit 1, the checkpoint named with its error, kept" \
    "[ $rc -eq 1 ] && grep -q '^distckpt gc: cannot remove $tmp/gc/step-00000001: .*Read-only file system' '$tmp/gc.out' &&
     grep -qx '0 removed, 0 in use, 1 could not be removed' '$tmp/gc.out' && [ -d '$tmp/gc/step-00000001' ]"
else
  echo "SKIPPED gc on a read-only mount: this machine cannot make a mount namespace"
fi
"$train" --ckpt-dir "$tmp/tagged" --steps 4 --save-every 3 --tag final >/dev/null
check "the trainer's --tag saves the last step under the tag" \
  "[ \"\$('$cli' latest '$tmp/tagged' --tag final)\" = '$tmp/tagged/step-00000004' ] && [ -d '$tmp/tagged/step-00000003' ]"
"$cli" untag "$tmp/tagged" final >/dev/null
check "untag removes the tag and keeps the checkpoint" \
  "[ ! -e '$tmp/tagged/tags/final' ] && [ -d '$tmp/tagged/step-00000004' ]"

check "nothing was created by the rejected commands" "[ ! -e '$tmp/imp' ] && [ ! -e '$tmp/t' ]"
for sub in "" ls inspect verify export import gc latest tag untag; do
  check "distckpt $sub --help exits 0 with usage" "'$cli' $sub --help | grep -qi usage"
done
check "distckpt-train --help exits 0 with usage" "'$train' --help | grep -qi usage"
echo "cli_test: all checks passed"
