# Shared by the launch scripts: install what is missing, build into build/, run MPI as root.
# Source it; it defines functions and sets strict mode.
set -euo pipefail
DISTCKPT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$DISTCKPT_ROOT/build}
PYTHON=${PYTHON:-python3}
APT_PACKAGES=(g++ cmake ninja-build ccache python3 python3-pip openmpi-bin libopenmpi-dev
  libhdf5-openmpi-dev hdf5-tools libgtest-dev libxxhash-dev nlohmann-json3-dev libcli11-dev clang
  libclang-rt-14-dev iproute2 util-linux python3-dev)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# install_apt_packages [PACKAGE...]: those missing of the given ones (default: all of them).
install_apt_packages() {
  local missing=() wanted=("$@")
  [ ${#wanted[@]} -eq 0 ] && wanted=("${APT_PACKAGES[@]}")
  for p in "${wanted[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    return 1
  fi
  say "installing Debian packages: ${missing[*]}"
  [ -n "${APT_UPDATED:-}" ] || apt-get update -q
  APT_UPDATED=1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

pip_install() {
  # Debian's own Python refuses system-wide pip installs (PEP 668) unless told otherwise.
  "$PYTHON" -m pip install -q "$@" 2>/dev/null ||
    "$PYTHON" -m pip install -q --break-system-packages "$@"
}

install_python_packages() {
  local need=()
  "$PYTHON" -c 'import torch' 2>/dev/null || need+=(torch)
  "$PYTHON" -c 'import numpy' 2>/dev/null || need+=(numpy)
  "$PYTHON" -c 'import h5py' 2>/dev/null || need+=(h5py)
  "$PYTHON" -c 'import xxhash' 2>/dev/null || need+=(xxhash)
  "$PYTHON" -c 'import safetensors' 2>/dev/null || need+=(safetensors)
  "$PYTHON" -c 'import transformers' 2>/dev/null || need+=(transformers)
  "$PYTHON" -c 'import pytest' 2>/dev/null || need+=(pytest)
  "$PYTHON" -c 'import scikit_build_core' 2>/dev/null || need+=(scikit-build-core)
  [ ${#need[@]} -eq 0 ] && return 0
  say "installing Python packages from PyPI: ${need[*]} (the torch wheel is several GB)"
  pip_install "${need[@]}"
}

setup() {
  # Machines without a package registry (the GPU machine) bring their own (launch/gpu-env.sh).
  [ "${DISTCKPT_SKIP_SETUP:-0}" = 1 ] && return 0
  # pip first where it is missing (a few MB), so that the torch wheel can download while the
  # other Debian packages install.
  if ! "$PYTHON" -m pip --version >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    install_apt_packages python3 python3-pip
  fi
  if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    # pip needs nothing from apt here: the torch wheel downloads while Debian's packages install.
    install_python_packages &
    local pip_job=$!
    install_apt_packages || { wait "$pip_job" || true; return 1; }
    wait "$pip_job"
  else
    install_apt_packages
    install_python_packages
  fi
}

build() {
  say "building distckpt (Release) into $BUILD_DIR"
  export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
  # Paths relative to the checkout, so that a fresh clone elsewhere reuses the cache.
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$DISTCKPT_ROOT}
  export CCACHE_INODECACHE=${CCACHE_INODECACHE:-true}  # headers hashed once per inode, not per hit
  if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    cmake -S "$DISTCKPT_ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DPython3_EXECUTABLE="$(command -v "$PYTHON")" "$@"
  fi
  cmake --build "$BUILD_DIR" -j "$(env -u OMP_NUM_THREADS nproc)"
}

# MPI as root needs explicit consent; more ranks than cores need oversubscription; LibTorch's
# thread pool would oversubscribe small machines.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
