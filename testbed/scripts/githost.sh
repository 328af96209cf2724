#!/usr/bin/env bash
# The test "git + apt host" at 10.213.0.2 (netns pvm-git).
#   githost.sh ca                 create (once) the test CA + server cert; prints the CA dir
#   githost.sh ws-cert            create (once) a certificate for *.ws.pvm.test (Workspace hosts
#                                 behind the bed's ingress) from the test CA; prints its dir
#                                 (tls.crt, tls.key: the names a TLS Secret uses)
#   githost.sh apt-repo           build (once, cached) the local apt repo; prints its dir
#   githost.sh start STATE_DIR    net.sh up, then run gitserver.py in netns pvm-git:
#                                   https://10.213.0.2:443/{public,private}/NAME.git
#                                   (also on port 8443: a repository on a non-default port)
#                                   http://10.213.0.2:8081/apt/  (flat apt repo)
#                                   https://10.213.0.2/releases/FILE  (files of
#                                     $PROJECTVM_CACHE/testbed-releases: the code-server
#                                     release tarball build-rootfs.sh --release makes)
#                                 repos:  STATE_DIR/repos/{public,private}/NAME.git
#                                 tokens: STATE_DIR/tokens (one a line; re-read per request)
#                                 pid:    STATE_DIR/gitserver.pid   log: STATE_DIR/gitserver.log
#   githost.sh stop STATE_DIR
#   githost.sh status STATE_DIR
# env: PROJECTVM_CACHE (default ~/.cache/projectvm)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${PROJECTVM_CACHE:-$HOME/.cache/projectvm}
CA_DIR=$CACHE/testbed-ca
APT_DIR=$CACHE/testbed-apt
RELEASES_DIR=$CACHE/testbed-releases
NS=pvm-git
ADDR=10.213.0.2
# stdlib only: the system interpreter, never a version manager shim
PY=${PVM_PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || command -v python3)}
# packages for the local apt repo: not in the machine image; with their missing dependencies
APT_PKGS=(jq libjq1 libonig5 tree)

log() { echo "githost: $*" >&2; }

ensure_ca() {
  if [ -s "$CA_DIR/ca.crt" ] && [ -s "$CA_DIR/server.crt" ] && [ -s "$CA_DIR/server.key" ]; then
    return 0
  fi
  mkdir -p "$CACHE"
  local tmp
  tmp=$(mktemp -d "$CACHE/testbed-ca.tmp.XXXXXX")
  (
    cd "$tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout ca.key -out ca.crt -subj "/CN=projectvm test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr \
      -subj "/CN=git.pvm.test" 2>/dev/null
    cat > server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:git.pvm.test,IP:$ADDR,DNS:localhost,IP:127.0.0.1
EXT
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 3650 -sha256 -extfile server.ext -out server.crt 2>/dev/null
    rm -f server.csr server.ext ca.srl
    chmod 600 ca.key server.key
  )
  # another process may have won the race: keep the first complete CA
  if ! mv -T "$tmp" "$CA_DIR" 2>/dev/null; then rm -rf "$tmp"; fi
  log "created test CA in $CA_DIR"
}

WS_CERT_DIR=$CA_DIR/ws
ensure_ws_cert() {
  ensure_ca
  if [ -s "$WS_CERT_DIR/tls.crt" ] && [ -s "$WS_CERT_DIR/tls.key" ]; then return 0; fi
  local tmp
  tmp=$(mktemp -d "$CA_DIR/ws.tmp.XXXXXX")
  (
    cd "$tmp"
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout tls.key -out tls.csr \
      -subj "/CN=*.ws.pvm.test" 2>/dev/null
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
      'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
      'subjectAltName=DNS:*.ws.pvm.test,DNS:ws.pvm.test' >tls.ext
    openssl x509 -req -in tls.csr -CA "$CA_DIR/ca.crt" -CAkey "$CA_DIR/ca.key" -CAcreateserial \
      -CAserial "$tmp/ca.srl" -days 3650 -sha256 -extfile tls.ext -out tls.crt 2>/dev/null
    rm -f tls.csr tls.ext ca.srl
    chmod 600 tls.key
  )
  # another process may have won the race: keep the first complete one
  if ! mv -T "$tmp" "$WS_CERT_DIR" 2>/dev/null; then rm -rf "$tmp"; fi
  log "created the *.ws.pvm.test certificate in $WS_CERT_DIR"
}

