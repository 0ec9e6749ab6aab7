#!/usr/bin/env bash
# A cluster of "hosts" on this machine, for multi-node runs and tests.
#
#   launch/cluster.sh up N     hosts h1..hN: each a network namespace with its own address on the
#                              bridge dckbr0 (10.77.0.0/24; this machine is 10.77.0.1) and, when
#                              a process is started through launch/netns-rsh, its own hostname
#   launch/cluster.sh down     removes the hosts, the bridge and their /etc/hosts lines
#   launch/cluster.sh kill HOST    kills every process of HOST (a machine that dies) and wipes its
#                              node-local directory (its memory is lost with it)
#   launch/cluster.sh link HOST up|down
#                              connects HOST to the bridge or cuts it off (a network link lost)
#   launch/cluster.sh mpirun ARGS...
#                              mpirun with the options that reach the hosts, e.g.
#                              launch/cluster.sh mpirun --host h1:2,h2:2 -np 4 prog
#
# All hosts see this machine's file system (the shared-storage case), except $LOCAL_MOUNT
# (/mnt/distckpt-local): every process started on host HOST through launch/netns-rsh sees there
# HOST's own node-local directory ($LOCAL_BASE/HOST), which no other host can see. Needs root;
# only addresses on the project's own bridge are used. Exit code 77 when namespaces cannot be
# made here.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BRIDGE=dckbr0
SUBNET=10.77.0
MARK="# distckpt-cluster"
LOCAL_BASE=${DISTCKPT_CLUSTER_LOCAL_BASE:-/tmp/distckpt-cluster-local}
LOCAL_MOUNT=/mnt/distckpt-local

die() { echo "cluster.sh: $*" >&2; exit "${2:-1}"; }

hosts() { ip netns list 2>/dev/null | awk '/^h[0-9]+( |$)/ {print $1}' | sort -V; }

# The host ends of the hosts' links (dckv1, dckv2, ...).
host_links() { ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2)} $2 ~ /^dckv[0-9]+$/ {print $2}'; }

down() {
  # A namespace lives on while a process is in it (a job's leftover, a stopped rank), and with it
  # its link: kill them first. The kernel then removes namespaces and links asynchronously, so
  # wait until the links are gone; "up" right after an earlier cluster would else find them.
  for h in $(hosts); do
    local pids
    pids=$(ip netns pids "$h" 2>/dev/null || true)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    ip netns delete "$h" 2>/dev/null || true
    rm -rf "${LOCAL_BASE:?}/$h"
  done
  for l in $(host_links); do ip link delete "$l" 2>/dev/null || true; done
  ip link delete "$BRIDGE" 2>/dev/null || true
  for _ in $(seq 100); do
    [ -z "$(host_links)" ] && ! ip link show "$BRIDGE" >/dev/null 2>&1 && break
    sleep 0.1
  done
  if grep -q "$MARK" /etc/hosts 2>/dev/null; then
    grep -v "$MARK" /etc/hosts >/etc/hosts.distckpt && cat /etc/hosts.distckpt >/etc/hosts
    rm -f /etc/hosts.distckpt
  fi
}

up() {
  local n=$1
  [[ $n =~ ^[1-9][0-9]?$ ]] || die "up needs a host count from 1 to 99, got '$n'" 2
  [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)" 77
  command -v ip >/dev/null || die "needs iproute2 (ip)" 77
  down
  ip link add "$BRIDGE" type bridge 2>/dev/null || die "cannot create a bridge here" 77
  ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq 1 "$n"); do
    local h=h$i addr=$SUBNET.$((10 + i))
    ip netns add "$h" || { down; die "cannot create network namespaces here" 77; }
    ip link add "dckv$i" type veth peer name eth0 netns "$h"
    ip link set "dckv$i" master "$BRIDGE" up
    ip -n "$h" addr add "$addr/24" dev eth0
    ip -n "$h" link set eth0 up
    ip -n "$h" link set lo up
    echo "$addr $h $MARK" >>/etc/hosts
    rm -rf "${LOCAL_BASE:?}/$h"
    mkdir -p "$LOCAL_BASE/$h"
  done
  mkdir -p "$LOCAL_MOUNT"
  echo "cluster: $n host(s) up: $(hosts | tr '\n' ' ')"
}

known() { ip netns list 2>/dev/null | grep -q "^$1\( \|$\)" || die "no host '$1' (cluster.sh up N first)" 2; }

kill_host() {
  known "$1"
  local pids
  pids=$(ip netns pids "$1")
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  rm -rf "${LOCAL_BASE:?}/$1"
  mkdir -p "$LOCAL_BASE/$1"
}

link() {
  known "$1"
  [[ ${2:-} =~ ^(up|down)$ ]] || die "link needs up or down, got '${2:-}'" 2
  ip -n "$1" link set eth0 "$2"
}

case "${1:-}" in
  up) up "${2:-}" ;;
  down) down ;;
  kill) kill_host "${2:-}" ;;
  link) link "${2:-}" "${3:-}" ;;
  mpirun)
    shift
    # TCP keepalive on the launcher's links: a host that falls silent ends the job in seconds.
    exec mpirun --mca plm_rsh_agent "$HERE/netns-rsh" --mca btl_tcp_if_include "$SUBNET.0/24" \
      --mca oob_tcp_if_include "$SUBNET.0/24" --mca oob_tcp_keepalive_time 2 \
      --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3 "$@"
    ;;
  *) die "usage: cluster.sh up N | down | kill HOST | link HOST up|down | mpirun ARGS..." 2 ;;
esac
