#!/usr/bin/env bash
# The test bed's Cloud Storage: fake-gcs-server (github.com/fsouza/fake-gcs-server, from the Go
# module proxy) serving the JSON/upload API on http://10.213.0.3:80 in netns pvm-gcs.
#   fake-gcs.sh build                   build (once, cached) the binary; the LAST stdout line
#                                       is its absolute path (no Go tool run when cached)
#   fake-gcs.sh start STATE_DIR         net.sh up, then run it in netns pvm-gcs
#                                       data: STATE_DIR/data  pid: STATE_DIR/fake-gcs.pid
#                                       log:  STATE_DIR/fake-gcs.log
#   fake-gcs.sh bucket STATE_DIR NAME   create bucket NAME unless it exists
#   fake-gcs.sh stop STATE_DIR
#   fake-gcs.sh status STATE_DIR
# Port 80, because the google-cloud-storage client sends a Host header without the port and
# fake-gcs-server builds the resumable upload's session URL from it.
# env: PROJECTVM_CACHE (default ~/.cache/projectvm), FAKE_GCS_VERSION (default v1.56.1)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSION=${FAKE_GCS_VERSION:-v1.56.1}
CACHE=${PROJECTVM_CACHE:-$HOME/.cache/projectvm}
ROOT=$CACHE/fake-gcs-server/$VERSION
BIN=$ROOT/fake-gcs-server
NS=pvm-gcs
ADDR=10.213.0.3
URL=http://$ADDR

log() { echo "fake-gcs: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

build() {
  # Fast path: cached -> no lock, no go.
  if [[ -x $BIN ]]; then echo "$BIN"; return 0; fi
  command -v go >/dev/null || die "go is not on PATH"
  mkdir -p "$ROOT"
  # Serialise concurrent first runs (parallel test jobs); re-check once the lock is ours.
  exec 9>"$CACHE/fake-gcs-server/.build.lock"
  flock 9
  if [[ ! -x $BIN ]]; then
    local t0=$SECONDS tmp
    tmp=$(mktemp -d "$ROOT/gobin.XXXXXX")
    log "building github.com/fsouza/fake-gcs-server@$VERSION (about a minute cold)"
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN=$tmp \
      nice -n 10 go install -trimpath -ldflags "-s -w" "github.com/fsouza/fake-gcs-server@$VERSION" >&2 \
      || { rm -rf "$tmp"; die "go install of fake-gcs-server@$VERSION failed"; }
    mv -f "$tmp/fake-gcs-server" "$BIN"
    rm -rf "$tmp"
    log "built in $((SECONDS - t0))s"
  fi
  exec 9>&-
  echo "$BIN"
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  local state=${1:?usage: fake-gcs.sh start STATE_DIR}
  mkdir -p "$state"
  state=$(cd "$state" && pwd)
  local bin
  bin=$(build | tail -n 1)
  "$HERE/net.sh" up
  if pid_alive "$state/fake-gcs.pid"; then
    log "already running (pid $(cat "$state/fake-gcs.pid"))"
    return 0
  fi
  # Filesystem backend: with the memory backend every stored object stays in the server's
  # RAM (400-500 MB after 100 MiB of artifacts); on disk, the bed's state dir holds them. An
  # upload in progress is held in RAM with either backend (peak ~350 MB for a 50 MiB one).
  mkdir -p "$state/data"
  # setsid: own session, so the caller's job control / signals do not reach it
  ip netns exec "$NS" setsid "$bin" -scheme http -host 0.0.0.0 -port 80 \
    -backend filesystem -filesystem-root "$state/data" -log-level warn \
    >>"$state/fake-gcs.log" 2>&1 </dev/null &
  local i pid=$!
  echo "$pid" >"$state/fake-gcs.pid"
  for i in $(seq 1 100); do
    # our own server must be the one answering (another may hold the address)
    if ! kill -0 "$pid" 2>/dev/null; then
      log "server exited; log tail:"; tail -n 20 "$state/fake-gcs.log" >&2; rm -f "$state/fake-gcs.pid"; return 1
    fi
    if curl -fsS --max-time 1 -o /dev/null "$URL/storage/v1/b" 2>/dev/null; then
      log "started (pid $pid) at $URL"
      return 0
    fi
    sleep 0.1
  done
  log "server did not answer at $URL; log tail:"; tail -n 20 "$state/fake-gcs.log" >&2
  return 1
}

bucket() {
  local name=${2:?usage: fake-gcs.sh bucket STATE_DIR NAME}
  pid_alive "${1:?STATE_DIR}/fake-gcs.pid" || die "not running (fake-gcs.sh start $1)"
  local code
  code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$URL/storage/v1/b/$name")
  case "$code" in
    200) return 0 ;;
    404) ;;
    *) die "looking up bucket $name: HTTP $code" ;;
  esac
  code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
    -d "{\"name\":\"$name\"}" "$URL/storage/v1/b?project=testbed")
  case "$code" in
    200|409) log "bucket $name ready" ;; # 409: created meanwhile
    *) die "creating bucket $name: HTTP $code" ;;
  esac
}

stop() {
  local state=${1:?usage: fake-gcs.sh stop STATE_DIR}
  local pidf=$state/fake-gcs.pid
  if pid_alive "$pidf"; then
    local pid i; pid=$(cat "$pidf")
    kill "$pid"
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped (pid $pid)"
  fi
  rm -f "$pidf"
}

case "${1:-}" in
  build) build ;;
  start) start "${2:-}" ;;
  bucket) bucket "${2:-}" "${3:-}" ;;
  stop) stop "${2:-}" ;;
  status) if pid_alive "${2:?STATE_DIR}/fake-gcs.pid"; then echo running; else echo stopped; exit 1; fi ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
