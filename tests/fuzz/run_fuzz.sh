#!/usr/bin/env bash
# Builds the libFuzzer target with clang (ASan + UBSan + coverage on distckpt's readers) and runs
# it for a bounded time. Skips, saying so, where clang's libFuzzer is not installed.
# usage: run_fuzz.sh SRC_DIR BUILD_DIR SECONDS FIXTURE_WRITER
set -euo pipefail
src=$1; out=$2/fuzz; secs=$3; writer=$4
if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "SKIPPED: clang++ with libFuzzer is not installed (Debian: clang, libclang-rt-14-dev)"; exit 0
fi
torch=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
mkdir -p "$out/corpus"
# The flags of every compile; the project's include paths are added to all but the PCH's. Line
# tables are all the sanitizers' reports need, and compile about a fifth faster than full -g.
pch_flags=(-std=c++20 -O1 -gline-tables-only -fsanitize=fuzzer,address,undefined
  -fno-sanitize-recover=undefined
  -DOMPI_SKIP_MPICXX=1 -D_GLIBCXX_USE_CXX11_ABI=1
  -isystem "$torch/include" -isystem "$torch/include/torch/csrc/api/include"
  -I/usr/include/hdf5/openmpi -I/usr/lib/x86_64-linux-gnu/openmpi/include)
flags=("${pch_flags[@]}" -I"$src/include" -I"$src/src")
# The readers and what verification needs; the fixture is written by the regular build, so that
# no save path is compiled here. They compile as one unit (unity.cc): LibTorch's inline code is
# generated once instead of once per source (a third of the time). nlohmann's JSON, the longest
# compile and the one that needs no ATen, compiles beside it from the start.
unit=()
for d in core layout manifest io hdf5; do
  for f in "$src"/src/$d/*.cc; do
    [ "$f" = "$src/src/manifest/json.cc" ] || unit+=("${f#$src/}")
  done
done
unit+=(src/plan/planner.cc src/comm/communicator.cc src/comm/deadline_watch.cc
  src/checkpoint/catalog.cc src/checkpoint/manifest_store.cc src/checkpoint/tags.cc
  src/pt/pickle.cc tests/fuzz/parsers_fuzz.cc)
# Paths relative to the source, so that the unit is the same file in every clone (ccache).
printf '#include "%s"\n' "${unit[@]}" >"$out/unity.cc.new"
if cmp -s "$out/unity.cc.new" "$out/unity.cc"; then rm "$out/unity.cc.new"; else mv "$out/unity.cc.new" "$out/unity.cc"; fi
# Whether OBJECT must be compiled again: it is missing or older than one of its SOURCEs or than
# any project header (a stale object compiled against an older class layout breaks the link).
stale() {
  local o=$1; shift
  [ -f "$o" ] || return 0
  for f in "$@"; do [ "$o" -nt "$f" ] || return 0; done
  [ -n "$(find "$src/include" "$src/src" -name '*.h' -newer "$o" | head -n 1)" ]
}
# ccache (when present) keeps rebuilds of a fresh clone cheap; paths relative to the source, and
# the working directory left out of the key (it is inside the clone; -g would add it).
cxx=(clang++); command -v ccache >/dev/null && cxx=(ccache clang++)
export CCACHE_BASEDIR=$src CCACHE_NOHASHDIR=1 CCACHE_INODECACHE=true
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
objs=("$out/json.o" "$out/unity.o")
json_pid=
if stale "$out/json.o" "$src/src/manifest/json.cc"; then
  "${cxx[@]}" "${flags[@]}" -c "$src/src/manifest/json.cc" -o "$out/json.o" &
  json_pid=$!
fi
# LibTorch's ATen headers precompiled once, with the same flags, while the JSON source compiles.
# The PCH lives outside the clone, keyed on the compiler, the flags and LibTorch, so that every
# clone uses the same file and ccache (which keys the compiles that use it on its contents) hits
# in a fresh clone too. No timestamp in it; it needs none of the project's include paths.
key=$( (clang++ --version; echo "${pch_flags[@]}"; stat -c '%s %Y' "$torch/include/ATen/ATen.h" "$torch/lib/libtorch_cpu.so") | sha1sum | cut -c1-16)
pch_dir=${DISTCKPT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/distckpt}/fuzz-pch-$key
pch=$pch_dir/aten.pch
if [ ! -f "$pch" ]; then
  mkdir -p "$pch_dir"
  [ -f "$pch_dir/aten.h" ] || printf '#include <ATen/ATen.h>\n' >"$pch_dir/aten.h"
  clang++ "${pch_flags[@]}" -Xclang -fno-pch-timestamp -x c++-header "$pch_dir/aten.h" -o "$pch.$$"
  mv "$pch.$$" "$pch"
fi
if stale "$out/unity.o" "$out/unity.cc" "${unit[@]/#/$src/}"; then
  "${cxx[@]}" "${flags[@]}" -I"$src" -include-pch "$pch" -c "$out/unity.cc" -o "$out/unity.o"
fi
[ -z "$json_pid" ] || wait "$json_pid"
clang++ "${flags[@]}" "${objs[@]}" -o "$out/parsers_fuzz" -L"$torch/lib" -Wl,-rpath,"$torch/lib" \
  -ltorch_cpu -lc10 -L/usr/lib/x86_64-linux-gnu/hdf5/openmpi -lhdf5 -lxxhash \
  -L/usr/lib/x86_64-linux-gnu/openmpi/lib -lmpi
# Seeds: a real manifest index and a real pickle; the target adds a real rank file from a
# checkpoint with one tensor of each dtype in 64-byte pieces.
rm -rf "$out/fixture"
"$writer" "$out/fixture" packed 64 >/dev/null
printf '{"format":"distckpt","format_version":1,"step":1,"world_size":1,"created_unix":0,"library_version":"x","torch_version":"x","piece_bytes":64,"files":[],"scalars":{},"tensors":[]}' >"$out/corpus/index.json"
printf '\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u.' >"$out/corpus/dict.pkl"
rm -rf "$out"/distckpt-fuzz-*  # the private fixture copies of earlier runs
export FUZZ_TMP=$out FUZZ_CORPUS=$out/corpus FUZZ_FIXTURE=$out/fixture/step-00000001 ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1
"$out/parsers_fuzz" -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=4096 \
  -print_final_stats=1 "$out/corpus" 2>&1 | tail -n 12
