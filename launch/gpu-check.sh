#!/usr/bin/env bash
# On a machine with GPUs: builds distckpt against the local Python torch (CUDA) and runs the GPU
# tests — save from CUDA tensors, load onto cuda:<local rank>, live export with the NCCL gather —
# on 1 and 2 ranks, then prints a short table, and times SaveAsync of a GPU-resident state
# against a synchronous save (bench/async_bench --cuda). Where MPI/HDF5 are missing, carry the .deb files
# fetched by launch/gpu-fetch-debs.sh in .debs/; they are unpacked into .deps/ (not into /).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source launch/gpu-env.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
gen=Ninja keep_going="-k 0"  # build what compiles, so one broken target does not hide the rest
command -v ninja >/dev/null || { gen="Unix Makefiles"; keep_going="-k"; }
cmake -S . -B build-gpu -G "$gen" -DCMAKE_BUILD_TYPE=Release -DDISTCKPT_BUILD_BENCH=ON \
  -DPython3_EXECUTABLE="$(command -v python3)" > build-gpu.log 2>&1 || tail -n 40 build-gpu.log
cmake --build build-gpu -j "$(nproc)" --target gpu_test distckpt_cli async_bench -- $keep_going >> build-gpu.log 2>&1 ||
  grep -E -A5 'error|Error' build-gpu.log | head -n 60
results=()
for np in 1 2; do
  out=$(mpirun -np $np build-gpu/tests/gpu_test 2>&1); rc=$?
  echo "$out" | tail -n 15
  passed=$(grep -c '\[       OK \]' <<<"$out"); skipped=$(grep -c '\[  SKIPPED \]' <<<"$out")
  results+=("| $np | $passed | $skipped | $([ $rc -eq 0 ] && echo ok || echo FAILED) |")
done
echo; echo "| ranks | passed | skipped | result |"; echo "|---|---|---|---|"
printf '%s\n' "${results[@]}"
for np in 1 2; do
  mpirun -np $np -x OMP_NUM_THREADS=1 build-gpu/bench/async_bench --cuda --gib "${DISTCKPT_GPU_BENCH_GIB:-2}" \
    --dir "${TMPDIR:-/tmp}/distckpt-gpu-async"
done
