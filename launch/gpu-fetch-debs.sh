#!/usr/bin/env bash
# Run here (with Debian's registry): downloads the .deb files that launch/gpu-check.sh unpacks on
# a GPU machine that has Python torch but no package registry, MPI or HDF5.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .debs
grep -qx '/.debs/' .git/info/exclude 2>/dev/null || echo '/.debs/' >> .git/info/exclude
pkgs="openmpi-bin libopenmpi-dev libhdf5-openmpi-dev libgtest-dev libxxhash-dev nlohmann-json3-dev ninja-build"
# The packages and every library they pull in, minus what a base system has.
deps=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances $pkgs | grep '^\w' | sort -u | grep -v -E '^(libc6|libgcc-s1|libstdc\+\+6|gcc-12-base|debconf|perl-base|dpkg|tar|zlib1g)$')
(cd .debs && apt-get download $deps 2>&1 | tail -n 2)
du -sh .debs
