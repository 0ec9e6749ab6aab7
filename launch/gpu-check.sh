#!/usr/bin/env bash
# On a machine with GPUs: builds distckpt against the local Python torch (CUDA) and runs the GPU
# tests — save from CUDA tensors, load onto cuda:<local rank>, live export with the NCCL gather —
# on 1 and 2 ranks, then prints a short table. Where MPI/HDF5 are missing, carry the .deb files
# fetched by launch/gpu-fetch-debs.sh in .debs/; they are unpacked into .deps/ (not into /).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -d .debs ] && ! command -v mpirun >/dev/null; then
  mkdir -p .deps
  for f in .debs/*.deb; do dpkg -x "$f" .deps; done
  export PATH=$ROOT/.deps/usr/bin:$PATH
  export LD_LIBRARY_PATH=$ROOT/.deps/usr/lib/x86_64-linux-gnu:$ROOT/.deps/usr/lib/x86_64-linux-gnu/openmpi/lib:$ROOT/.deps/usr/lib/x86_64-linux-gnu/hdf5/openmpi:${LD_LIBRARY_PATH:-}
  export OPAL_PREFIX=$ROOT/.deps/usr CPATH=$ROOT/.deps/usr/include:${CPATH:-}
  export CMAKE_PREFIX_PATH=$ROOT/.deps/usr:$ROOT/.deps/usr/lib/x86_64-linux-gnu/cmake:${CMAKE_PREFIX_PATH:-}
  # Debian's mpicc wrappers hard-code /usr paths; point CMake at the unpacked tree instead.
  export MPI_HOME=$ROOT/.deps/usr/lib/x86_64-linux-gnu/openmpi HDF5_ROOT=$ROOT/.deps/usr
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
gen=Ninja; command -v ninja >/dev/null || gen="Unix Makefiles"
cmake -S . -B build-gpu -G "$gen" -DCMAKE_BUILD_TYPE=Release -DDISTCKPT_BUILD_BENCH=OFF \
  -DPython3_EXECUTABLE="$(command -v python3)" 2>&1 | tail -n 5
cmake --build build-gpu -j "$(nproc)" --target gpu_test distckpt_cli 2>&1 | tail -n 5
results=()
for np in 1 2; do
  out=$(mpirun -np $np build-gpu/tests/gpu_test 2>&1); rc=$?
  echo "$out" | tail -n 15
  passed=$(grep -c '\[       OK \]' <<<"$out"); skipped=$(grep -c '\[  SKIPPED \]' <<<"$out")
  results+=("| $np | $passed | $skipped | $([ $rc -eq 0 ] && echo ok || echo FAILED) |")
done
echo; echo "| ranks | passed | skipped | result |"; echo "|---|---|---|---|"
printf '%s\n' "${results[@]}"
