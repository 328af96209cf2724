#!/usr/bin/env bash
# The test bed's ingress controller: Traefik (github.com/traefik/traefik/v3, from the Go module
# proxy) run outside the cluster in netns pvm-ingress at 10.213.0.4, its Kubernetes Ingress
# provider reading the bed's API server with the admin kubeconfig's client certificate
# (relayed into its namespace over a Unix socket: the API server listens on 127.0.0.1 only).
# The build needs a wrapper module (Traefik's go.mod has replace directives) and three local
# stand-ins for modules the proxy does not serve (see build()).
#   traefik.sh build                  build (once, cached) the binary; the LAST stdout line is
#                                     its absolute path (no Go tool run when cached)
#   traefik.sh cert                   make (once, cached) the wildcard *.ws.pvm.test certificate
#                                     from the bed's test CA; prints its directory
#   traefik.sh start STATE_DIR        net.sh up, IngressClass "traefik", then Traefik in netns
#                                     pvm-ingress: https on 443 (TLS from each Ingress's Secret),
#                                     http on 80 redirects there; needs STATE_DIR/cp/admin.kubeconfig
#                                     config: STATE_DIR/ingress/  pid: STATE_DIR/traefik.pid
#                                     log:    STATE_DIR/traefik.log
#   traefik.sh stop STATE_DIR
#   traefik.sh status STATE_DIR
# env: PROJECTVM_CACHE (default ~/.cache/projectvm), TRAEFIK_VERSION (default v3.7.13),
#      KUBECTL (default: kubectl from k8s-binaries.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSION=${TRAEFIK_VERSION:-v3.7.13}
CACHE=${PROJECTVM_CACHE:-$HOME/.cache/projectvm}
ROOT=$CACHE/traefik/$VERSION
BIN=$ROOT/traefik
CA_DIR=$CACHE/testbed-ca
CERT_DIR=$CACHE/testbed-ca/ws
NS=pvm-ingress
ADDR=10.213.0.4
log() { echo "traefik: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Modules Traefik's graph names that the module proxy does not serve (403 "not available"),
# all of them DNS-provider SDKs for ACME DNS challenges; lego's providers using them are cut
# from the build (an ACME DNS challenge by those providers then says "not in this build").
UNSERVED=(
  github.com/akamai/AkamaiOPEN-edgegrid-golang github.com/aziontech/azionapi-go-sdk
  github.com/dnsimple/dnsimple-go github.com/go-acme/alidns-20150109 github.com/go-acme/esa-20240910
  github.com/go-acme/tencentclouddnspod github.com/go-acme/tencentedgdeone
  github.com/huaweicloud/huaweicloud-sdk-go-v3 github.com/nrdcg/oci-go-sdk
  github.com/regfish/regfish-dnsapi-go github.com/sacloud/ github.com/ucloud/ucloud-sdk-go
  github.com/yandex-cloud/go-sdk
)

moddir_of() { # module@version -> its extracted directory in the module cache
  GOFLAGS= go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
}

build() {
  # Fast path: cached -> no lock, no go.
  if [[ -x $BIN ]]; then echo "$BIN"; return 0; fi
  command -v go >/dev/null || die "go is not on PATH"
  mkdir -p "$ROOT"
  # Serialise concurrent first runs (parallel test jobs); re-check once the lock is ours.
  exec 9>"$CACHE/traefik/.build.lock"
  flock 9
  if [[ ! -x $BIN ]]; then
    local t0=$SECONDS src=$ROOT/src
    rm -rf "$src"
    mkdir -p "$src/ext"
    log "building github.com/traefik/traefik/v3@$VERSION (several minutes cold)"
    local info gomod moddir
    info=$(cd "$src" && GOFLAGS= go mod download -json "github.com/traefik/traefik/v3@$VERSION")
    gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$info")
    moddir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$info")
    [[ -f "$gomod" && -f "$moddir/go.sum" ]] || die "could not download github.com/traefik/traefik/v3@$VERSION"

    # 1. Traefik's dynamic-config extension module is a local directory that is not part of
    #    the published module; the open-source build embeds two empty structs from it.
    printf 'module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24\n' >"$src/ext/go.mod"
    cat >"$src/ext/ext.go" <<'EOF'
// Package ext stands in for Traefik's unpublished dynamic-configuration extension module,
// which the open-source build embeds as empty structs.
package ext

// HTTP extends dynamic.HTTP (nothing in this build).
type HTTP struct{}

// Router extends dynamic.Router (nothing in this build).
type Router struct{}
EOF

    # 2. lego (ACME) without the DNS providers whose SDKs the proxy does not serve.
    local lego_ver lego_dir pkgs=() m d
    lego_ver=$(awk '$1 == "github.com/go-acme/lego/v5" {print $2; exit}' "$gomod")
    [[ -n $lego_ver ]] || die "no github.com/go-acme/lego/v5 in Traefik's go.mod"
    lego_dir=$(cd "$src" && moddir_of "github.com/go-acme/lego/v5@$lego_ver")
    [[ -d $lego_dir ]] || die "could not download github.com/go-acme/lego/v5@$lego_ver"
    cp -r "$lego_dir" "$src/lego"
    chmod -R u+w "$src/lego"
    for d in "$src"/lego/providers/dns/*/; do
      for m in "${UNSERVED[@]}"; do
        if grep -rqsF --include='*.go' "\"$m" "$d"; then pkgs+=("$(basename "$d")"); break; fi
      done
    done
    local gen=$src/lego/providers/dns/zz_gen_dns_providers.go p
    for p in "${pkgs[@]}"; do
      sed -i -e "\|\"github.com/go-acme/lego/v5/providers/dns/$p\"|d" \
        -e "s|return $p\.NewDNSProvider()|return nil, fmt.Errorf(\"DNS provider %s is not in this build\", name)|" "$gen"
    done
    log "lego $lego_ver without DNS providers: ${pkgs[*]}"

    # 3. basic/digest auth: Traefik uses its fork of github.com/abbot/go-http-auth, which the
    #    proxy does not serve; upstream v0.4.0 plus the two functions the fork adds.
    local auth_dir
    auth_dir=$(cd "$src" && moddir_of "github.com/abbot/go-http-auth@v0.4.0")
    [[ -d $auth_dir ]] || die "could not download github.com/abbot/go-http-auth@v0.4.0"
    cp -r "$auth_dir" "$src/go-http-auth"
    chmod -R u+w "$src/go-http-auth"
    [[ -f $src/go-http-auth/go.mod ]] || printf 'module github.com/abbot/go-http-auth\n\ngo 1.12\n' >"$src/go-http-auth/go.mod"
    cat >"$src/go-http-auth/projectvm_additions.go" <<'EOF'
package auth

import (
	"fmt"
	"net/http"
	"strings"
)

// CheckSecret reports whether password matches secret, an htpasswd-style hash, with the
// same comparison BasicAuth.CheckAuth makes.
func CheckSecret(password, secret string) bool {
	compare := compareFuncs[0].compare
	for _, cmp := range compareFuncs[1:] {
		if strings.HasPrefix(secret, cmp.prefix) {
			compare = cmp.compare
			break
		}
	}
	return compare([]byte(secret), []byte(password)) == nil
}

// RequireAuthStale answers like RequireAuth, telling the client its nonce was stale.
func (a *DigestAuth) RequireAuthStale(w http.ResponseWriter, r *http.Request) {
	if len(a.clients) > a.ClientCacheSize+a.ClientCacheTolerance {
		a.Purge(a.ClientCacheTolerance * 2)
	}
	nonce := RandomKey()
	a.clients[nonce] = &digest_client{nc: 0, last_seen: nowNano()}
	w.Header().Set(contentType, a.Headers.V().UnauthContentType)
	w.Header().Set(a.Headers.V().Authenticate,
		fmt.Sprintf(`Digest realm="%s", nonce="%s", opaque="%s", algorithm="MD5", qop="auth", stale=true`,
			a.Realm, nonce, a.Opaque))
	w.WriteHeader(a.Headers.V().UnauthCode)
	_, _ = w.Write([]byte(a.Headers.V().UnauthResponse))
}
EOF
    printf 'package auth\n\nimport "time"\n\nfunc nowNano() int64 { return time.Now().UnixNano() }\n' \
      >"$src/go-http-auth/projectvm_time.go"

    # 4. The wrapper module: Traefik's replace directives (which `go install pkg@version`
    #    refuses) with the three above in place of theirs.
    local godir remote
    godir=$(awk '/^go[[:space:]]/ {print $2; exit}' "$gomod")
    remote=$(awk '
        /^replace[[:space:]]*\(/ {inrep=1; next}
        inrep && /^\)/ {inrep=0; next}
        /^replace[[:space:]]+[^(]/ {sub(/^replace[[:space:]]+/, ""); print; next}
        inrep && NF {sub(/^[[:space:]]+/, ""); print}
      ' "$gomod" | awk '$0 !~ /=>[[:space:]]*\./ && $1 !~ /^\/\// && $1 != "github.com/abbot/go-http-auth"')
    {
      echo "// generated by testbed/scripts/traefik.sh"
      echo "module projectvm.test/traefik-wrapper"
      echo
      echo "go $godir"
      echo
      echo "require ("
      echo "	github.com/traefik/traefik/v3 $VERSION"
      echo "	github.com/traefik/traefik/dynamic/ext v0.0.0-00010101000000-000000000000"
      echo ")"
      echo
      echo "replace ("
      echo "	github.com/traefik/traefik/dynamic/ext => ./ext"
      echo "	github.com/go-acme/lego/v5 => ./lego"
      echo "	github.com/abbot/go-http-auth => ./go-http-auth"
      [[ -z "$remote" ]] || sed 's/^/\t/' <<<"$remote"
      echo ")"
      # the same exclude Traefik needs to resolve an ambiguous import
      grep -E '^exclude[[:space:]]' "$gomod" || true
    } >"$src/go.mod"
    cat >"$src/tools.go" <<'EOF'
//go:build tools

// Package tools only pins the main package this wrapper module builds.
package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
EOF
    # Traefik's own go.sum covers its dependency graph (the wrapper resolves the same one).
    cp "$moddir/go.sum" "$src/go.sum"
    (cd "$src" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod tidy -e >"$src/tidy.log" 2>&1) \
      || { tail -n 20 "$src/tidy.log" >&2; die "go mod tidy of the traefik wrapper failed"; }
    local tmp
    tmp=$(mktemp -d "$ROOT/gobin.XXXXXX")
    (cd "$src" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
      nice -n 19 go build -trimpath -o "$tmp/traefik" \
        -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$VERSION" \
        github.com/traefik/traefik/v3/cmd/traefik >&2) \
      || { rm -rf "$tmp"; die "go build of traefik@$VERSION failed"; }
    mv -f "$tmp/traefik" "$BIN"
    rm -rf "$tmp"
    log "built in $((SECONDS - t0))s ($(du -h "$BIN" | cut -f1))"
  fi
  exec 9>&-
  echo "$BIN"
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() { # pidfile
  local pidf=$1 pid i
  if pid_alive "$pidf"; then
    pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pidf"
}

start() {
  local state=${1:?usage: traefik.sh start STATE_DIR}
  mkdir -p "$state"
  state=$(cd "$state" && pwd)
  local admin=$state/cp/admin.kubeconfig dir=$state/ingress
  [[ -s $admin ]] || die "no control plane kubeconfig at $admin (start the control plane first)"
  local kubectl=${KUBECTL:-kubectl}
  command -v "$kubectl" >/dev/null || kubectl=$("$HERE/k8s-binaries.sh" | tail -n 1)/kubectl
  command -v socat >/dev/null || die "socat is not installed (testbed/scripts/install-host-deps.sh)"
  local bin certdir
  bin=$(build | tail -n 1)
  certdir=$("$HERE/githost.sh" ws-cert | tail -n 1)
  "$HERE/net.sh" up
  mkdir -p "$dir"
  # The IngressClass a user's cluster has for this controller.
  printf '%s\n' 'apiVersion: networking.k8s.io/v1' 'kind: IngressClass' 'metadata: {name: traefik}' \
    'spec: {controller: traefik.io/ingress-controller}' | KUBECONFIG=$admin "$kubectl" apply -f - >/dev/null
  if pid_alive "$state/traefik.pid"; then
    log "already running (pid $(cat "$state/traefik.pid"))"
    return 0
  fi
  # The API server listens on 127.0.0.1 of the root namespace only (and its certificate names
  # 127.0.0.1). Traefik, in its own namespace, reaches it on that namespace's 127.0.0.1:PORT,
  # relayed through a Unix socket (a file, seen from both namespaces); it is never exposed
  # on the bed network.
  local server port sock=$dir/api.sock
  server=$(KUBECONFIG=$admin "$kubectl" config view --raw -o jsonpath='{.clusters[0].cluster.server}')
  port=${server##*:}
  [[ $server == https://127.0.0.1:* && $port =~ ^[0-9]+$ ]] || die "unexpected API server address $server"
  (( ${#sock} < 100 )) || die "state dir path too long for a Unix socket: $sock"
  stop_pid "$dir/relay-root.pid"
  stop_pid "$dir/relay-ns.pid"
  rm -f "$sock"
  setsid socat "UNIX-LISTEN:$sock,fork,mode=600" "TCP:127.0.0.1:$port" \
    >>"$dir/relay.log" 2>&1 </dev/null &
  echo $! >"$dir/relay-root.pid"
  ip netns exec "$NS" setsid socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$sock" \
    >>"$dir/relay.log" 2>&1 </dev/null &
  echo $! >"$dir/relay-ns.pid"
  # Traefik's Ingress provider outside a cluster reads KUBECONFIG: here the admin one (client
  # certificate). Only Ingresses of class "traefik"; it publishes its address in their
  # status. TLS comes from each Ingress's own Secret; a host without one gets Traefik's
  # self-signed default certificate, which no client trusts.
  cat >"$dir/traefik.yml" <<YAML
entryPoints:
  web:
    address: "$ADDR:80"
    http:
      redirections:
        entryPoint:
          to: websecure
          scheme: https
  websecure:
    address: "$ADDR:443"
    http:
      tls: {}
providers:
  kubernetesIngress:
    ingressClass: traefik
    ingressEndpoint:
      ip: "$ADDR"
    throttleDuration: 0s
log:
  level: INFO
  noColor: true
accessLog:
  filePath: "$dir/access.log"
global:
  checkNewVersion: false
  sendAnonymousUsage: false
YAML
  ip netns exec "$NS" env -i PATH=/usr/bin:/bin HOME="$dir" KUBECONFIG="$admin" \
    setsid "$bin" --configFile="$dir/traefik.yml" >>"$state/traefik.log" 2>&1 </dev/null &
  local i pid=$!
  echo "$pid" >"$state/traefik.pid"
  for i in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "traefik exited; log tail:"
      tail -n 20 "$state/traefik.log" >&2
      rm -f "$state/traefik.pid"
      return 1
    fi
    # Traefik answers: plain http is redirected to https
    if [[ $(curl -sS --max-time 1 -o /dev/null -w '%{http_code}' "http://$ADDR/" 2>/dev/null) =~ ^30[1278]$ ]]; then
      log "started (pid $pid) at https://$ADDR (certificate for *.ws.pvm.test in $certdir)"
      return 0
    fi
    sleep 0.2
  done
  log "traefik did not answer at http://$ADDR within 30s; log tail:"
  tail -n 20 "$state/traefik.log" >&2
  return 1
}

stop() {
  local state=${1:?usage: traefik.sh stop STATE_DIR}
  if pid_alive "$state/traefik.pid"; then log "stopping (pid $(cat "$state/traefik.pid"))"; fi
  stop_pid "$state/traefik.pid"
  stop_pid "$state/ingress/relay-ns.pid"
  stop_pid "$state/ingress/relay-root.pid"
  rm -f "$state/ingress/api.sock"
}

case "${1:-}" in
  build) build ;;
  cert) "$HERE/githost.sh" ws-cert ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  status) if pid_alive "${2:?STATE_DIR}/traefik.pid"; then echo running; else echo stopped; exit 1; fi ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
