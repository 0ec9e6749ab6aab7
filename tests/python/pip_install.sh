#!/usr/bin/env bash
# `python3 -m pip install --no-build-isolation .` as the README says, into a fresh directory;
# then the README's Python example, with the installed package, under mpirun on 2 ranks:
# saved every epoch, resumed, every later loss equal to a run never stopped.
# usage: pip_install.sh SOURCE_DIR PYTHON MPIEXEC [PIP_BUILD_DIR [LIBRARY [COMPILER]]]
# PIP_BUILD_DIR keeps pip's CMake build between runs (scikit-build-core's build-dir), so that a
# second run only rebuilds what changed. LIBRARY: a libdistckpt the suite already built, packaged
# instead of built a second time (only the Python module is compiled); without it, pip builds
# everything as a user's install does. COMPILER: the suite's C++ compiler. With the same compiler
# and a build directory as deep below the source as the suite's, the module's compiles have the
# suite's command lines, and ccache serves them even in a fresh clone with a cold cache.
set -euo pipefail
source=$1; python=$2; mpiexec=$3; pip_build=${4:-}; library=${5:-}; compiler=${6:-}
tmp=$(mktemp -d "${DISTCKPT_TEST_TMP:-/tmp}/pip.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
settings=()
[ -z "$pip_build" ] || settings+=(--config-settings=build-dir="$pip_build")
[ -z "$library" ] || settings+=(--config-settings=cmake.define.DISTCKPT_PREBUILT_LIBRARY="$library")
[ -z "$compiler" ] || settings+=(--config-settings=cmake.define.CMAKE_CXX_COMPILER="$compiler")
if ! "$python" -m pip install -q --no-build-isolation --no-deps --target "$tmp/site" \
     "${settings[@]}" "$source" >"$tmp/pip.log" 2>&1; then
  echo "FAIL pip install"; tail -40 "$tmp/pip.log"; exit 1
fi
echo "ok   pip install --no-build-isolation . built and installed the package"
cat >"$tmp/train.py" <<'PY'
import sys
import torch
import distckpt

root, epochs = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = torch.nn.Linear(10, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
ckpt = distckpt.Checkpointer(root, keep_last=3, timeout=60)
start = 1
latest = ckpt.latest()
if latest:
    state = distckpt.load(latest)
    model.load_state_dict(state["model_state_dict"])
    optimizer.load_state_dict(state["optimizer_state_dict"])
    start = state["epoch"] + 1
for epoch in range(start, epochs + 1):
    torch.manual_seed(epoch)
    x = torch.randn(16, 10)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
    loss.backward()
    optimizer.step()
    ckpt.save({"epoch": epoch, "model_state_dict": model.state_dict(),
               "optimizer_state_dict": optimizer.state_dict(), "loss": loss.item()}, step=epoch)
    if ckpt.rank == 0:
        print(f"epoch {epoch} loss {loss.item():.9g}")
PY
run() { PYTHONPATH="$tmp/site" "$mpiexec" -np 2 --oversubscribe "$python" "$tmp/train.py" "$@"; }
run "$tmp/ref" 5 >"$tmp/ref.txt"
run "$tmp/ck" 3 >/dev/null
run "$tmp/ck" 5 >"$tmp/rest.txt"
if diff "$tmp/rest.txt" <(tail -2 "$tmp/ref.txt") >/dev/null &&
   [ "$(ls "$tmp/ck" | grep -c '^step-')" -eq 3 ]; then
  echo "ok   the README example with the installed package: resumed at epoch 4 identically, 3 kept"
else
  echo "FAIL resume with the installed package"; cat "$tmp/ref.txt" "$tmp/rest.txt"; exit 1
fi
