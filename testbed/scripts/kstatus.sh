#!/usr/bin/env bash
# Builds (once) and caches the kstatus judge used by the e2e tests: testbed/kstatus, a tiny Go
# program on the real kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus/status) that reads one
# object as JSON on stdin and prints {"status":...,"message":...}.
#
# The binary lands outside the repo, keyed by the cli-utils version testbed/kstatus/go.mod
# requires: ${PROJECTVM_CACHE:-$HOME/.cache/projectvm}/kstatus/<version>/kstatus.
# The LAST line of stdout is the binary's absolute path; all other output goes to stderr:
#     KSTATUS=$(testbed/scripts/kstatus.sh)
#
# Re-running with the binary cached is a no-op that does not invoke the Go tool at all.
# (Changing testbed/kstatus/main.go without bumping cli-utils: delete the cached binary.)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$HERE/../kstatus" && pwd)

log() { echo "kstatus: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

VERSION=$(awk '$1 == "sigs.k8s.io/cli-utils" {print $2; exit} $1 == "require" && $2 == "sigs.k8s.io/cli-utils" {print $3; exit}' "$SRC/go.mod")
[[ -n "$VERSION" ]] || die "no sigs.k8s.io/cli-utils requirement in $SRC/go.mod"

CACHE=${PROJECTVM_CACHE:-$HOME/.cache/projectvm}
ROOT=$CACHE/kstatus/$VERSION
OUT=$ROOT/kstatus

# Fast path: present -> print and leave (no locks, no go).
if [[ -x "$OUT" ]]; then
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || die "go is not on PATH"
mkdir -p "$ROOT"

# Serialise concurrent first runs (parallel test jobs); re-check once the lock is ours.
exec 9>"$CACHE/kstatus/.build.lock"
flock 9
if [[ ! -x "$OUT" ]]; then
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
  t0=$SECONDS
  log "building $OUT from sigs.k8s.io/cli-utils@$VERSION"
  (cd "$SRC" && nice -n 10 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$OUT.tmp" . >&2) \
    || die "go build of $SRC failed"
  mv -f "$OUT.tmp" "$OUT"
  log "built in $((SECONDS - t0))s"
fi
echo '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"probe","generation":1}}' | "$OUT" >/dev/null \
  || die "$OUT does not run"
echo "$OUT"
