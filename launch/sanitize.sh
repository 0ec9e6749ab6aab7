#!/usr/bin/env bash
# Builds everything with AddressSanitizer + UndefinedBehaviorSanitizer (DISTCKPT_SANITIZE=ON)
# into build-asan/ and runs the whole suite there. Leak checking is off: LibTorch's static
# initialisers allocate for the life of the process. UBSan findings abort the test that hit them.
# A fresh build directory each time, so that no object from an earlier tree is reused.
source "$(dirname "$0")/common.sh"
setup
rm -rf "$DISTCKPT_ROOT/build-asan"
BUILD_DIR=$DISTCKPT_ROOT/build-asan build -DDISTCKPT_SANITIZE=ON -DDISTCKPT_BUILD_BENCH=OFF \
  -DDISTCKPT_BUILD_PYTHON=OFF
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# The fault tests preload a shim; ASan's runtime has to come before it.
DISTCKPT_PRELOAD_FIRST=$(c++ -print-file-name=libasan.so)
export DISTCKPT_PRELOAD_FIRST
cd "$DISTCKPT_ROOT/build-asan"
# Left out: the fuzzer (its own sanitizers), and what loads the sanitized library into a process
# built without them (the Python package in python, the consumer project's own build).
ctest --output-on-failure -j 2 -E "fuzz|python_|consumer_test" "$@"
