#!/usr/bin/env bash
# Builds the libFuzzer target with clang (ASan + UBSan + coverage on distckpt's readers) and runs
# it for a bounded time. Skips, saying so, where clang's libFuzzer is not installed.
# usage: run_fuzz.sh SRC_DIR BUILD_DIR SECONDS
set -euo pipefail
src=$1; out=$2/fuzz; secs=${3:-30}
if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "SKIPPED: clang++ with libFuzzer is not installed (Debian: clang, libclang-rt-14-dev)"; exit 0
fi
torch=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
mkdir -p "$out/corpus"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
  -DOMPI_SKIP_MPICXX=1 -D_GLIBCXX_USE_CXX11_ABI=1 -I"$src/include" -I"$src/src"
  -isystem "$torch/include" -isystem "$torch/include/torch/csrc/api/include"
  -I/usr/include/hdf5/openmpi -I/usr/lib/x86_64-linux-gnu/openmpi/include)
sources=(src/core/status.cc src/core/tree.cc src/plan/planner.cc src/storage/env_posix.cc
  src/storage/checksum.cc src/storage/hdf5_file.cc src/storage/shard_reader.cc
  src/format/manifest.cc src/format/pickle.cc src/retention.cc tests/fuzz/parsers_fuzz.cc)
objs=()
for f in "${sources[@]}"; do
  o="$out/$(basename "$f" .cc).o"; objs+=("$o")
  [ "$o" -nt "$src/$f" ] || clang++ "${flags[@]}" -c "$src/$f" -o "$o"
done
# VerifyCheckpoint and friends live in coordinator.cc; compile it too.
o="$out/coordinator.o"; objs+=("$o")
[ "$o" -nt "$src/src/coordinator.cc" ] || clang++ "${flags[@]}" -c "$src/src/coordinator.cc" -o "$o"
o="$out/communicator.o"; objs+=("$o")
[ "$o" -nt "$src/src/comm/communicator.cc" ] || clang++ "${flags[@]}" -c "$src/src/comm/communicator.cc" -o "$o"
clang++ "${flags[@]}" "${objs[@]}" -o "$out/parsers_fuzz" -L"$torch/lib" -Wl,-rpath,"$torch/lib" \
  -ltorch_cpu -lc10 -L/usr/lib/x86_64-linux-gnu/hdf5/openmpi -lhdf5 -lxxhash \
  -L/usr/lib/x86_64-linux-gnu/openmpi/lib -lmpi
# Seeds: a real manifest index and a real pickle.
printf '{"format":"distckpt","format_version":1,"step":1,"world_size":1,"created_unix":0,"library_version":"x","torch_version":"x","piece_bytes":64,"files":[],"scalars":{},"tensors":[]}' >"$out/corpus/index.json"
printf '\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u.' >"$out/corpus/dict.pkl"
export FUZZ_TMP=$out ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1
"$out/parsers_fuzz" -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=4096 \
  -print_final_stats=1 "$out/corpus" 2>&1 | tail -n 12
