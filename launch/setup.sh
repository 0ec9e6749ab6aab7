#!/usr/bin/env bash
# Installs what distckpt needs (Debian packages, the PyPI torch wheel) and builds it.
source "$(dirname "$0")/common.sh"
setup
build "$@"
