#!/usr/bin/env bash
# Runs the whole test suite: unit and integration tests, then the end-to-end suite on the
# local test bed (real control plane, Compute Engine emulator with real machines, HTTPS
# git, helm, kubectl, headless Chromium). Needs root (network namespaces, nspawn): it re-runs
# itself with sudo when started as a user.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
as_root "$@"
tool_path
STATE=${PROJECTVM_TESTBED_STATE:-/tmp/projectvm-testbed}

testbed/scripts/install-host-deps.sh
(cd tests/browser && npm ci --no-audit --no-fund --silent)

echo "=== unit and integration tests"
# The emulator's real-machine test and the SSH edge's test need the machine image, the
# test network and sshd; they run here, not skipped.
PROJECTVM_ROOTFS=$(testbed/scripts/build-rootfs.sh)
export PROJECTVM_ROOTFS
testbed/scripts/net.sh up
# tests/storage_contract.rs runs fake-gcs-server (built once from the Go module proxy, cached).
testbed/scripts/fake-gcs.sh build >/dev/null
cargo test --workspace --locked

echo "=== end-to-end tests (test bed in $STATE)"
testbed/bed.sh down "$STATE" >/dev/null 2>&1 || true
trap 'testbed/bed.sh down "$STATE"' EXIT
testbed/bed.sh up "$STATE"
PROJECTVM_TESTBED=$STATE cargo test --locked -p projectvm --test e2e -- --ignored --test-threads=4
