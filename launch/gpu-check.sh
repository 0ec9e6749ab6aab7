#!/usr/bin/env bash
# On a machine with GPUs, in one call: builds distckpt against the local Python torch (CUDA), then
#  1. runs the GPU tests (tests/gpu_test.cc) on 1 and 2 ranks, and on one rank per GPU where there
#     are more, and the Python frontend's tests (CUDA tensors through a small staging budget among
#     them) on 1 rank; each test skips on its own, with its reason, where it cannot run;
#  2. measures save and load of CUDA tensors through the staging ring (bench/staging_bench) at
#     DISTCKPT_GPU_SIZES GiB (default "1 4 16"), each next to a raw write/read of the same bytes
#     and page-locked host<->device copies in the same process, with peak host memory against the
#     256 MiB budget, and right after it PyTorch DCP's dcp.save/dcp.load of the same state
#     (bench/staging_dcp.py); sizes are skipped once DISTCKPT_GPU_SECONDS (default 420) have passed;
#  3. times the async snapshot of GPU-resident state (bench/async_bench --cuda).
# Results go to bench/results/gpu/ (and to $OUT when set): staging.csv, staging_dcp.csv,
# gpu-check.log. Where MPI/HDF5 are missing, carry the .deb files fetched by
# launch/gpu-fetch-debs.sh in .debs/; they are unpacked into .deps/ (not into /).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source launch/gpu-env.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
start=$SECONDS
results=bench/results/gpu
mkdir -p "$results"
rm -f "$results/staging.csv" "$results/staging_dcp.csv"
exec > >(tee "$results/gpu-check.log") 2>&1
echo "== $(date -u +%FT%TZ) $(uname -n)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
gpus=$(python3 -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' || true

build=${DISTCKPT_GPU_BUILD:-build-gpu}
gen=Ninja keep_going="-k 0"  # build what compiles, so one broken target does not hide the rest
command -v ninja >/dev/null || { gen="Unix Makefiles"; keep_going="-k"; }
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G "$gen" -DCMAKE_BUILD_TYPE=Release -DDISTCKPT_BUILD_BENCH=ON \
    -DDISTCKPT_BUILD_PYTHON=ON -DPython3_EXECUTABLE="$(command -v python3)" > build-gpu.log 2>&1 ||
    tail -n 40 build-gpu.log
fi
cmake --build "$build" -j "$(nproc)" --target gpu_test distckpt_bench distckpt_python -- $keep_going \
  >> build-gpu.log 2>&1 || grep -E -A5 'error|Error' build-gpu.log | head -n 60
echo "== built in $((SECONDS - start)) s"

echo "== GPU tests"
table=()
ranks="1 2"
[ "$gpus" -gt 2 ] && ranks="$ranks $gpus"
for np in $ranks; do
  out=$(timeout 300 mpirun -np "$np" "$build/tests/gpu_test" 2>&1); rc=$?
  echo "$out" | grep -E '^\[ *(OK|SKIPPED|FAILED) *\]|Failure|error' | head -n 40
  passed=$(grep -c '\[       OK \]' <<<"$out"); skipped=$(grep -c '\[  SKIPPED \].*ms)' <<<"$out")
  table+=("| $np | $passed | $skipped | $([ $rc -eq 0 ] || [ $rc -eq 77 ] && echo ok || echo "FAILED ($rc)") |")
done
echo; echo "| ranks | passed | skipped | result |"; echo "|---|---|---|---|"
printf '%s\n' "${table[@]}"
if ls "$build"/python/distckpt/_C*.so >/dev/null 2>&1; then
  echo "== Python frontend tests (1 rank)"
  timeout 300 bash tests/python/run.sh mpirun 1 mpirun python3 "$build/python" \
    tests/python/test_frontend.py 2>&1 | tail -n 8
else
  echo "== Python frontend tests NOT RUN: the package did not build (see build-gpu.log)"
fi

echo "== staging: distckpt and DCP, interleaved per size"
scratch=${TMPDIR:-/tmp}/distckpt-gpu-staging
for gib in ${DISTCKPT_GPU_SIZES:-1 4 16}; do
  if [ $((SECONDS - start)) -gt "${DISTCKPT_GPU_SECONDS:-420}" ]; then
    echo "skipped $gib GiB: ${DISTCKPT_GPU_SECONDS:-420} s have passed"; continue
  fi
  timeout 240 "$build/bench/staging_bench" --device cuda --gib "$gib" --budget-mib 256 \
    --dir "$scratch" --csv "$results/staging.csv"
  timeout 240 python3 bench/staging_dcp.py --device cuda --gib "$gib" --dir "$scratch-dcp" \
    --csv "$results/staging_dcp.csv" 2>&1 | grep -v UserWarning
  rm -rf "$scratch" "$scratch-dcp"
done

echo "== async snapshot of GPU state"
timeout 120 mpirun -np 1 "$build/bench/async_bench" --cuda --gib "${DISTCKPT_GPU_BENCH_GIB:-2}" \
  --dir "${TMPDIR:-/tmp}/distckpt-gpu-async"
echo "== done in $((SECONDS - start)) s"
if [ -n "${OUT:-}" ]; then cp "$results"/* build-gpu.log "$OUT"/ 2>/dev/null; fi
exit 0