ensure_apt_repo() {
  if [ -s "$APT_DIR/apt/Packages.gz" ] && [ -s "$APT_DIR/apt/Release" ]; then return 0; fi
  mkdir -p "$CACHE"
  local tmp
  tmp=$(mktemp -d "$CACHE/testbed-apt.tmp.XXXXXX")
  mkdir -p "$tmp/apt"
  (cd "$tmp/apt" && apt-get download "${APT_PKGS[@]}" >&2)
  (
    cd "$tmp/apt"
    dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null
    gzip -9nk Packages
    {
      echo "Origin: projectvm-testbed"
      echo "Label: projectvm-testbed"
      echo "Architectures: amd64 all"
      echo "Date: $(LC_ALL=C date -u -R)"
      echo "SHA256:"
      for f in Packages Packages.gz; do
        printf ' %s %s %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$(stat -c %s "$f")" "$f"
      done
    } > Release
  )
  rm -rf "$APT_DIR"
  mv -T "$tmp" "$APT_DIR"
  log "built apt repo in $APT_DIR/apt"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  local state=${1:?usage: githost.sh start STATE_DIR}
  mkdir -p "$state"
  state=$(cd "$state" && pwd)
  ensure_ca
  ensure_apt_repo
  "$HERE/net.sh" up
  mkdir -p "$state/repos/public" "$state/repos/private" "$RELEASES_DIR"
  [ -e "$state/tokens" ] || install -m 600 /dev/null "$state/tokens"
  if pid_alive "$state/gitserver.pid"; then
    log "already running (pid $(cat "$state/gitserver.pid"))"
  else
    # setsid: own session, so the caller's job control / signals do not reach it
    ip netns exec "$NS" setsid "$PY" "$HERE/gitserver.py" \
      --addr "$ADDR" --https-port 443 --https-port 8443 --http-port 8081 \
      --cert "$CA_DIR/server.crt" --key "$CA_DIR/server.key" \
      --repos "$state/repos" --tokens "$state/tokens" --apt-dir "$APT_DIR/apt" \
      --releases-dir "$RELEASES_DIR" \
      --pidfile "$state/gitserver.pid" \
      >>"$state/gitserver.log" 2>&1 < /dev/null &
    local i pid=$!
    for i in $(seq 1 100); do
      # our own server must be the one answering (another git host may hold the ports)
      if ! kill -0 "$pid" 2>/dev/null; then
        log "server exited; log tail:"; tail -n 20 "$state/gitserver.log" >&2; return 1
      fi
      [ -s "$state/gitserver.pid" ] || { sleep 0.1; continue; }
      if curl -fsS --max-time 1 -o /dev/null "http://$ADDR:8081/healthz" 2>/dev/null &&
         curl -fsS --max-time 1 --cacert "$CA_DIR/ca.crt" -o /dev/null "https://$ADDR/healthz" 2>/dev/null; then
        log "started (pid $(cat "$state/gitserver.pid" 2>/dev/null))"
        return 0
      fi
      sleep 0.1
    done
    log "server did not answer; log tail:"; tail -n 20 "$state/gitserver.log" >&2
    return 1
  fi
}

stop() {
  local state=${1:?usage: githost.sh stop STATE_DIR}
  local pidf=$state/gitserver.pid
  if pid_alive "$pidf"; then
    local pid; pid=$(cat "$pidf")
    kill "$pid"
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped (pid $pid)"
  fi
  rm -f "$pidf"
}

case "${1:-}" in
  ca) ensure_ca; echo "$CA_DIR" ;;
  ws-cert) ensure_ws_cert; echo "$WS_CERT_DIR" ;;
  apt-repo) ensure_apt_repo; echo "$APT_DIR/apt" ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  status) if pid_alive "${2:?STATE_DIR}/gitserver.pid"; then echo running; else echo stopped; exit 1; fi ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
