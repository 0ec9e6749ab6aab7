#!/usr/bin/env bash
# Runs a pytest file of the Python frontend on NP ranks, launched by mpirun or by torchrun,
# with the package from the build tree and a fresh directory shared by the ranks.
# usage: run.sh LAUNCHER NP MPIEXEC PYTHON PACKAGE_DIR TEST_FILE [TRAIN_BIN [CLI_BIN]]
#   LAUNCHER: mpirun (MPIEXEC -np NP) or torchrun (python -m torch.distributed.run, no MPI)
set -euo pipefail
launcher=$1; np=$2; mpiexec=$3; python=$4; package=$5; tests=$6; train=${7:-}; cli=${8:-}
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/python.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export DISTCKPT_PY_TMP=$tmp PYTHONPATH=$package${PYTHONPATH:+:$PYTHONPATH} TRAIN_BIN=$train
export DISTCKPT_CLI=$cli
pytest=(-m pytest -q -p no:cacheprovider "$tests")
case $launcher in
  mpirun) "$mpiexec" -np "$np" --oversubscribe "$python" "${pytest[@]}" ;;
  # --standalone: a rendezvous on a free local port, so that runs side by side never meet.
  torchrun) "$python" -m torch.distributed.run --standalone --nproc_per_node="$np" "${pytest[@]}" ;;
  *) echo "run.sh: unknown launcher '$launcher' (mpirun or torchrun)" >&2; exit 2 ;;
esac
