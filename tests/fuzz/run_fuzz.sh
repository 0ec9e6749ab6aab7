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
# no save path is compiled here.
# The longest compile (nlohmann's JSON) first: two compiles run side by side.
sources=(src/manifest/json.cc)
for d in core layout manifest io hdf5; do
  for f in "$src"/src/$d/*.cc; do
    [ "$f" = "$src/src/manifest/json.cc" ] || sources+=("${f#$src/}")
  done
done
sources+=(src/plan/planner.cc src/comm/communicator.cc src/comm/deadline_watch.cc
  src/checkpoint/catalog.cc src/checkpoint/manifest_store.cc src/checkpoint/tags.cc
  src/pt/pickle.cc tests/fuzz/parsers_fuzz.cc)
# ccache (when present) keeps rebuilds of a fresh clone cheap; paths relative to the source, and
# the working directory left out of the key (it is inside the clone; -g would add it).
cxx=(clang++); command -v ccache >/dev/null && cxx=(ccache clang++)
export CCACHE_BASEDIR=$src CCACHE_NOHASHDIR=1 CCACHE_INODECACHE=true
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
# LibTorch's ATen headers precompiled once, with the same flags: they are most of each compile
# (about half the time of the heavier sources on a fresh machine). The PCH lives outside the
# clone, keyed on the compiler, the flags and LibTorch, so that every clone uses the same file and
# ccache (which keys the compiles that use it on its contents) hits in a fresh clone too. No
# timestamp in it; it needs none of the project's include paths.
key=$( (clang++ --version; echo "${pch_flags[@]}"; stat -c '%s %Y' "$torch/include/ATen/ATen.h" "$torch/lib/libtorch_cpu.so") | sha1sum | cut -c1-16)
pch_dir=${DISTCKPT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/distckpt}/fuzz-pch-$key
pch=$pch_dir/aten.pch
if [ ! -f "$pch" ]; then
  mkdir -p "$pch_dir"
  [ -f "$pch_dir/aten.h" ] || printf '#include <ATen/ATen.h>\n' >"$pch_dir/aten.h"
  clang++ "${pch_flags[@]}" -Xclang -fno-pch-timestamp -x c++-header "$pch_dir/aten.h" -o "$pch.$$"
  mv "$pch.$$" "$pch"
fi
objs=(); compiling=()
for f in "${sources[@]}"; do
  o="$out/$(echo "$f" | tr / _ | sed 's/\.cc$/.o/')"; objs+=("$o")
  # Rebuild when the source or any project header is newer than the object (a stale object
  # compiled against an older class layout breaks the link silently).
  if [ ! "$o" -nt "$src/$f" ] || [ -n "$(find "$src/include" "$src/src" -name '*.h' -newer "$o" | head -n 1)" ]; then
    if [ ${#compiling[@]} -ge 2 ]; then wait "${compiling[0]}"; compiling=("${compiling[@]:1}"); fi
    "${cxx[@]}" "${flags[@]}" -include-pch "$pch" -c "$src/$f" -o "$o" &
    compiling+=($!)
  fi
done
for pid in "${compiling[@]}"; do wait "$pid"; done
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
