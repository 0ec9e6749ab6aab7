#!/usr/bin/env bash
# mpirun with the settings distckpt's scripts use: works as root and with more ranks than cores.
# usage: launch/mpirun.sh -np 4 build/distckpt-train --ckpt-dir ckpts --steps 20
source "$(dirname "$0")/common.sh"
exec mpirun --oversubscribe "$@"
