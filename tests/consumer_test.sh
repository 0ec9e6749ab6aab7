#!/usr/bin/env bash
# A project of the user's own (examples/consumer) against the installed package: distckpt is
# installed with `cmake --install` into a fresh prefix, the consumer configured with
# find_package(distckpt) and built, and its checkpoints resumed exactly on 2 ranks and elastically
# on 1; the installed `distckpt` CLI lists and verifies them.
# usage: consumer_test.sh BUILD_DIR SOURCE_DIR MPIEXEC
set -euo pipefail
build=$1; source=$2; mpiexec=$3
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log"
check "installed: headers, libdistckpt, the CLI and the CMake package" \
  '[ -f "$tmp/prefix/include/distckpt/checkpoint.h" ] && ls "$tmp/prefix"/lib*/libdistckpt.so >/dev/null &&
   [ -x "$tmp/prefix/bin/distckpt" ] && ls "$tmp"/prefix/lib*/cmake/distckpt/distckptConfig.cmake >/dev/null'

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
if ! cmake -S "$source/examples/consumer" -B "$tmp/consumer" "${generator[@]}" "${launcher[@]}" \
      -DCMAKE_PREFIX_PATH="$tmp/prefix" >"$tmp/configure.log" 2>&1 ||
   ! cmake --build "$tmp/consumer" >"$tmp/build.log" 2>&1; then
  echo "FAIL the consumer project did not configure and build against the installed package"
  cat "$tmp/configure.log" "$tmp/build.log" | tail -40
  exit 1
fi
echo "ok   examples/consumer configured with find_package(distckpt) and built"

app=$tmp/consumer/consumer
run() { timeout 300 "$mpiexec" -np "$1" --oversubscribe "$app" "${@:2}"; }
run 2 "$tmp/ref" 5 | grep '^epoch' >"$tmp/ref.txt"
run 2 "$tmp/ck" 3 >/dev/null
run 2 "$tmp/ck" 5 >"$tmp/resumed.txt"
check "resumed on 2 ranks from epoch 3: epochs 4-5 identical to a run never stopped" \
  'grep -q "^resumed from .*step-00000003 (epoch 3)" "$tmp/resumed.txt" &&
   diff <(grep "^epoch" "$tmp/resumed.txt") <(tail -2 "$tmp/ref.txt")'
"$app" "$tmp/ck" 6 >"$tmp/one.txt"
check "resumed on 1 process without mpirun from epoch 5" \
  'grep -q "^resumed from .*step-00000005 (epoch 5)" "$tmp/one.txt" && grep -q "^epoch 6 " "$tmp/one.txt"'
check "the installed CLI lists 6 checkpoints and verifies the newest" \
  '[ "$("$tmp/prefix/bin/distckpt" ls "$tmp/ck" | grep -c " yes ")" -eq 6 ] &&
   "$tmp/prefix/bin/distckpt" verify "$tmp/ck/step-00000006" >/dev/null'
set +e
"$app" >/dev/null 2>&1
rc=$?
set -e
check "a wrong command line exits 2" '[ $rc -eq 2 ]'
exit $fail
