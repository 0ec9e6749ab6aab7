# Sourced on a GPU machine without a package registry: where .debs/ holds the Debian packages
# fetched by launch/gpu-fetch-debs.sh, unpacks them into .deps/ (not into /) and points PATH,
# the loader, Open MPI, PMIx and CMake at them.
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
if [ -d "$ROOT/.debs" ]; then
  mkdir -p "$ROOT/.deps"
  for f in "$ROOT"/.debs/*.deb; do dpkg -x "$f" "$ROOT/.deps"; done
  D=$ROOT/.deps/usr A=$ROOT/.deps/usr/lib/x86_64-linux-gnu
  # Debian makes mpirun/mpicc/h5pcc with update-alternatives, which dpkg -x does not run.
  ln -sf orterun "$D/bin/mpirun"; ln -sf opal_wrapper "$D/bin/mpicc"
  sed "s|^prefix=\"/usr\"|prefix=\"$D\"|" "$D/bin/h5pcc.openmpi" > "$D/bin/h5pcc"
  chmod +x "$D/bin/h5pcc"
  export PATH=$D/bin:$PATH OPAL_PREFIX=$D CPATH=$D/include:${CPATH:-}
  export LD_LIBRARY_PATH=$A:$A/openmpi/lib:$A/hdf5/openmpi:${LD_LIBRARY_PATH:-}
  export PMIX_MCA_mca_base_component_path=$A/pmix2/lib/pmix PMIX_MCA_pcompress_base_silence_warning=1
  export CMAKE_PREFIX_PATH=$D:$A/cmake:${CMAKE_PREFIX_PATH:-}
fi
