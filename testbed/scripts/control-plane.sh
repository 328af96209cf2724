#!/usr/bin/env bash
# A real, local Kubernetes control plane for the test bed: etcd + kube-apiserver +
# kube-controller-manager on loopback, all state in one directory.
#
#   control-plane.sh up   DIR   start (fresh etcd data), wait until ready
#   control-plane.sh down DIR   stop everything started from DIR, drop etcd data (idempotent)
#   control-plane.sh env  DIR   print `export KUBECONFIG=...` and `export PATH=...`
#
# After `up`, DIR holds admin.kubeconfig (O=system:masters), pki/, *.log, *.pid and
# cluster.env (shell-sourceable: API server URL, ports, bin dir).
# Ports are picked free at run time, so several control planes can coexist.
# Tunables: CP_TIMEOUT (seconds to wait for readiness, default 60).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CP_TIMEOUT=${CP_TIMEOUT:-60}
# Order matters for `down`: dependants first.
COMPONENTS=(kube-controller-manager kube-apiserver etcd)

log() { echo "control-plane: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { echo "usage: $0 up|down|env DIR" >&2; exit 2; }

[[ $# -eq 2 ]] || usage
CMD=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd -P)
PKI=$DIR/pki

# pid of a component started from DIR, if it is still that process.
live_pid() {
  local name=$1 pid
  [[ -f "$DIR/$name.pid" ]] || return 1
  pid=$(<"$DIR/$name.pid")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  # Guard against a recycled pid: the process must be our binary, started for DIR.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR/" || return 1
  echo "$pid"
}

stop_all() {
  local name pid i pids=()
  # TERM everything at once (sequential graceful shutdowns add up to ~6 s), then KILL stragglers.
  for name in "${COMPONENTS[@]}"; do
    if pid=$(live_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$name:$pid")
    fi
  done
  for ((i = 0; i < 100 && ${#pids[@]} > 0; i++)); do      # up to 10 s
    local still=()
    for name in "${pids[@]}"; do kill -0 "${name#*:}" 2>/dev/null && still+=("$name"); done
    pids=(${still[@]+"${still[@]}"})
    [[ ${#pids[@]} -eq 0 ]] || sleep 0.1
  done
  for name in ${pids[@]+"${pids[@]}"}; do
    log "${name%%:*} (${name#*:}) ignored SIGTERM, killing"
    kill -KILL "${name#*:}" 2>/dev/null || true
  done
  for name in ${pids[@]+"${pids[@]}"}; do
    for ((i = 0; i < 50; i++)); do kill -0 "${name#*:}" 2>/dev/null || break; sleep 0.1; done
  done
  for name in "${COMPONENTS[@]}"; do rm -f "$DIR/$name.pid"; done
  rm -rf "$DIR/etcd-data"
}

bin_dir() {
  if [[ -f "$DIR/cluster.env" ]]; then
    # shellcheck disable=SC1091
    (source "$DIR/cluster.env" && [[ -x "$CP_BIN/kube-apiserver" ]] && echo "$CP_BIN") && return 0
  fi
  "$HERE/k8s-binaries.sh" | tail -n1
}

# N distinct free loopback TCP ports.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

gen_pki() {
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  # P-256 keys: fast to make, accepted everywhere in Kubernetes.
  ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

  ec_key "$PKI/ca.key"
  openssl req -x509 -new -key "$PKI/ca.key" -sha256 -days 3650 -subj "/CN=projectvm-testbed-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null

  # name  subject  extendedKeyUsage  subjectAltName
  leaf() {
    local name=$1 subj=$2 eku=$3 san=${4:-}
    ec_key "$PKI/$name.key"
    openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
    {
      echo "basicConstraints=critical,CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=$eku"
      [[ -z "$san" ]] || echo "subjectAltName=$san"
    } >"$PKI/$name.ext"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -sha256 -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
  }
  leaf apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  leaf admin "/O=system:masters/CN=projectvm-admin" clientAuth
  leaf kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  # ServiceAccount token signing key pair.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
}

# kubeconfig FILE USER-CERT-NAME SERVER
write_kubeconfig() {
  local file=$1 user=$2 server=$3
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: projectvm
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$user.crt")
    client-key-data: $(base64 -w0 <"$PKI/$user.key")
contexts:
- name: projectvm
  context:
    cluster: projectvm
    user: $user
    namespace: default
current-context: projectvm
EOF
  chmod 600 "$file"
}

start() {
  local name=$1; shift
  : >"$DIR/$name.log"
  setsid "$@" >>"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

fail_with_logs() {
  local name
  log "ERROR: $*"
  for name in "${COMPONENTS[@]}"; do
    if [[ -f "$DIR/$name.log" ]]; then
      echo "----- last lines of $DIR/$name.log -----" >&2
      tail -n 25 "$DIR/$name.log" >&2
    fi
    live_pid "$name" >/dev/null || echo "----- ($name is not running) -----" >&2
  done
  stop_all
  exit 1
}

cmd_up() {
  local bin
  if live_pid kube-apiserver >/dev/null && [[ -f "$DIR/admin.kubeconfig" ]] \
     && "$(bin_dir)/kubectl" --kubeconfig "$DIR/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    log "already up in $DIR"
    return 0
  fi
  stop_all
  bin=$("$HERE/k8s-binaries.sh" | tail -n1)
  [[ -x "$bin/kube-apiserver" ]] || die "k8s-binaries.sh did not produce binaries"
  local t0=$SECONDS

  gen_pki
  local etcd_port etcd_peer api_port kcm_port
  read -r etcd_port etcd_peer api_port kcm_port <<<"$(free_ports 4)"
  local server=https://127.0.0.1:$api_port
  write_kubeconfig "$DIR/admin.kubeconfig" admin "$server"
  write_kubeconfig "$DIR/kube-controller-manager.kubeconfig" kube-controller-manager "$server"
  cat >"$DIR/cluster.env" <<EOF
CP_BIN=$bin
CP_SERVER=$server
CP_API_PORT=$api_port
CP_ETCD_URL=http://127.0.0.1:$etcd_port
CP_KUBECONFIG=$DIR/admin.kubeconfig
CP_CA=$PKI/ca.crt
EOF

  mkdir -p "$DIR/etcd-data"; chmod 700 "$DIR/etcd-data"
  start etcd "$bin/etcd" \
    --name=projectvm \
    --data-dir="$DIR/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="projectvm=http://127.0.0.1:$etcd_peer" \
    --initial-cluster-state=new \
    --unsafe-no-fsync=true \
    --log-level=warn

  start kube-apiserver "$bin/kube-apiserver" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$api_port" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --endpoint-reconciler-type=none \
    --authorization-mode=Node,RBAC \
    --client-ca-file="$PKI/ca.crt" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --allow-privileged=true \
    --cert-dir="$DIR/apiserver-certs" \
    --v=1

  local deadline=$((SECONDS + CP_TIMEOUT)) kc=("$bin/kubectl" --kubeconfig "$DIR/admin.kubeconfig" --request-timeout=5s)
  local name
  until "${kc[@]}" get --raw /readyz >/dev/null 2>&1; do
    for name in etcd kube-apiserver; do
      live_pid "$name" >/dev/null || fail_with_logs "$name exited during start-up"
    done
    ((SECONDS < deadline)) || fail_with_logs "kube-apiserver not ready after ${CP_TIMEOUT}s (/readyz)"
    sleep 0.3
  done
  log "kube-apiserver ready at $server after $((SECONDS - t0))s"
  # Only now: the controller-manager exits if the RBAC bootstrap roles are not there yet.
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$kcm_port" \
    --cert-dir="$DIR/kcm-certs" \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=true \
    --leader-elect=false \
    --cluster-name=projectvm \
    --v=1

  # The default ServiceAccount is made by the controller-manager: proof that it works.
  until "${kc[@]}" -n default get serviceaccount default >/dev/null 2>&1; do
    live_pid kube-controller-manager >/dev/null || fail_with_logs "kube-controller-manager exited"
    ((SECONDS < deadline)) || fail_with_logs "no ServiceAccount default/default after ${CP_TIMEOUT}s (controller-manager)"
    sleep 0.3
  done
  log "control plane ready in $((SECONDS - t0))s; KUBECONFIG=$DIR/admin.kubeconfig"
}

case $CMD in
  up) cmd_up ;;
  down) stop_all; log "down: $DIR" ;;
  env)
    bin=$(bin_dir)
    echo "export KUBECONFIG=$DIR/admin.kubeconfig"
    echo "export PATH=$bin:\$PATH"
    ;;
  *) usage ;;
esac
