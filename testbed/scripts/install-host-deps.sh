#!/usr/bin/env bash
# Install (idempotently) every Debian package the projectvm test bed needs on the host.
# Warm run (everything present): ~1 s, no network.
#   usage: install-host-deps.sh            (as root)
#   env:   PVM_EXTRA_PKGS="a b"            extra packages to add
set -euo pipefail

PKGS=(
  # machines: nspawn, rootfs builder, networking
  systemd-container mmdebstrap iproute2
  # git host, CA, apt repo tooling
  openssl git python3 dpkg-dev
  # code-server install on the host (ripgrep cache trick + native modules)
  ripgrep libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev pkg-config build-essential
  # browser tests (certutil: an NSS db trusting the bed CA for the HTTPS ingress test)
  chromium chromium-driver libnss3-tools
  # relays the API server into the ingress controller's namespace (testbed/scripts/traefik.sh)
  socat
  # clients used by the tests; sshd for the SSH edge's own test (never started as a service)
  openssh-client openssh-server sudo curl jq ca-certificates
  # runs docs/argocd-health.lua in tests/gitops_health.rs
  lua5.4
  # promtool: checks and unit-tests the chart's alert rules in tests/chart_monitoring.rs
  prometheus
)
# shellcheck disable=SC2206
[ -n "${PVM_EXTRA_PKGS:-}" ] && PKGS+=(${PVM_EXTRA_PKGS})

if [ "$(id -u)" != 0 ]; then
  echo "install-host-deps.sh: must run as root" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-host-deps: all ${#PKGS[@]} packages present" >&2
  exit 0
fi
echo "install-host-deps: installing: ${missing[*]}" >&2

export DEBIAN_FRONTEND=noninteractive
# Packages must not start services on the host (openssh-server would start sshd).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  trap 'rm -f "$policy"' EXIT
fi
# Refresh the package lists only when they are older than a day (or absent).
stamp=/var/lib/apt/lists
fresh=$(find "$stamp" -maxdepth 1 -name '*_InRelease' -mmin -1440 2>/dev/null | head -n1)
if [ -z "$fresh" ]; then
  apt-get update -qq
fi
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
  # lists may be stale in a way the age check could not see: retry once after an update
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
echo "install-host-deps: done" >&2
