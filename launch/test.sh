#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (multi-rank ones under mpirun) via ctest.
source "$(dirname "$0")/common.sh"
setup
build -DDISTCKPT_BENCH_IN_ALL=OFF  # the benchmarks build in the suite's bench_build entry
say "running the test suite"
cd "$BUILD_DIR"
ctest --output-on-failure -j 2 "$@"
