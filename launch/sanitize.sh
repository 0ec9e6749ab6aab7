#!/usr/bin/env bash
# Builds everything with AddressSanitizer + UndefinedBehaviorSanitizer (DISTCKPT_SANITIZE=ON)
# into build-asan/ and runs the whole suite there. Leak checking is off: LibTorch's static
# initialisers allocate for the life of the process. UBSan findings abort the test that hit them.
source "$(dirname "$0")/common.sh"
setup
BUILD_DIR=$DISTCKPT_ROOT/build-asan build -DDISTCKPT_SANITIZE=ON -DDISTCKPT_BUILD_BENCH=OFF
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$DISTCKPT_ROOT/build-asan"
ctest --output-on-failure -j 2 -E fuzz "$@"
