#!/usr/bin/env bash
# Test network for projectvm machines (fixed plan, others depend on it):
#   bridge  pvmbr0   10.213.0.1/24  in the root namespace (gateway; no NAT, no forwarding out)
#   netns   pvm-git  10.213.0.2/24  on veth pvmgit0 <-> eth0, joined to pvmbr0 (git + apt host)
# Machines get 10.213.0.16-250 on their own veths joined to pvmbr0 (done by the emulator).
#   usage: net.sh up|down|status        (idempotent, as root)
set -euo pipefail

BR=pvmbr0
BR_ADDR=10.213.0.1/24
NS=pvm-git
NS_ADDR=10.213.0.2/24
HOST_VETH=pvmgit0   # root-namespace end of the git host's veth

up() {
  if ! ip link show "$BR" >/dev/null 2>&1; then
    ip link add "$BR" type bridge
  fi
  # no STP delay: ports forward at once
  ip link set "$BR" type bridge stp_state 0 forward_delay 0 2>/dev/null || true
  if ! ip -4 addr show dev "$BR" | grep -q "inet ${BR_ADDR%/*}/"; then
    ip addr add "$BR_ADDR" dev "$BR"
  fi
  ip link set "$BR" up

  if [ ! -e "/run/netns/$NS" ]; then
    ip netns add "$NS"
  fi
  ip -n "$NS" link set lo up
  if ! ip link show "$HOST_VETH" >/dev/null 2>&1; then
    # a stale eth0 inside the namespace (peer lost) would block the add
    ip -n "$NS" link del eth0 2>/dev/null || true
    ip link add "$HOST_VETH" type veth peer name eth0 netns "$NS"
  fi
  ip link set "$HOST_VETH" master "$BR"
  ip link set "$HOST_VETH" up
  if ! ip -n "$NS" -4 addr show dev eth0 | grep -q "inet ${NS_ADDR%/*}/"; then
    ip -n "$NS" addr add "$NS_ADDR" dev eth0
  fi
  ip -n "$NS" link set eth0 up
  ip -n "$NS" route replace default via "${BR_ADDR%/*}" dev eth0
}

down() {
  ip link del "$HOST_VETH" 2>/dev/null || true
  if [ -e "/run/netns/$NS" ]; then
    ip netns del "$NS" || true
  fi
  ip link del "$BR" 2>/dev/null || true
}

status() {
  ip -br addr show dev "$BR" 2>/dev/null || echo "$BR: absent"
  if [ -e "/run/netns/$NS" ]; then ip -n "$NS" -br addr; else echo "$NS: absent"; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
