#!/usr/bin/env bash
# Runs the Python frontend's pytest suite under mpirun on NP ranks, with the package from the
# build tree and a fresh directory shared by the ranks.
# usage: run.sh NP MPIEXEC PYTHON PACKAGE_DIR TEST_FILE [TRAIN_BIN]
set -euo pipefail
np=$1; mpiexec=$2; python=$3; package=$4; tests=$5; train=${6:-}
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/python.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export DISTCKPT_PY_TMP=$tmp PYTHONPATH=$package${PYTHONPATH:+:$PYTHONPATH} TRAIN_BIN=$train
"$mpiexec" -np "$np" --oversubscribe "$python" -m pytest -q -p no:cacheprovider "$tests"
