#!/usr/bin/env bash
# Test network for projectvm machines (fixed plan, others depend on it):
#   bridge  pvmbr0   10.213.0.1/24  in the root namespace (gateway; no NAT, no forwarding out)
#   netns   pvm-git  10.213.0.2/24  on veth pvmgit0 <-> eth0, joined to pvmbr0 (git + apt host)
#   netns   pvm-gcs  10.213.0.3/24  on veth pvmgcs0 <-> eth0, joined to pvmbr0 (Cloud Storage
#                                   emulator, fake-gcs-server on port 80; only the operator, in
#                                   the root namespace, talks to it)
#   netns   pvm-ingress 10.213.0.4/24 on veth pvming0 <-> eth0, joined to pvmbr0 (ingress
#                                   controller, Traefik on 443/80; it reaches the machines)
# Machines get 10.213.0.16-250 on their own veths joined to pvmbr0 (done by the emulator).
#   usage: net.sh up|down|status        (idempotent, as root)
set -euo pipefail

BR=pvmbr0
BR_ADDR=10.213.0.1/24
# namespace:address:root-namespace end of its veth
HOSTS=(pvm-git:10.213.0.2/24:pvmgit0 pvm-gcs:10.213.0.3/24:pvmgcs0 pvm-ingress:10.213.0.4/24:pvming0)

host_up() { # netns addr veth
  local ns=$1 addr=$2 veth=$3
  if [ ! -e "/run/netns/$ns" ]; then
    ip netns add "$ns"
  fi
  ip -n "$ns" link set lo up
  if ! ip link show "$veth" >/dev/null 2>&1; then
    # a stale eth0 inside the namespace (peer lost) would block the add
    ip -n "$ns" link del eth0 2>/dev/null || true
    ip link add "$veth" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$veth" master "$BR"
  ip link set "$veth" up
  if ! ip -n "$ns" -4 addr show dev eth0 | grep -q "inet ${addr%/*}/"; then
    ip -n "$ns" addr add "$addr" dev eth0
  fi
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace default via "${BR_ADDR%/*}" dev eth0
}

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
  local h
  for h in "${HOSTS[@]}"; do
    IFS=: read -r ns addr veth <<<"$h"
    host_up "$ns" "$addr" "$veth"
  done
}

down() {
  local h
  for h in "${HOSTS[@]}"; do
    IFS=: read -r ns _ veth <<<"$h"
    ip link del "$veth" 2>/dev/null || true
    if [ -e "/run/netns/$ns" ]; then
      ip netns del "$ns" || true
    fi
  done
  ip link del "$BR" 2>/dev/null || true
}

status() {
  ip -br addr show dev "$BR" 2>/dev/null || echo "$BR: absent"
  local h
  for h in "${HOSTS[@]}"; do
    IFS=: read -r ns _ _ <<<"$h"
    if [ -e "/run/netns/$ns" ]; then ip -n "$ns" -br addr | sed "s/^/$ns: /"; else echo "$ns: absent"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
