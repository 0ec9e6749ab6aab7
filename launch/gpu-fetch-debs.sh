#!/usr/bin/env bash
# Run here (with Debian's registry and launch/setup.sh done): downloads into .debs/ the .deb files
# that launch/gpu-check.sh unpacks on a GPU machine that has Python torch but no package
# registry, MPI or HDF5. Only what is needed travels (about 22 MB): the development packages,
# and the packages of every shared library that mpirun, orted, the MPI/PMIx plugins and
# parallel HDF5 load, minus the C and C++ runtime that every machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .debs && mkdir -p .debs
grep -qx '/.debs/' .git/info/exclude 2>/dev/null || echo '/.debs/' >> .git/info/exclude
dev="openmpi-bin openmpi-common libopenmpi-dev libhdf5-openmpi-dev libgtest-dev libxxhash-dev
  nlohmann-json3-dev libcli11-dev libevent-dev libhwloc-dev libpmix-dev"
arch=$(gcc -dumpmachine)
objects="/usr/bin/orterun /usr/bin/orted /usr/lib/$arch/openmpi/lib/openmpi3/*.so
  /usr/lib/$arch/pmix2/lib/pmix/*.so /usr/lib/$arch/hdf5/openmpi/libhdf5.so /usr/lib/$arch/libxxhash.so.0"
runtime=$(for f in $objects; do echo "$f"; ldd "$f" | awk '/=> \// {print $3}'; done | sort -u |
  xargs realpath | sed 'p; s|^/usr/|/|' | { xargs -n 50 dpkg -S 2>/dev/null || true; } | cut -d: -f1 | sort -u |
  grep -v -E '^(libc6|libgcc-s1|libstdc\+\+6|zlib1g)$')
(cd .debs && apt-get download $dev $runtime ibverbs-providers 2>&1 | grep -v '^Get:' | tail -n 2)
du -sh .debs
